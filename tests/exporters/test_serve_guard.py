"""`cips-deploy serve` keeps serving (issue 26): a server that dies is restarted, with its real
cause on stderr, and HTTP (whose JSON parser one hostile request crashes in the bundled
server) is offered only when asked for.

Each test starts the real server bundled in nvidia-pytriton, as tests/exporters/test_triton_server.py
does, and skips where it cannot run.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from cips_deploy.errors import CipsError

HOSTILE = b"[" * 200_000  # 200 KB of nesting: the bundled server's HTTP JSON parser recurses until it crashes


def _server_or_skip() -> None:
    from cips_deploy.exporters import triton_server

    try:
        triton_server.find_server()
    except CipsError as error:
        pytest.skip(f"no Triton server can be installed here: {error}")
    try:
        import tritonclient.grpc  # noqa: F401
    except (ImportError, RuntimeError):
        pytest.skip("tritonclient[grpc] (test extra) is not installed")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


class Serving:
    """``cips-deploy serve`` (the bundled demo engine: no export, no torch) in a subprocess, its
    stdout and stderr read line by line on threads."""

    def __init__(self, *options: str) -> None:
        command = [sys.executable, "-c", "from cips_deploy.cli import main; main()", "serve", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue = queue.Queue()
        self.err: queue.Queue = queue.Queue()
        self.seen = {"out": [], "err": []}
        for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=lambda s=stream, q=lines: [q.put(line) for line in s], daemon=True).start()

    def wait_for(self, which: str, start: str, timeout: float = 180) -> str:
        """The first line of stdout or stderr (``which``) that starts with ``start``; fails at the deadline."""
        lines = self.out if which == "out" else self.err
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen[which].append(line)
            if line.startswith(start):
                return line
        raise AssertionError(f"no {which} line starting with {start!r}: {self.seen}")

    def server_pid(self) -> int:
        line = self.wait_for("out", "Serving ")
        self.wait_for("out", "Stop with")
        return int(line.split("(pid ")[1].split(")")[0])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _renders(grpc: int) -> None:
    """A chunk through the served demo model over gRPC equals the local onnxruntime render."""
    from cips_deploy.exporters.backends import OnnxRuntimeBackend
    from cips_deploy.exporters.triton_backend import TritonBackend
    from cips_deploy.models import DEMO_ENGINE

    coords = np.random.default_rng(0).uniform(-1, 1, (1, 70, 2)).astype(np.float32)
    backend, local = TritonBackend(DEMO_ENGINE, url=f"127.0.0.1:{grpc}"), OnnxRuntimeBackend(DEMO_ENGINE)
    try:
        w = local.map(np.random.default_rng(1).standard_normal((1, local.config.style_dim)).astype(np.float32))
        assert float(np.abs(backend.run(coords, w) - local.run(coords, w)).max()) <= 1e-6
    finally:
        backend.close()
        local.close()


def _post(port: int, body: bytes) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/demo-panorama/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except (urllib.error.URLError, OSError, ValueError):
        pass  # the server died answering it, or refused it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _answer(port: int, body: bytes, headers: dict | None = None, path: str = "/v2/models/demo-panorama/infer") -> tuple[int, bytes]:
    """(status, body) of a POST through http.client, which sends exactly the headers given."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", path)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            if value is not None:
                connection.putheader(key, value)
        connection.endheaders()
        if body:
            connection.send(body)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def _http_infer(http: int) -> None:
    """A chunk through the served demo model over HTTP (through the proxy) equals onnxruntime."""
    import tritonclient.http as httpclient

    from cips_deploy.exporters.backends import OnnxRuntimeBackend
    from cips_deploy.models import DEMO_ENGINE

    local = OnnxRuntimeBackend(DEMO_ENGINE)
    coords = np.random.default_rng(2).uniform(-1, 1, (1, 50, 2)).astype(np.float32)
    w = local.map(np.random.default_rng(3).standard_normal((1, local.config.style_dim)).astype(np.float32))
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    try:
        inputs = [httpclient.InferInput("coords", list(coords.shape), "FP32"), httpclient.InferInput("w", list(w.shape), "FP32")]
        inputs[0].set_data_from_numpy(coords, binary_data=True)
        inputs[1].set_data_from_numpy(w, binary_data=False)  # one input as JSON, one in the binary extension
        rgb = client.infer("demo-panorama", inputs).as_numpy("rgb")
        assert float(np.abs(rgb - local.run(coords, w)).max()) <= 1e-6
    finally:
        client.close()
        local.close()


