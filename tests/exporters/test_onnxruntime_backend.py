"""The onnxruntime and tensorrt backends as plugins: registration, on-the-fly export, parity with torch.

Backends take and return host numpy float32 arrays (cips_deploy.contracts.backend); torch is
used here only for the reference model. Tests of the torch-free runtime itself (no torch
needed) are in test_engine_runtime.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters import export_onnx
from cips_deploy.exporters.backends import OnnxRuntimeBackend, TensorRTBackend
from cips_deploy.models import DEMO_ENGINE, DEMO_MODEL
from cips_deploy.runtime.coords import grid_coords
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


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_synthesize(generator, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The torch model's rgb for numpy inputs: the reference."""
    with torch.no_grad():
        return generator.synthesize(torch.from_numpy(coords), torch.from_numpy(w)).numpy()


def test_registered_as_builtin_plugins():
    found = registry()
    assert found.backends["onnxruntime"].item is OnnxRuntimeBackend
    assert found.backends["tensorrt"].item is TensorRTBackend
    assert OnnxRuntimeBackend.model_suffixes == (".onnx",) and TensorRTBackend.model_suffixes == (".plan",)
    assert {"onnx", "trt"} <= set(found.exporters)
    assert found.backends["onnxruntime"].plugin == "cips_deploy.exporters.backends"


def test_checkpoint_renders_like_torch(generator, checkpoint, tmp_path):
    backend = OnnxRuntimeBackend(checkpoint, providers="auto")
    assert backend.config == generator.config
    assert any((tmp_path / "cache" / "onnx").rglob("model.onnx"))  # exported once, into the cache
    z = normal(2, 64)
    w = backend.map(z, truncation=0.5)
    assert isinstance(w, np.ndarray) and w.dtype == np.float32 and w.shape == (2, 64)
    with torch.no_grad():
        expected_w = generator.map(torch.from_numpy(z), truncation=0.5).numpy()
    np.testing.assert_allclose(w, expected_w, atol=1e-5, rtol=0)
    coords = np.repeat(grid_coords(48, 96, u_range=(-1.0, 1.0)), 2, axis=0)  # a panorama strip, B = 2
    rgb = backend.run(coords, w)
    expected = torch_synthesize(generator, coords, w)
    assert isinstance(rgb, np.ndarray) and rgb.shape == (2, 48 * 96, 3) and rgb.dtype == np.float32
    assert np.abs(rgb - expected).max() <= 1e-4
    # Per-point styles: a second engine is exported on first need, and agrees too.
    per_point = np.ascontiguousarray(np.broadcast_to(w[:, None, :], (2, coords.shape[1], 64)))
    assert np.abs(backend.run(coords, per_point) - expected).max() <= 1e-4


def test_images_equal_the_torch_backend(generator, checkpoint):
    found = registry()
    if "torch" not in found.backends:
        pytest.skip("the torch backend plugin (cips_deploy.plugins.torch_backend) is not available yet")
    reference = found.backends["torch"].item(checkpoint, device="cpu")
    backend = OnnxRuntimeBackend(checkpoint)
    coords = grid_coords(64, 64)
    w = reference.map(normal(1, 64), truncation=0.7)
    assert np.abs(backend.map(normal(1, 64), truncation=0.7) - w).max() <= 1e-5
    assert np.abs(backend.run(coords, w) - reference.run(coords, w)).max() <= 1e-4


def test_the_demo_engine_renders_the_torch_demo(capsys):
    """render("demo-panorama.onnx") (the torch-free default) against the torch render of its checkpoint."""
    size = dict(height=64, width=256, seed=0)
    engine = cips_deploy.render(DEMO_ENGINE, "cylinder", **size)  # backend chosen from the suffix
    reference = cips_deploy.render(DEMO_MODEL, "cylinder", **size, backend="torch")
    difference = np.abs(engine.astype(int) - reference.astype(int))
    with capsys.disabled():
        print(f"\ndemo engine vs torch demo: max {difference.max()} levels, {np.mean(difference > 0):.4%} of values differ")
    assert engine.shape == reference.shape == (64, 256, 3)
    assert difference.max() <= 1
    # Per-point styles (--blend-seed) through the spatial twin beside the engine.
    blended = cips_deploy.render(DEMO_ENGINE, "cylinder", **size, blend_seed=5)
    blended_reference = cips_deploy.render(DEMO_MODEL, "cylinder", **size, blend_seed=5, backend="torch")
    assert np.abs(blended.astype(int) - blended_reference.astype(int)).max() <= 1
    # The bundled engine was exported from the bundled checkpoint (its metadata names its hash).
    backend = OnnxRuntimeBackend(DEMO_MODEL, engine=DEMO_ENGINE)
    assert backend.config == cips_deploy.load(DEMO_MODEL).config


def test_engine_file_and_in_memory_generator(generator, tmp_path):
    result = export_onnx(generator, tmp_path / "e.onnx")
    from_file = OnnxRuntimeBackend(result.synthesis)
    from_memory = OnnxRuntimeBackend(generator)
    coords = np.random.default_rng(0).uniform(-1, 1, (1, 333, 2)).astype(np.float32)
    w = from_file.map(normal(1, 64))
    assert np.abs(from_file.run(coords, w) - from_memory.run(coords, w)).max() <= 1e-4
    with pytest.raises(CipsError, match="not exported for per-point styles"):
        from_file.run(coords, np.repeat(w[:, None, :], 333, axis=1))


def test_torch_tensors_from_old_callers_still_run(generator, tmp_path):
    """Code written against the old contract hands torch CPU tensors: they are converted, not refused."""
    backend = OnnxRuntimeBackend(export_onnx(generator, tmp_path / "e.onnx", validate_export=False).synthesis)
    coords, z = grid_coords(8, 8), normal(1, 64)
    expected = backend.run(coords, backend.map(z))
    got = backend.run(torch.from_numpy(coords), torch.from_numpy(backend.map(torch.from_numpy(z))))
    assert isinstance(got, np.ndarray) and np.array_equal(got, expected)


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
    with pytest.raises(CipsError, match="Unknown device 'gpu'"):
        OnnxRuntimeBackend(DEMO_ENGINE, device="gpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_missing_provider_fails_before_exporting(tmp_path):
    with pytest.raises(CipsError, match="has no CUDAExecutionProvider"):
        OnnxRuntimeBackend(cips_deploy.create("tiny"), providers="cuda")
    assert not (tmp_path / "cache").exists()  # refused before any export
