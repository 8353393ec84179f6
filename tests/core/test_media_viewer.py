"""The 360-degree viewer in a real browser: Debian's chromium driven by Playwright.

Never downloads a browser (no ``playwright install``): it uses /usr/bin/chromium (or
$CIPS_CHROMIUM), which .ci/run installs. Outside CI the browser tests skip, with the reason,
where there is no Chromium or no playwright package; in CI they fail.
"""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cips_deploy
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.errors import CipsError
from cips_deploy.media.provenance import read_png_metadata
from cips_deploy.media.viewers import MAX_EMBEDDED_WIDTH, viewer_html, write_viewer

from tests.helpers.browser import CHROMIUM, FLAGS, playwright_api
VIEW = {"width": 480, "height": 270}


@pytest.fixture(scope="module")
def panorama() -> np.ndarray:
    """The demo model's panorama, uint8 [96, 384, 3] (a cylinder: column 383 neighbours column 0),
    rendered from its bundled engine (no torch)."""
    return cips_deploy.render(DEMO_ENGINE, "cylinder", height=96, width=384, seed=2, backend="onnxruntime")


@pytest.fixture(scope="module")
def periodic() -> np.ndarray:
    """A smooth panorama that wraps around, uint8 [96, 384, 3], made with numpy alone (no model)."""
    angle = np.pi * (-1 + (2 * np.arange(384) + 1) / 384)  # the cylinder topology's column centres
    rows = np.linspace(-1.0, 1.0, 96)[:, None]
    channels = [np.cos(angle)[None, :] + 0 * rows, np.sin(2 * angle)[None, :] * rows, np.cos(3 * angle)[None, :] * (1 - rows**2)]
    return np.round(127.5 * (np.stack(channels, axis=-1) + 1)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def browser_factory(tmp_path_factory):
    """Start Chromium (fresh profile each time) with extra flags; yields a function."""
    manager = playwright_api().sync_playwright().start()
    contexts = []

    def launch(*extra: str):
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = manager.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS + list(extra), viewport=VIEW
        )
        contexts.append(context)
        return context

    yield launch
    for context in contexts:
        context.close()
    manager.stop()