@pytest.mark.slow
def test_hostile_http_requests_are_refused_by_the_guard_and_the_server_lives():
    _server_or_skip()
    http, grpc = _free_ports(2)
    serving = Serving("--http", "--http-port", str(http), "--grpc-port", str(grpc))
    try:
        pid = serving.server_pid()
        assert f"  HTTP: http://127.0.0.1:{http}\n" in serving.seen["out"]
        assert str(http) not in _server_arguments(pid)  # the server's own HTTP port is a private one
        _http_infer(http)
        deep_binary = b'{"inputs":' + b"[" * 100_000
        for body, headers, status in (
            (HOSTILE, {}, 400),  # the request
            (b"{" * 200_000, {}, 400),  # the same with objects
            (deep_binary + b"\0" * 64, {"Inference-Header-Content-Length": str(len(deep_binary))}, 400),  # in the JSON part
            (b"", {"Content-Length": str(3 << 30)}, 413),  # a claimed 3 GiB, never sent
            (b"", {"Content-Length": None, "Transfer-Encoding": "chunked"}, 411),
            (b"[]", {"Content-Length": "-2"}, 400),
        ):
            assert _answer(http, body, headers)[0] == status, (body[:20], headers)
        time.sleep(1)
        assert _alive(pid) and serving.err.empty(), serving.seen
        _http_infer(http)
        _renders(grpc)
    finally:
        serving.close()
    assert serving.process.returncode == 0


@pytest.mark.slow
def test_a_killed_server_is_restarted_and_stderr_says_how_it_ended():
    """A variant: the server killed from outside (no crash of its own): the cause is the signal,
    and its log adds nothing invented. HTTP is off unless asked for."""
    _server_or_skip()
    http, grpc = _free_ports(2)
    serving = Serving("--grpc-port", str(grpc))
    try:
        first = serving.server_pid()
        assert "  HTTP: off (pass --http to offer it)\n" in serving.seen["out"]
        assert _server_arguments(first)[-2:] == ["--allow-http", "false"]  # no HTTP endpoint at all
        os.kill(first, signal.SIGKILL)
        died = serving.wait_for("err", "The Triton server (pid ")
        assert f"(pid {first}) died: it was ended by signal SIGKILL; its log says nothing about why." in died, died
        serving.wait_for("err", "Serving again")
        _renders(grpc)
        # And once more: it keeps serving after a second death.
        second = int(serving.seen["err"][-1].split("(pid ")[1].split(")")[0])
        os.kill(second, signal.SIGKILL)
        serving.wait_for("err", "Serving again")
        _renders(grpc)
    finally:
        serving.close()
    assert serving.process.returncode == 0


