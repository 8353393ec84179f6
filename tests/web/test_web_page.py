"""The exported page in a real browser: it renders what `cips-deploy render` renders.

Each site (the CIPS demo, the CREPS demo through its line and compose engines) is served by
`serve-web`'s server and driven in Debian's chromium: the page loads without a console error,
``window.cipsDeploy.render`` equals the Python render within 2/255, and a zoom and a pan made
with real mouse events show the view that the Python render of that viewport gives.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

import cips_deploy
from cips_deploy.models import CREPS_DEMO_ENGINE, DEMO_ENGINE

pytestmark = pytest.mark.slow

ENGINES = {"cips": DEMO_ENGINE, "creps": CREPS_DEMO_ENGINE}
TOLERANCE = 2  # of 255: the page's WebAssembly kernels round differently from native ones

# RGBA bytes of a page array as base64 (Playwright would otherwise send millions of numbers).
AS_BASE64 = """(data) => { let text = ''; for (let i = 0; i < data.length; i += 8192)
    text += String.fromCharCode.apply(null, data.subarray(i, i + 8192)); return btoa(text); }"""


class Page:
    """One page of a site, with every console error and failed request it had."""

    def __init__(self, browser, url: str, query: str = "") -> None:
        self.page = browser.new_page(viewport={"width": 900, "height": 500})
        self.problems: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.problems.append(message.text))
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("requestfailed", lambda request: self.problems.append(f"failed request {request.url}"))
        self.page.goto(url + query)
        self.page.wait_for_function("window.cipsDeploy !== undefined", timeout=30000)
        self.page.evaluate("window.cipsDeploy.ready")

    def render(self, **request) -> np.ndarray:
        """window.cipsDeploy.render(request) as uint8 [H, W, 4]."""
        text = self.page.evaluate(
            f"async (request) => {{ const image = await window.cipsDeploy.render(request); return ({AS_BASE64})(image.data); }}",
            request,
        )
        return np.frombuffer(base64.b64decode(text), np.uint8).reshape(request["height"], request["width"], 4)

    def frame(self) -> tuple[dict, np.ndarray]:
        """The last fully rendered view and its pixels, uint8 [H, W, 4], once the page is idle."""
        self.page.evaluate("window.cipsDeploy.idle()")
        view = self.page.evaluate("window.cipsDeploy.frame().view")
        text = self.page.evaluate(f"({AS_BASE64})(window.cipsDeploy.frame().data)")
        return view, np.frombuffer(base64.b64decode(text), np.uint8).reshape(view["height"], view["width"], 4)

    def close(self) -> None:
        self.page.close()


def python_render(model: str, view: dict) -> np.ndarray:
    """What `cips-deploy render` makes of a page's view (its topology, parameters, seed, truncation, size)."""
    return cips_deploy.render(
        ENGINES[model], view["topology"], height=view["height"], width=view["width"], seed=view["seed"],
        truncation=view["truncation"], **view["params"],
    )


def assert_close(page_rgba: np.ndarray, python_rgb: np.ndarray) -> None:
    assert page_rgba.shape[:2] == python_rgb.shape[:2]
    assert (page_rgba[..., 3] == 255).all()
    difference = np.abs(page_rgba[..., :3].astype(int) - python_rgb.astype(int))
    assert difference.max() <= TOLERANCE, f"max difference {difference.max()}/255 at {np.argwhere(difference > TOLERANCE)[:3]}"
    assert python_rgb.std() > 10  # a real picture, not a flat colour two broken paths could agree on


@pytest.mark.parametrize("model", ["cips", "creps"])
def test_the_page_renders_what_python_renders(model, sites, serve, browser):
    page = Page(browser, serve(sites[model]), "?size=256x64")
    requests = [
        dict(seed=3, width=256, height=64, topology="cylinder"),  # the issue's example
        dict(seed=3, width=256, height=64, topology="cylinder", params={"heading": 97.5}, truncation=0.6),
        dict(seed=11, width=96, height=80, topology="flat", params={"u_min": -0.4, "u_max": 0.9, "v_min": -0.5}),
    ]
    for request in requests:
        expected = cips_deploy.render(
            ENGINES[model], request["topology"], height=request["height"], width=request["width"], seed=request["seed"],
            truncation=request.get("truncation", 1.0), **request.get("params", {}),
        )
        assert_close(page.render(**request), expected)
    # A different seed is a different picture: the page's seed rule is not ignored.
    other = page.render(seed=4, width=256, height=64, topology="cylinder")[..., :3]
    assert np.abs(other.astype(int) - python_render(model, {"topology": "cylinder", "params": {}, "seed": 3,
                                                            "truncation": 1.0, "width": 256, "height": 64})).mean() > 5
    assert page.problems == []
    page.close()