class Page:
    """One viewer page with its console errors and every request it made."""

    def __init__(self, context, path: Path, query: str = "") -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        separator = "&" if query else ""
        self.page.goto(path.as_uri() + "?hint=0" + separator + query)
        self.wait_for("Number(document.body.dataset.frames || 0) >= 1")

    def wait_for(self, condition: str, timeout: float = 30.0) -> None:
        """Poll ``condition`` from here: Playwright's wait_for_function evaluates strings in
        the page, which the viewer's Content-Security-Policy (no eval) rightly refuses."""
        deadline = time.monotonic() + timeout
        while not self.page.evaluate(condition):
            if time.monotonic() > deadline:
                raise AssertionError(f"the viewer never reached {condition!r}; console errors: {self.errors}")
            time.sleep(0.05)

    @property
    def renderer(self) -> str:
        return self.page.evaluate("window.cipsViewer.renderer")

    def set_view(self, yaw: float) -> None:
        before = self.page.evaluate("window.cipsViewer.frames")
        self.page.evaluate(f"window.cipsViewer.setView({yaw})")
        self.wait_for(f"window.cipsViewer.frames > {before}")

    def shot(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")).astype(np.int16)


def write(tmp_path: Path, image: np.ndarray, name: str) -> Path:
    path = tmp_path / name
    write_viewer(image, path)
    return path


def column_steps(shot: np.ndarray) -> np.ndarray:
    """Mean absolute change between neighbouring columns over the middle rows, [W - 1]."""
    rows = shot[shot.shape[0] // 4 : 3 * shot.shape[0] // 4]
    return np.abs(np.diff(rows, axis=1)).mean(axis=(0, 2))


def seam_is_invisible(shot: np.ndarray) -> bool:
    """The view is centred on u = +-1: the centre column pair is no more abrupt than the
    view's usual structure (at most the 99th percentile of all neighbouring pairs)."""
    steps = column_steps(shot)
    centre = shot.shape[1] // 2
    at_seam = steps[centre - 2 : centre + 1].max()
    return bool(at_seam <= np.percentile(steps, 99))


# --------------------------------------------------------------------------- without a browser


@pytest.mark.runtime
def test_page_is_self_contained_and_embeds_the_exact_panorama(periodic):
    panorama = periodic
    page = viewer_html(panorama, provenance={"seed": "2"})
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # No resource from anywhere: no src/href other than the embedded data URL.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "http://" not in page.replace("http://www.w3.org", "").replace("http://ns.google.com", "")
    encoded = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    embedded = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert np.array_equal(np.asarray(embedded.convert("RGB")), panorama)
    assert read_png_metadata_from_bytes(base64.b64decode(encoded))["seed"] == "2"


def read_png_metadata_from_bytes(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {key.split(".", 1)[1]: value for key, value in image.text.items() if key.startswith("cips-deploy.")}


@pytest.mark.runtime
def test_wide_panoramas_are_reduced_by_a_whole_factor_before_embedding():
    width = MAX_EMBEDDED_WIDTH + 2  # just over the limit: halved
    image = np.zeros((6, width, 3), np.uint8)
    image[..., 0], image[..., 1] = 200, np.arange(width) % 2 * 100  # red everywhere; green alternating 0, 100
    page = viewer_html(image)
    encoded = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    embedded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
    assert embedded.shape == (3, width // 2, 3) and embedded.shape[1] <= MAX_EMBEDDED_WIDTH
    assert (embedded[..., 0] == 200).all() and (embedded[..., 1] == 50).all()  # neighbouring columns averaged
    import json as json_module

    meta = json_module.loads(re.search(r'<script id="meta" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert (meta["width"], meta["height"], meta["embedded_width"], meta["embedded_height"]) == (width, 6, width // 2, 3)


@pytest.mark.runtime
def test_viewer_refuses_non_html_and_non_images(tmp_path, periodic):
    panorama = periodic
    with pytest.raises(CipsError, match="must be an .html file"):
        write_viewer(panorama, tmp_path / "pano.png")
    with pytest.raises(CipsError, match="uint8"):
        viewer_html(panorama.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.runtime
def test_render_viewer_needs_a_cylinder_and_one_seed(tmp_path):
    from click.testing import CliRunner

    from cips_deploy.cli import cli

    runner = CliRunner()
    flat = runner.invoke(cli, ["render", "-t", "flat", "--height", "16", "--viewer", str(tmp_path / "v.html"), "-o", str(tmp_path / "a.png")])
    assert flat.exit_code == 1 and "--topology cylinder" in flat.output and "Traceback" not in flat.output
    many = runner.invoke(cli, ["render", "-t", "cylinder", "--seeds", "0-1", "--height", "16", "--viewer", str(tmp_path / "v.html"), "-o", str(tmp_path / "a.png")])
    assert many.exit_code == 1 and "one seed" in many.output
    assert list(tmp_path.iterdir()) == []
    good = runner.invoke(cli, ["render", "-t", "cylinder", "--height", "16", "--viewer", str(tmp_path / "v.html"), "-o", str(tmp_path / "p.png")])
    assert good.exit_code == 0, good.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["p.png", "v.html"]
    encoded = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', (tmp_path / "v.html").read_text()).group(1)
    embedded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
    assert np.array_equal(embedded, np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))
    assert read_png_metadata(tmp_path / "p.png")["gpano"]["ProjectionType"] == "cylindrical"


# --------------------------------------------------------------------------- in Chromium


@pytest.mark.slow
def test_webgl_viewer_loads_offline_drags_and_has_no_seam(tmp_path, panorama, browser_factory):
    context = browser_factory()
    path = write(tmp_path, panorama, "pano.html")
    viewer = Page(context, path)
    assert viewer.renderer == "webgl2"
    assert viewer.errors == []
    assert all(url.startswith(("file:", "data:")) for url in viewer.requests), viewer.requests

    # A drag turns the view: the picture changes, and by the amount dragged.
    before = viewer.shot()
    yaw = viewer.page.evaluate("window.cipsViewer.yaw")
    frames = viewer.page.evaluate("window.cipsViewer.frames")
    viewer.page.mouse.move(300, 135)
    viewer.page.mouse.down()
    viewer.page.mouse.move(180, 135, steps=4)
    viewer.page.mouse.up()
    viewer.wait_for(f"window.cipsViewer.frames > {frames}")
    after = viewer.shot()
    turned = viewer.page.evaluate("window.cipsViewer.yaw") - yaw
    assert turned == pytest.approx(120 / VIEW["width"] * 90, rel=1e-6)  # 120 px of a 90-degree, 480 px view
    assert np.abs(after - before).mean() > 5

    # Across u = +-1: the view centred on the seam equals the view of the panorama rolled
    # by half a turn (where those columns are interior neighbours) centred on its middle.
    viewer.set_view(180)
    across = viewer.shot()
    rolled = Page(context, write(tmp_path, np.roll(panorama, panorama.shape[1] // 2, axis=1), "rolled.html"))
    interior = rolled.shot()
    assert np.abs(across - interior).max() <= 3
    assert seam_is_invisible(across)
    assert viewer.errors == [] and rolled.errors == []


@pytest.mark.slow
def test_seam_check_detects_a_real_seam(tmp_path, browser_factory):
    """The control: a strip that is NOT periodic (a left-to-right ramp) shows its seam."""
    ramp = np.repeat(np.repeat(np.linspace(0, 255, 384).astype(np.uint8)[None, :, None], 96, axis=0), 3, axis=2)
    viewer = Page(browser_factory(), write(tmp_path, ramp, "ramp.html"))
    viewer.set_view(180)
    assert not seam_is_invisible(viewer.shot())


@pytest.mark.slow
def test_2d_fallback_by_query_and_without_webgl(tmp_path, panorama, browser_factory):
    path = write(tmp_path, panorama, "pano.html")
    webgl = Page(browser_factory(), path)
    webgl.set_view(180)
    reference = webgl.shot()
    fallback = Page(browser_factory(), path, "renderer=2d")
    assert fallback.renderer == "2d"
    fallback.set_view(180)
    flat = fallback.shot()
    assert np.abs(flat - reference).mean() < 1.0  # the same mapping in both renderers
    assert seam_is_invisible(flat)
    no_gl = Page(browser_factory("--disable-webgl", "--disable-3d-apis"), path)
    assert no_gl.renderer == "2d"
    for page in (webgl, fallback, no_gl):
        assert page.errors == []


@pytest.mark.runtime
def test_hostile_names_cannot_break_the_page(periodic):
    panorama = periodic
    hostile = {"model": "</script><script>alert(1)</script> @DATA_URL@ <!--"}
    page = viewer_html(panorama, title="<b>@META@</b>", provenance=hostile)
    assert page.count("<script") == 2 and page.count("</script>") == 2  # only the page's own
    assert page.count("data:image/png;base64,") == 1
    assert "<b>" not in page and "&lt;b&gt;@META@&lt;/b&gt;" in page
    import json as json_module

    meta = re.search(r'<script id="meta" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json_module.loads(meta)["provenance"] == hostile
