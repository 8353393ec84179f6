"""The Deep Zoom viewer page: its text, and in a real browser (Debian's chromium driven by Playwright).

Never ``playwright install``: the browser is /usr/bin/chromium (``.ci/run`` installs it);
the browser tests skip, saying why, only where it or Playwright is missing.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import threading
from pathlib import Path

import pytest

from cips_deploy.media.viewers import deep_zoom_page
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.runtime.gigapixel import render_to_file

from tests.helpers.browser import CHROMIUM, FLAGS, playwright_api


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, registry) -> Path:
    """A 512 x 2048 demo panorama (from the bundled engine) as a Deep Zoom pyramid with its viewer page."""
    folder = tmp_path_factory.mktemp("dzi")
    render_to_file(
        DEMO_ENGINE, folder / "pano.dzi", topology="cylinder", height=512, width=2048, seed=1, backend="onnxruntime",
        registry=registry,
    )
    return folder


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    with playwright_api().sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=FLAGS + ["--disable-gpu"],
            viewport={"width": 800, "height": 600},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def server(pyramid):
    """The pyramid's folder on 127.0.0.1 at a free port."""
    handler = functools.partial(_QuietHandler, directory=str(pyramid))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def open_viewer(context, url: str):
    """A page at ``url`` with its console errors and failed requests recorded; tiles loaded."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on("response", lambda response: problems.append(f"HTTP {response.status}: {response.url}") if response.status >= 400 else None)
    page.goto(url)
    settle(page)
    return page, problems


def settle(page) -> None:
    page.wait_for_function("window.dziViewer && dziViewer.loaded > 0 && dziViewer.pending === 0", timeout=30_000)


@pytest.mark.slow
def test_the_viewer_loads_tiles_and_zooms_and_pans(browser_context, server):
    page, problems = open_viewer(browser_context, f"{server}/pano.html")
    try:
        level = page.evaluate("dziViewer.level()")
        assert 0 < level < 11  # fitted: a coarse level of the 11 (0 .. 11) of a 2048-wide image
        first = page.screenshot()
        tiles = page.evaluate("Array.from(document.querySelectorAll('#view img')).filter(i => i.complete && i.naturalWidth > 0).length")
        assert tiles >= 1

        page.mouse.move(400, 300)
        page.mouse.wheel(0, -600)  # zoom in 4x about the centre
        page.wait_for_function(f"dziViewer.level() > {level}")
        settle(page)
        zoomed = page.screenshot()
        assert zoomed != first
        assert page.evaluate("dziViewer.state().scale") > 3.9 * page.evaluate("Math.min(800 / 2048, 600 / 512)")

        before = page.evaluate("dziViewer.state().cx")
        page.mouse.move(400, 300)
        page.mouse.down()
        page.mouse.move(250, 300, steps=5)
        page.mouse.up()
        settle(page)
        assert page.evaluate("dziViewer.state().cx") > before  # dragged left: the view moved right
        assert page.screenshot() != zoomed
        assert page.evaluate("dziViewer.failed") == 0
        assert problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_viewer_works_opened_from_disk(browser_context, pyramid):
    page, problems = open_viewer(browser_context, (pyramid / "pano.html").as_uri())
    try:
        assert page.evaluate("dziViewer.failed") == 0 and problems == []
        page.keyboard.press("+")
        settle(page)
        assert page.evaluate("dziViewer.failed") == 0 and problems == []
    finally:
        page.close()


@pytest.mark.runtime
def test_the_page_carries_the_pyramid_and_nothing_from_the_network():
    page = deep_zoom_page("pano", 512, 2048, 256, 11)
    config = json.loads(re.search(r"const DZI = (\{.*?\});", page).group(1))
    assert config == {"width": 2048, "height": 512, "tile": 256, "top_level": 11, "files": "pano_files", "format": "png"}
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)  # tiles are set by the script, relative to the page
    assert "http://" not in page and "https://" not in page


@pytest.mark.runtime
def test_a_hostile_name_cannot_break_the_page():
    name = "<!--<script></script><script>alert(1)</script><b>__TITLE__ __CONFIG__"
    page = deep_zoom_page(name, 300, 400, 256, 9)
    assert page.count("<script") == 1 and page.count("</script>") == 1  # only the page's own
    assert f"<title>{html.escape(name)} (400 x 300)</title>" in page
    config = json.loads(re.search(r"const DZI = (\{.*?\});", page).group(1))
    assert config["files"] == name + "_files"
