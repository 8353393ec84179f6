"""A class-conditional model on the page: a class control, ``?class=N``, and the label fed to the
mapping engine, rendering what ``cips-deploy render --class N`` renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cips_deploy
from cips_deploy.exporters.web.site import write_site

from .test_web_page import Page, assert_close

pytestmark = pytest.mark.slow

SNAPSHOT = Path(__file__).parents[1] / "fixtures" / "official-creps-cond" / "creps_r16_cond3.pkl"


@pytest.fixture(scope="module")
def conditional_site(tmp_path_factory, web_runtime):
    from cips_deploy.exporters import export_onnx

    folder = tmp_path_factory.mktemp("conditional")
    engine = export_onnx(cips_deploy.load(SNAPSHOT), folder / "cond.onnx", validate_export=False).synthesis  # validated in tests/core/test_conditional.py
    site = write_site(engine, folder / "site", web_runtime=web_runtime, overwrite=False).files[0]
    return engine, site


def test_the_page_renders_each_class_as_python_does(conditional_site, serve, browser):
    engine, site = conditional_site
    page = Page(browser, serve(site), "?class=2&size=64x64")
    assert page.page.evaluate("window.cipsDeploy.manifest.model.c_dim") == 3
    assert page.page.evaluate("window.cipsDeploy.manifest.model.z_dim") == 32
    view, pixels = page.frame()
    assert view["classIndex"] == 2 and "class=2" in page.page.url
    assert page.page.is_visible("#class-control")
    request = dict(seed=4, width=48, height=40, topology="flat", truncation=0.8)
    rendered = {}
    for index in (0, 1):
        expected = cips_deploy.render(engine, "flat", 40, 48, seed=4, truncation=0.8, class_index=index)
        rendered[index] = page.render(**request, classIndex=index)
        assert_close(rendered[index], expected)
    assert np.abs(rendered[0][..., :3].astype(int) - rendered[1][..., :3].astype(int)).max() > 10
    message = page.page.evaluate(
        "async () => { try { await window.cipsDeploy.render({seed: 1, width: 8, height: 8, classIndex: 3}); return ''; }"
        " catch (error) { return error.message; } }"
    )
    assert message == "This model is class-conditional (3 classes): the class must be a whole number from 0 to 2, not 3."
    assert page.problems == []
    page.close()
