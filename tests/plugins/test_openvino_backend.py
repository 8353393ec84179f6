"""The ``openvino`` backend plugin: f32 by default and equal to onnxruntime within 1e-4,
bf16 only on request with its caveat, the demo panorama, and a clear sentence without OpenVINO."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.models import DEMO_MODEL
from cips_deploy.cli import cli
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.errors import CipsError
from cips_deploy.exporters import export_onnx
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.plugins.openvino_backend import BF16_CAVEAT, OpenVinoBackend


def test_plugin_loads_and_says_what_to_install_without_openvino(monkeypatch, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no broken-plugin warning, whether or not openvino is installed
        assert get_registry().get("backend", "openvino").item is OpenVinoBackend
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(CipsError, match=r"pip install 'cips-deploy\[openvino\]'"):
        OpenVinoBackend(DEMO_MODEL)


def test_declared_options():
    names = [parameter.name for parameter in OpenVinoBackend.options]
    assert names == ["precision", "threads", "opset"]
    assert OpenVinoBackend.options[0].default == "f32"


needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(cips_deploy.load(DEMO_MODEL), path, validate_export=False)
    return path


def cases(style_dim: int):
    """(coords [B, N, 2], z [B, S]) host float32 arrays."""
    rng = np.random.default_rng(0)
    yield grid_coords(32, 128), rng.standard_normal((1, style_dim)).astype(np.float32)
    yield rng.uniform(-3, 3, (3, 257, 2)).astype(np.float32), rng.standard_normal((3, style_dim)).astype(np.float32)  # outside [-1, 1], B = 3


@needs_openvino
@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_f32_matches_onnxruntime(which, demo_engine, tmp_path):
    if which == "demo":
        engine = demo_engine
    else:  # random weights: outputs of several units, where bf16 would be far off
        engine = tmp_path / "tiny.onnx"
        export_onnx(cips_deploy.create("tiny", seed=3), engine, validate_export=False)
    reference, backend = OnnxRuntimeBackend(engine), OpenVinoBackend(engine)
    assert backend.precision == "f32" and backend.config == reference.config
    for coords, z in cases(backend.config.style_dim):
        w_ref, w = reference.map(z, truncation=0.7), backend.map(z, truncation=0.7)
        np.testing.assert_allclose(w, w_ref, atol=1e-4, rtol=0)
        expected, got = reference.run(coords, w_ref), backend.run(coords, w_ref)
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4


@needs_openvino
def test_checkpoint_exported_on_the_fly(monkeypatch, tmp_path):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))
    generator = cips_deploy.create("tiny", seed=1)
    checkpoint = tmp_path / "tiny.safetensors"
    generator.save(checkpoint)
    backend = OpenVinoBackend(checkpoint)
    assert backend.path.is_relative_to(tmp_path / "cache")
    coords, z = next(cases(generator.config.style_dim))
    with torch.no_grad():
        w = generator.map(torch.from_numpy(z))
        expected = generator.synthesize(torch.from_numpy(coords), w).numpy()
    assert np.abs(backend.run(coords, w.numpy()) - expected).max() <= 1e-4


@needs_openvino
def test_bf16_only_on_request_with_its_caveat(demo_engine, capsys):
    OpenVinoBackend(demo_engine)
    assert capsys.readouterr().err == ""
    backend = OpenVinoBackend(demo_engine, precision="bf16")
    assert backend.precision == "bf16" and BF16_CAVEAT in capsys.readouterr().err
    coords, z = next(cases(backend.config.style_dim))
    rgb = backend.run(coords, backend.map(z))
    assert rgb.dtype == np.float32 and np.isfinite(rgb).all()


@needs_openvino
@pytest.mark.parametrize(
    "options, match",
    [({"precision": "f16"}, "precision is f32 or bf16"), ({"threads": "two"}, "whole number"),
     ({"threads": "-1"}, "at least 0"), ({"colour": "red"}, "no option 'colour'")],
)
def test_bad_options(demo_engine, options, match):
    with pytest.raises(CipsError, match=match):
        OpenVinoBackend(demo_engine, **options)


@needs_openvino
def test_renders_the_demo_panorama(demo_engine, tmp_path):
    runner = CliRunner()
    outputs = {}
    for backend, model in (("openvino", DEMO_MODEL), ("onnxruntime", demo_engine)):
        out = tmp_path / f"{backend}.png"
        result = runner.invoke(cli, ["render", "--checkpoint", str(model), "--backend", backend, "-t", "cylinder",
                                     "--height", "32", "-o", str(out)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs[backend] = np.asarray(Image.open(out)).astype(int)
    assert outputs["openvino"].shape == (32, 128, 3)
    assert np.abs(outputs["openvino"] - outputs["onnxruntime"]).max() <= 1  # 1e-4 can move a level at a boundary
