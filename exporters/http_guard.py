"""A small bounded HTTP proxy in front of the Triton server's HTTP endpoint (``serve --http``).

The bundled server's JSON parser recurses once per nesting level: one 200 KB POST of
200,000 ``[`` overflows its stack and kills it (issue 26). ``serve --http`` therefore never
exposes the server's own HTTP port: the server listens on a private port on 127.0.0.1 and
this proxy, on the port the user asked for, forwards a request only once it has checked it:

- a body needs a ``Content-Length`` of at most :data:`MAX_BODY` bytes (411 or 413 otherwise;
  chunked bodies are refused, so the size is known before anything is read);
- the body's JSON part (all of it, or with Triton's binary extension the first
  ``Inference-Header-Content-Length`` bytes) nests at most :data:`MAX_DEPTH` levels (400
  otherwise; a real inference request nests about 3 + the tensor's rank).

Everything else is passed on as it is, both ways; the answer is read whole and sent with its
length. A server that is down or restarting answers 502. The proxy outlives restarts of the
server (:class:`~cips_deploy.exporters.triton_server.LocalServer` keeps the private port).
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import threading
from typing import Any

MAX_BODY = 1 << 30  # bytes: 64 Mi points of float32 coordinates in binary, with room
MAX_DEPTH = 64  # JSON nesting; Triton's own requests nest a few levels
UPSTREAM_TIMEOUT = 600.0  # seconds one inference may take on a CPU
# Request and response headers that describe one connection, not the message (RFC 9110, 7.6.1).
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length", "host"}
_SPECIAL = re.compile(rb'["\\\[\]{}]')


def json_nesting(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the brackets of the JSON bytes ``data`` nest at most ``limit`` deep (strings
    skipped). Only the special characters are visited: a megabyte of numbers costs one regex scan."""
    depth = 0
    in_string = escaped = False
    previous = -2
    for match in _SPECIAL.finditer(data):
        character, position = match.group(), match.start()
        if in_string:
            if escaped and position == previous + 1:
                escaped = False
            elif character == b"\\":
                escaped = True
            elif character == b'"':
                in_string = False
                escaped = False
            else:
                escaped = False
        elif character == b'"':
            in_string = True
        elif character in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return False
        elif character in (b"]", b"}"):
            depth -= 1
        previous = position
    return True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Triton's clients expect
    upstream: tuple[str, int]  # set on the subclass made by GuardedHttp

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # the server's own log says what was served; the proxy stays quiet

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._forward()

    def do_POST(self) -> None:  # noqa: N802
        self._forward()

    def do_HEAD(self) -> None:  # noqa: N802
        self._forward()

    def do_PUT(self) -> None:  # noqa: N802
        self._forward()

    def do_DELETE(self) -> None:  # noqa: N802
        self._forward()

    def _refuse(self, status: int, reason: str) -> None:
        body = ('{"error":"' + reason + '"}').encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def _body(self) -> bytes | None:
        """The request's body, checked; None after a refusal was sent."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "a body needs a Content-Length; chunked bodies are not accepted")
            return None
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not length_text.strip().isdigit():
            self._refuse(400, "the Content-Length is not a whole number")
            return None
        length = int(length_text)
        if length > MAX_BODY:
            self._refuse(413, f"the body is {length} bytes, more than the {MAX_BODY} this server accepts")
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        json_part = body
        header_length = self.headers.get("Inference-Header-Content-Length")
        if header_length is not None:
            if not header_length.strip().isdigit() or int(header_length) > length:
                self._refuse(400, "the Inference-Header-Content-Length is not a length within the body")
                return None
            json_part = body[: int(header_length)]
        if not json_nesting(json_part):
            self._refuse(400, f"the JSON nests deeper than {MAX_DEPTH} levels")
            return None
        return body

    def _forward(self) -> None:
        body = self._body()
        if body is None:
            return
        headers = {key: value for key, value in self.headers.items() if key.lower() not in _HOP_BY_HOP}
        if body or self.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            status, reason, answer_headers = answer.status, answer.reason, answer.getheaders()
        except (OSError, http.client.HTTPException):
            self._refuse(502, "the Triton server is not answering (it may be restarting)")
            return
        finally:
            connection.close()
        self.send_response(status, reason)
        for key, value in answer_headers:
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class GuardedHttp:
    """The proxy on ``host:port``, forwarding to ``host:upstream_port``; serves on a daemon thread."""

    def __init__(self, host: str, port: int, upstream_port: int) -> None:
        handler = type("Handler", (_Handler,), {"upstream": (host, upstream_port)})
        self.server = http.server.ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="cips-deploy http guard", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on now (the server's private HTTP port)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
