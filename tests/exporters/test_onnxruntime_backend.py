"""The onnxruntime and tensorrt backends as plugins: registration, on-the-fly export, parity with torch."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters import export_onnx
from cips_deploy.exporters.backends import OnnxRuntimeBackend, TensorRTBackend
from cips_deploy.runtime.plugin_manager import load_registry



@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def generator():
    return cips_deploy.create("tiny", arch="skip", coordinate_space="cylinder", seed=11)


@pytest.fixture
def checkpoint(generator, tmp_path) -> Path:
    path = tmp_path / "tiny.safetensors"
    generator.save(path)
    return path


def registry():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other built-in plugins may still be missing
        return load_registry(entry_points=False)


def test_registered_as_builtin_plugins():
    found = registry()
    assert found.backends["onnxruntime"].item is OnnxRuntimeBackend
    assert found.backends["tensorrt"].item is TensorRTBackend
    assert {"onnx", "trt"} <= set(found.exporters)
    assert found.backends["onnxruntime"].plugin == "cips_deploy.exporters.backends"


def test_checkpoint_renders_like_torch(generator, checkpoint, tmp_path):
    backend = OnnxRuntimeBackend(checkpoint, providers="auto")
    assert backend.config == generator.config
    assert any((tmp_path / "cache" / "onnx").rglob("model.onnx"))  # exported once, into the cache
    z = torch.randn(2, 64)
    w = backend.map(z, truncation=0.5)
    assert torch.allclose(w, generator.map(z, truncation=0.5), atol=1e-5)
    coords = cips_deploy.grid_coords(48, 96, u_range=(-1.0, 1.0)).expand(2, -1, -1)  # a panorama strip
    rgb = backend.run(coords, w)
    with torch.no_grad():
        expected = generator.synthesize(coords, w)
    assert rgb.shape == (2, 48 * 96, 3) and rgb.dtype == torch.float32
    assert (rgb - expected).abs().max().item() <= 1e-4
    # Per-point styles: a second engine is exported on first need, and agrees too.
    per_point = w[:, None, :].expand(2, coords.shape[1], 64).contiguous()
    assert (backend.run(coords, per_point) - expected).abs().max().item() <= 1e-4


def test_images_equal_the_torch_backend(generator, checkpoint):
    found = registry()
    if "torch" not in found.backends:
        pytest.skip("the torch backend plugin (cips_deploy.plugins.torch_backend) is not available yet")
    reference = found.backends["torch"].item(checkpoint, device="cpu")
    backend = OnnxRuntimeBackend(checkpoint)
    coords = cips_deploy.grid_coords(64, 64)
    w = reference.map(torch.randn(1, 64), truncation=0.7)
    assert (backend.run(coords, w) - reference.run(coords, w)).abs().max().item() <= 1e-4


def test_engine_file_and_in_memory_generator(generator, tmp_path):
    result = export_onnx(generator, tmp_path / "e.onnx")
    from_file = OnnxRuntimeBackend(result.synthesis)
    from_memory = OnnxRuntimeBackend(generator)
    coords = torch.rand(1, 333, 2) * 2 - 1
    w = from_file.map(torch.randn(1, 64))
    assert (from_file.run(coords, w) - from_memory.run(coords, w)).abs().max().item() <= 1e-4
    with pytest.raises(CipsError, match="not exported for per-point styles"):
        from_file.run(coords, w[:, None, :].expand(1, 333, 64))


def test_engine_must_come_from_the_checkpoint(tmp_path, checkpoint, official_dir):
    # An engine exported from the official .pt matches the same weights converted to safetensors...
    official = cips_deploy.load(official_dir / "cipsres_s8_g_ema.pt")
    engine = export_onnx(official, tmp_path / "official.onnx", validate_export=False,
                         source_sha256=cips_deploy.families.checkpoint.file_sha256(official_dir / "cipsres_s8_g_ema.pt")).synthesis
    converted = tmp_path / "converted.safetensors"
    official.save(converted)
    assert OnnxRuntimeBackend(converted, engine=engine).config == official.config
    assert OnnxRuntimeBackend(official_dir / "cipsres_s8_g_ema.pt", engine=engine).config == official.config
    # ...and is refused for any other checkpoint.
    with pytest.raises(CipsError, match="different model"):
        OnnxRuntimeBackend(checkpoint, engine=engine)


def test_bad_options():
    with pytest.raises(CipsError, match="has no option 'fast'"):
        OnnxRuntimeBackend("x.onnx", fast=True)
    with pytest.raises(CipsError, match="runs a .plan engine"):
        TensorRTBackend("model.safetensors")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_missing_provider_fails_before_exporting(tmp_path):
    with pytest.raises(CipsError, match="has no CUDAExecutionProvider"):
        OnnxRuntimeBackend(cips_deploy.create("tiny"), providers="cuda")
    assert not (tmp_path / "cache").exists()  # refused before any export