def test_the_first_view_is_the_urls_and_drawn(sites, serve, browser):
    page = Page(browser, serve(sites["cips"]), "?seed=7&yaw=90&v=0.25&size=200x50")
    view, pixels = page.frame()
    assert view["seed"] == 7 and view["topology"] == "cylinder"
    assert view["params"] == {"heading": 90, "v_min": -0.75, "v_max": 1.25}
    assert_close(pixels, python_render("cips", view))
    assert page.problems == []
    page.close()


@pytest.mark.parametrize("model", ["cips", "creps"])
def test_zoom_and_pan_with_the_mouse_resynthesise_the_viewport(model, sites, serve, browser):
    page = Page(browser, serve(sites[model]), "?seed=5&size=256x64")
    start, _ = page.frame()
    box = page.page.locator("#view").bounding_box()
    x, y = box["x"] + 0.3 * box["width"], box["y"] + 0.4 * box["height"]
    page.page.mouse.move(x, y)
    page.page.mouse.wheel(0, -300)  # zoom in about the pointer
    zoomed, pixels = page.frame()
    assert zoomed["zoom"] > 1.5 and zoomed["topology"] == "flat"  # a zoomed cylinder is a viewport of it
    assert_close(pixels, python_render(model, zoomed))
    page.page.mouse.down()
    page.page.mouse.move(x + 150, y + 20, steps=8)  # drag right and down: the view moves left and up
    page.page.mouse.up()
    panned, pixels = page.frame()
    assert panned["u"] < zoomed["u"] and panned["v"] < zoomed["v"]
    assert panned["zoom"] == zoomed["zoom"]
    assert_close(pixels, python_render(model, panned))
    assert f"zoom={panned['zoom']}" in page.page.url  # the URL names the view, to share it
    assert page.problems == []
    page.close()


def test_a_pinch_zooms_about_its_middle(sites, serve, browser):
    """Two fingers moving apart (touch events through the DevTools protocol) zoom by the ratio of
    their distances, about the point between them."""
    context = browser.new_context(has_touch=True, viewport={"width": 800, "height": 400})
    page = context.new_page()
    page.goto(serve(sites["creps"]) + "?seed=5&size=256x64")
    page.wait_for_function("window.cipsDeploy !== undefined")
    page.evaluate("window.cipsDeploy.idle()")
    box = page.locator("#view").bounding_box()
    x, y = box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"]
    devtools = context.new_cdp_session(page)
    for kind, half in [("touchStart", 40)] + [("touchMove", half) for half in range(45, 121, 5)] + [("touchEnd", None)]:
        points = [] if half is None else [{"x": x - half, "y": y, "id": 0}, {"x": x + half, "y": y, "id": 1}]
        devtools.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    page.evaluate("window.cipsDeploy.idle()")
    view = page.evaluate("window.cipsDeploy.view()")
    assert view["zoom"] == pytest.approx(3.0) and abs(view["u"]) < 0.02 and abs(view["v"]) < 0.02
    context.close()


def test_a_cylinder_pan_wraps_around_without_end(sites, serve, browser):
    page = Page(browser, serve(sites["cips"]), "?seed=2&size=128x32")
    page.frame()
    box = page.page.locator("#view").bounding_box()
    y = box["y"] + box["height"] / 2
    page.page.mouse.move(box["x"] + 10, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] - 10, y, steps=10)  # most of a turn, twice
    page.page.mouse.up()
    page.page.mouse.move(box["x"] + 10, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] - 10, y, steps=10)
    page.page.mouse.up()
    view, pixels = page.frame()
    assert view["topology"] == "cylinder" and -180 <= view["params"]["heading"] < 180
    assert_close(pixels, python_render("cips", view))
    page.close()


def test_superseded_renders_are_cancelled_and_the_last_view_wins(sites, serve, browser):
    page = Page(browser, serve(sites["creps"]), "?size=320x80")
    page.frame()
    page.page.evaluate("""() => { for (let i = 1; i <= 6; i++) window.cipsDeploy.setView({seed: i, zoom: 1 + i / 4}); }""")
    view, pixels = page.frame()
    assert view["seed"] == 6 and view["zoom"] == 2.5
    assert_close(pixels, python_render("creps", view))
    page.close()