def _server_arguments(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


@pytest.mark.slow
def test_without_http_the_hostile_request_cannot_reach_the_server():
    """HTTP off: the hostile body finds no endpoint; the server keeps running untouched."""
    _server_or_skip()
    (grpc,) = _free_ports(1)
    (http,) = _free_ports(1)
    serving = Serving("--grpc-port", str(grpc))
    try:
        pid = serving.server_pid()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", http), timeout=2).close()
        _post(http, HOSTILE)
        time.sleep(1)
        assert _alive(pid) and serving.err.empty() and "--allow-http" in _server_arguments(pid)
        _renders(grpc)
    finally:
        serving.close()


def test_a_server_that_keeps_dying_ends_serve_in_one_sentence(monkeypatch):
    """Restarts are bounded: a server that dies at every start ends serve with one sentence (in
    process, with a stand-in server whose every run dies at once)."""
    from click.testing import CliRunner

    from cips_deploy.cli import cli
    from cips_deploy.exporters import triton_plugin, triton_server

    class Dying:
        def __init__(self, repo, workspace=None, **options):
            self.workspace = workspace
            self.process = None
            self.http_url, self.grpc_url = None, "127.0.0.1:1"
            self.starts = 0

        def start(self):
            self.restart()

        def restart(self):
            self.starts += 1
            self.process = subprocess.Popen([sys.executable, "-c", "import os; os.abort()"], stderr=subprocess.DEVNULL)
            self.process.wait()

        def alive(self):
            return False

        def death_cause(self):
            return "it was ended by signal SIGABRT; its log says nothing about why"

        def stop(self):
            import shutil

            shutil.rmtree(self.workspace, ignore_errors=True)

    monkeypatch.setattr(triton_server, "LocalServer", Dying)
    result = CliRunner().invoke(cli, ["serve", "--grpc-port", str(_free_ports(1)[0])])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == (f"Error: The Triton server died {triton_plugin.MAX_RESTARTS + 1} times within 60 s, so serve gave up: "
                         "it was ended by signal SIGABRT; its log says nothing about why.")
    assert sum("Restarting it." in line for line in lines) == triton_plugin.MAX_RESTARTS


def test_the_cause_of_death_is_what_the_server_wrote_after_it_was_ready(tmp_path):
    """No server needed: a stand-in process that logs, becomes "ready", logs its crash and aborts.
    The CUDA driver lines a CPU server writes at every start are never given as a cause."""
    from cips_deploy.exporters.triton_server import LocalServer

    startup = ('E1207 01:40:14.316632 7792 server.cc:241] "CudaDriverHelper has not been initialized."\n'
               'E1207 01:40:21.327071 7792 ensemble_scheduler.cc:1468] "unable to create stream for x_ensemble: '
               'CUDA driver version is insufficient for CUDA runtime version"\n')
    server = LocalServer(tmp_path, http_port=None, grpc_port=1)
    server.log_path = tmp_path / "server.log"
    server.log_path.write_text(startup)
    server._ready_at = server.log_path.stat().st_size
    with open(server.log_path, "a") as log:
        script = "import os, sys; print('Signal (6) received.', flush=True); os.abort()"
        server.process = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.DEVNULL)
    server.process.wait()
    assert server.death_cause() == "it was ended by signal SIGABRT; its log says: Signal (6) received."
    # A variant: an exit of its own, a model error after the start, the CUDA lines again.
    restarted_at = server.log_path.stat().st_size
    with open(server.log_path, "a") as log:
        log.write(startup + 'E1207 01:41:00.000000 7792 python_be.cc:100] "Stub process \'x_0\' is not healthy."\n')
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stderr=subprocess.DEVNULL)
    server.process.wait()
    server._ready_at = len(startup)  # the abort's line is after it too, and comes first
    assert server.death_cause() == "it exited with status 3; its log says: Signal (6) received."
    server._ready_at = restarted_at
    assert server.death_cause() == "it exited with status 3; its log says: Stub process 'x_0' is not healthy."
    # Before the start was complete, the CUDA lines are no reason either.
    server.log_path.write_text(startup)
    assert server._failure() == "its log says nothing more."


# --------------------------------------------------------------------------- the proxy alone (no server)


@pytest.mark.runtime
def test_json_nesting_counts_brackets_outside_strings_only():
    from cips_deploy.exporters.http_guard import json_nesting

    assert json_nesting(b"[" * 64 + b"]" * 64) and not json_nesting(b"[" * 65)
    assert json_nesting(b'{"a": "' + b"[" * 1000 + b'"}')  # brackets inside a string do not nest
    assert json_nesting(b'{"a": "\\"' + b"[" * 1000 + b'"}')  # nor after an escaped quote
    assert not json_nesting(b'{"a": "\\\\"' + b"[" * 1000)  # an escaped backslash ends no string
    assert json_nesting(b'{"data": [' + b"1.5, " * 100_000 + b"2]}", limit=2)


@pytest.mark.runtime
def test_the_proxy_forwards_plain_requests_and_refuses_hostile_ones_before_forwarding():
    """An upstream stand-in records what reaches it: only the checked requests."""
    import http.server

    from cips_deploy.exporters.http_guard import MAX_DEPTH, GuardedHttp

    seen = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            seen.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    (port,) = _free_ports(1)
    guard = GuardedHttp("127.0.0.1", port, upstream.server_address[1])
    guard.start()
    try:
        assert _answer(port, b'{"inputs": [[1, 2]]}') == (200, b"ok")
        assert _answer(port, b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)[0] == 200
        for body, headers, status in ((b"[" * (MAX_DEPTH + 1), {}, 400), (HOSTILE, {}, 400),
                                      (b"", {"Content-Length": str(2 << 30)}, 413),
                                      (b"[]", {"Inference-Header-Content-Length": "99"}, 400)):
            code, text = _answer(port, body, headers)
            assert code == status and b"error" in text
        assert seen == [b'{"inputs": [[1, 2]]}', b"[" * MAX_DEPTH + b"]" * MAX_DEPTH]
        upstream.shutdown()
        upstream.server_close()
        assert _answer(port, b"[]")[0] == 502  # the server is down (restarting): said, not a hang
    finally:
        guard.stop()
