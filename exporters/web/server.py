"""``cips-deploy serve-web SITE``: serve an exported site on 127.0.0.1, as the page needs it.

A page opened from disk (``file://``) cannot fetch its manifest, its engines or the
WebAssembly runtime, nor start a module worker, so the site needs a server. Any static server
works with one WebAssembly thread; this one also sends what more threads need:

- ``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp``,
  which make the page cross-origin isolated (SharedArrayBuffer, so onnxruntime-web's threads);
- ``application/wasm`` for ``.wasm`` (streaming compilation needs that type) and
  ``text/javascript`` for ``.mjs``;
- ``Cache-Control: no-cache``, so a site exported again is seen at once.

It serves only files inside the site folder (no links out of it, no listings), binds to
127.0.0.1 unless told otherwise, and stops on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import functools
import http.server
import os
import stat
import signal
import threading
from pathlib import Path

import click

from cips_deploy.contracts.command_options import whole
from cips_deploy.errors import CipsError

TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
         ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8"}
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of one folder, with the headers above; nothing outside the folder, no listings."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}
    quiet = True

    def end_headers(self) -> None:
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def send_head(self):
        root = Path(self.directory).resolve()
        target = Path(self.translate_path(self.path))
        for candidate in (target, target / "index.html") if target.is_dir() else (target,):
            try:
                real = candidate.resolve(strict=candidate is target)
            except (OSError, RuntimeError):  # missing, or a loop of links
                real = None
            if real is None or not real.is_relative_to(root):  # nothing outside the site, links included
                self.send_error(404, "Not found")
                return None
        # Only regular files are served: opening a FIFO put in the site would block this
        # request's thread forever (and a device could be endless).
        served = target / "index.html" if target.is_dir() else target
        try:
            regular = stat.S_ISREG(os.stat(served).st_mode)
        except OSError:
            regular = not target.is_dir()  # a missing file: the base class answers 404 itself
        if not regular:
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def list_directory(self, path):  # never list a folder
        self.send_error(404, "Not found")
        return None

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(site: Path, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server of ``site`` bound to ``host:port`` (port 0: a free one); not yet serving."""
    from .site import is_site

    site = Path(site)
    if not site.is_dir():
        raise CipsError(f"No site folder {site}; write one with `cips-deploy export --engine web -o {site}`.")
    if not is_site(site):
        raise CipsError(f"{site} is not a site that cips-deploy exported (it has no manifest.json of one).")
    handler = functools.partial(type("Handler", (SiteHandler,), {"quiet": quiet}), directory=str(site.resolve()))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise CipsError(f"Cannot serve on {host}:{port}: {error.strerror or error}.") from None


@click.command("serve-web")
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--port", type=whole(0, 65535), default=8000, show_default=True, help="Port; 0 picks a free one.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default reaches this machine only.")
@click.option("--verbose", is_flag=True, help="Log each request on stderr.")
def serve_web(site: Path, port: int, host: str, verbose: bool) -> None:
    """Serve SITE (from `cips-deploy export --engine web`) with the headers its page needs.

    Cross-origin isolation (COOP/COEP) lets onnxruntime-web use several WebAssembly threads;
    .wasm goes out as application/wasm. Open the printed address in a browser; Ctrl-C stops.
    """
    server = make_server(site, host, port, quiet=not verbose)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    click.echo(f"Serving {site} at http://{shown}:{bound_port}/ (Ctrl-C stops)")
    def on_signal(number, frame):  # SIGTERM as Ctrl-C: shut down cleanly, exit 0
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    click.echo("Stopped.", err=True)