def test_bad_requests_are_refused_in_one_sentence(sites, serve, browser):
    page = Page(browser, serve(sites["cips"]))
    for request, words in [
        ({"seed": -1}, "seed must be a whole number"),
        ({"seed": 2**32}, "seed must be a whole number"),
        ({"width": 0}, "width must be a whole number"),
        ({"topology": "torus"}, "not torus"),
        ({"topology": "flat", "params": {"zoom": 2}}, "no parameter zoom"),
        ({"topology": "flat", "params": {"u_min": 0.5, "u_max": 0.5}}, "viewport is empty"),
        ({"truncation": float("nan")}, "truncation must be a finite number"),
    ]:
        message = page.page.evaluate(
            "async (request) => { try { await window.cipsDeploy.render(request); return 'rendered'; } catch (e) { return e.message; } }",
            request,
        )
        assert words in message, (request, message)
    page.close()


def test_without_the_runtime_the_page_says_where_it_looked(tmp_path, serve, browser):
    """No --web-runtime: the page loads onnxruntime-web from the CDN, which this machine cannot
    reach; it must say so in the page, naming the CDN and the way out."""
    from cips_deploy.exporters.web.site import RUNTIME_CDN, write_site

    site = write_site(DEMO_ENGINE, tmp_path / "site", web_runtime=None, overwrite=False).files[0]
    page = browser.new_page()
    page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())  # offline, whatever the machine
    page.goto(serve(site))
    page.wait_for_function("!document.getElementById('problem').hidden", timeout=30000)
    text = page.locator("#problem").inner_text()
    assert RUNTIME_CDN in text and "--web-runtime" in text
    page.close()


def test_a_page_opened_from_disk_says_to_serve_it(sites, browser):
    page = browser.new_page()
    page.goto((sites["cips"] / "index.html").as_uri())
    page.wait_for_timeout(1500)
    text = page.locator("#problem").inner_text()
    assert "serve-web" in text
    page.close()


def test_the_issues_acceptance_commands(tmp_path, web_runtime, browser):
    """As a user types it: export the default site, serve it with `serve-web`, and the page's
    render({seed: 3, width: 256, height: 64, topology: 'cylinder'}) is `cips-deploy render`'s PNG."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    cli = str(Path(sys.executable).parent / "cips-deploy")
    subprocess.run([cli, "export", "--engine", "web", "-o", "site", "--web-runtime", str(web_runtime)], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run([cli, "render", "--topology", "cylinder", "--seed", "3", "--width", "256", "--height", "64", "-o", "ref.png"],
                   cwd=tmp_path, check=True, capture_output=True)
    server = subprocess.Popen([cli, "serve-web", "site", "--port", "0"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        page = Page(browser, url)
        got = page.render(seed=3, width=256, height=64, topology="cylinder")
        assert_close(got, np.asarray(Image.open(tmp_path / "ref.png").convert("RGB")))
        assert page.problems == []
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.slow
def test_an_fp16_creps_export_renders_in_the_page_through_its_grid_engines(tmp_path, web_runtime, serve, browser):
    """`export --precision fp16` keeps CREPS's fp16 line and compose engines; the page runs them
    (onnxruntime-web) and draws what Python draws from the same files."""
    pytest.importorskip("onnxconverter_common", reason="fp16 engines need onnxconverter-common (the test extra has it)")
    from click.testing import CliRunner

    from cips_deploy.cli import cli
    from cips_deploy.exporters.web.site import write_site
    from cips_deploy.models import CREPS_DEMO_MODEL

    engine = tmp_path / "creps16.onnx"
    result = CliRunner().invoke(cli, ["export", str(CREPS_DEMO_MODEL), "--precision", "fp16", "-o", str(engine)])
    assert result.exit_code == 0, result.output
    site = write_site(engine, tmp_path / "site", web_runtime=web_runtime, overwrite=False).files[0]
    assert {path.name for path in (site / "engines").iterdir()} >= {"lines.onnx", "compose.onnx"}
    page = Page(browser, serve(site), "?size=256x64")
    expected = cips_deploy.render(engine, "cylinder", height=64, width=256, seed=3)
    assert_close(page.render(seed=3, width=256, height=64, topology="cylinder"), expected)
    assert page.problems == []
    page.close()
