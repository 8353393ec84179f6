"""Fixtures of the web tests: the onnxruntime-web files, exported sites, their server, a browser.

onnxruntime-web comes from npm (.ci/run: ``npm install onnxruntime-web@<pinned>`` into
``.ci-npm/``), found through ``CIPS_DEPLOY_WEB_RUNTIME`` (its ``dist`` folder) or that folder.
The browser is Debian's chromium driven by Playwright (never ``playwright install``). In CI
(CI set) a missing part is a failure, elsewhere a skip.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cips_deploy.exporters.web.server import make_server
from cips_deploy.exporters.web.site import write_site
from cips_deploy.models import CREPS_DEMO_ENGINE, DEMO_ENGINE

REPO = Path(__file__).resolve().parents[2]
WEB_RUNTIME = Path(os.environ.get("CIPS_DEPLOY_WEB_RUNTIME") or REPO / ".ci-npm" / "node_modules" / "onnxruntime-web" / "dist")
from tests.helpers.browser import CHROMIUM, FLAGS, missing, playwright_api


@pytest.fixture(scope="session")
def web_runtime() -> Path:
    if not (WEB_RUNTIME / "ort.wasm.min.mjs").is_file():
        missing(f"onnxruntime-web is not at {WEB_RUNTIME} (npm install onnxruntime-web into .ci-npm, or set CIPS_DEPLOY_WEB_RUNTIME)")
    return WEB_RUNTIME


@pytest.fixture(scope="session")
def sites(tmp_path_factory, web_runtime) -> dict[str, Path]:
    """Sites of the CIPS demo and the CREPS demo, with the runtime copied in."""
    folder = tmp_path_factory.mktemp("sites")
    return {
        name: write_site(engine, folder / name, web_runtime=web_runtime, overwrite=False).files[0]
        for name, engine in (("cips", DEMO_ENGINE), ("creps", CREPS_DEMO_ENGINE))
    }


@pytest.fixture(scope="session")
def serve():
    """serve(site) -> base URL of a `serve-web` server of it (stopped at the end)."""
    servers = []

    def start(site: Path) -> str:
        server = make_server(site, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser():
    manager = playwright_api().sync_playwright().start()
    browser = manager.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + ["--disable-gpu"])
    yield browser
    browser.close()
    manager.stop()
