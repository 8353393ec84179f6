"""TensorRT: profile, precision and sidecar checks everywhere; building and running where a GPU and tensorrt exist."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
import torch

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters import export_onnx, weights_sha256
from cips_deploy.exporters.metadata import build_metadata
from cips_deploy.exporters.spec import synthesis_spec
from cips_deploy.exporters.tensorrt import (
    FP32_SCOPES,
    Profile,
    check_precision,
    check_sidecar,
    import_tensorrt,
    read_sidecar,
    sidecar_path,
)

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_CUDA = torch.cuda.is_available()
needs_trt_gpu = pytest.mark.skipif(
    not (HAVE_TENSORRT and HAVE_CUDA),
    reason=f"needs the tensorrt package ({'present' if HAVE_TENSORRT else 'missing'}) "
    f"and a CUDA GPU ({'present' if HAVE_CUDA else 'missing'})",
)
GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def tiny():
    return cips_deploy.create("tiny", arch="skip", seed=2)


def fake_sidecar(generator, plan_bytes=b"plan") -> dict:
    import hashlib

    meta = build_metadata(generator, synthesis_spec(generator.config), opset=17, source_sha256="ef" * 32)
    return {
        "format": "cips-deploy/tensorrt-engine",
        "format_version": "1",
        "tensorrt_version": "10.3.0",
        "gpu": dict(GPU),
        "precision": "fp16",
        "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "metadata": meta.to_strings(),
    }


def test_profile_covers_one_point_to_the_chunk(tiny):
    shapes = Profile(max_batch=4, max_points=4096).shapes(synthesis_spec(tiny.config))
    assert shapes["coords"] == ((1, 1, 2), (4, 4096, 2), (4, 4096, 2))
    assert shapes["w"] == ((1, 64), (4, 64), (4, 64))
    spatial = Profile(2, 100).shapes(synthesis_spec(tiny.config, spatial_style=True))
    assert spatial["w"] == ((1, 1, 64), (2, 100, 64), (2, 100, 64))
    with pytest.raises(CipsError, match="--chunk-size"):
        Profile(1, 0)
    with pytest.raises(CipsError, match="--max-batch"):
        Profile(0, 10)


def test_precision_needs_the_hardware():
    check_precision("fp32", "6.1")
    check_precision("fp16", "7.5")
    check_precision("bf16", "8.0")
    with pytest.raises(CipsError, match="bf16 needs compute capability 8.0"):
        check_precision("bf16", "7.5")
    with pytest.raises(CipsError, match="no fast fp16"):
        check_precision("fp16", "5.2")
    with pytest.raises(CipsError, match="Unknown precision"):
        check_precision("int4", "9.0")


def test_sidecar_accepts_its_own_plan(tiny):
    meta = check_sidecar(fake_sidecar(tiny), plan=Path("m.plan"), tensorrt_version="10.3.0", gpu=GPU,
                         plan_bytes=b"plan", generator=tiny, checkpoint_sha256="ef" * 32)
    assert meta.config == tiny.config and meta.weights_sha256 == weights_sha256(tiny)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(tensorrt_version="10.0.1"), "built with TensorRT 10.0.1"),
        (dict(gpu={"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}), "built for NVIDIA A100"),
        (dict(gpu={"name": GPU["name"], "compute_capability": "8.9"}), "compute capability 8.9"),
        (dict(plan_sha256="0" * 64), "does not match its sidecar"),
    ],
)
def test_sidecar_refuses_other_versions_gpus_and_plans(tiny, change, message):
    sidecar = fake_sidecar(tiny) | change
    with pytest.raises(CipsError, match=message):
        check_sidecar(sidecar, plan=Path("m.plan"), tensorrt_version="10.3.0", gpu=GPU, plan_bytes=b"plan")


def test_sidecar_refuses_another_model(tiny):
    other = cips_deploy.create("tiny", arch="skip", seed=9)
    with pytest.raises(CipsError, match="different weights"):
        check_sidecar(fake_sidecar(tiny), plan=Path("m.plan"), tensorrt_version="10.3.0", gpu=GPU, generator=other)
    with pytest.raises(CipsError, match="different checkpoint"):
        check_sidecar(fake_sidecar(tiny), plan=Path("m.plan"), tensorrt_version="10.3.0", gpu=GPU,
                      checkpoint_sha256="aa" * 32)


def test_read_sidecar_problems(tmp_path, tiny):
    plan = tmp_path / "m.plan"
    with pytest.raises(CipsError, match="No such engine"):
        read_sidecar(plan)
    plan.write_bytes(b"plan")
    with pytest.raises(CipsError, match="has no sidecar m.plan.json"):
        read_sidecar(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(CipsError, match="not a readable"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps(fake_sidecar(tiny)))
    assert read_sidecar(plan)["tensorrt_version"] == "10.3.0"


def test_fp32_scopes_name_the_coordinate_path(tmp_path, tiny):
    """The reduced-precision builds pin layers by these ONNX scopes; they must exist in the graph."""
    result = export_onnx(tiny, tmp_path / "t.onnx", validate_export=False, mapping=False)
    names = [node.name for node in onnx.load(str(result.synthesis)).graph.node]
    for scope in FP32_SCOPES:
        scoped = [name for name in names if scope in name]
        assert scoped, scope
    floors = [name for name in names if name.endswith("Floor") or "/Floor" in name]
    assert floors and all("/embedding/" in name for name in floors)  # the texel index is inside the pinned scope


@pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed here; this checks the message shown without it")
def test_missing_tensorrt_is_one_sentence():
    with pytest.raises(CipsError, match="TensorRT is not installed here"):
        import_tensorrt()


# ------------------------------------------------------------------ with TensorRT and a GPU


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    from cips_deploy.exporters.pipeline import export_checkpoint

    folder = tmp_path_factory.mktemp("trt")
    checkpoint = folder / "tiny.safetensors"
    tiny.save(checkpoint)
    summary = export_checkpoint(checkpoint, engine="trt", output=folder / "tiny.plan", max_batch=2,
                                chunk_size=1000, timing_cache=folder / "timing.cache")
    return checkpoint, folder / "tiny.plan", summary


@needs_trt_gpu
def test_fp32_engine_matches_torch_and_chunks_within_its_profile(tiny, built):
    from cips_deploy.exporters.tensorrt import TensorRTEngine

    checkpoint, plan, summary = built
    assert sidecar_path(plan).is_file() and (plan.parent / "timing.cache").stat().st_size > 0
    engine = TensorRTEngine(plan, checkpoint_sha256=cips_deploy.families.checkpoint.file_sha256(checkpoint))
    assert (engine.max_batch, engine.max_points) == (2, 1000)
    coords = (torch.rand(3, 2345, 2) * 2.4 - 1.2).cuda()  # more samples and points than one call takes
    w = tiny.map(torch.randn(3, 64)).detach()
    rgb = engine.synthesize(coords, w.cuda())
    with torch.no_grad():
        expected = tiny.synthesize(coords.cpu(), w)
    assert (rgb.cpu() - expected).abs().max().item() <= 1e-4


@needs_trt_gpu
def test_fp16_engine_runs_close_to_torch(tiny, tmp_path):
    from cips_deploy.exporters.pipeline import export_checkpoint
    from cips_deploy.exporters.tensorrt import TensorRTEngine

    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    export_checkpoint(checkpoint, engine="trt", output=tmp_path / "half.plan", precision="fp16", chunk_size=4096)
    engine = TensorRTEngine(tmp_path / "half.plan")
    coords = torch.from_numpy(cips_deploy.grid_coords(64, 64)).cuda()
    w = tiny.map(torch.randn(1, 64)).detach()
    with torch.no_grad():
        expected = tiny.synthesize(coords.cpu(), w)
    assert (engine.synthesize(coords, w.cuda()).cpu() - expected).abs().max().item() < 5e-2


@needs_trt_gpu
def test_engine_with_a_tampered_sidecar_is_refused(built, tmp_path):
    from cips_deploy.exporters.tensorrt import TensorRTEngine

    _, plan, _ = built
    copy = tmp_path / "copy.plan"
    copy.write_bytes(plan.read_bytes())
    sidecar = json.loads(sidecar_path(plan).read_text())
    sidecar["tensorrt_version"] = "9.0.0"
    sidecar_path(copy).write_text(json.dumps(sidecar))
    with pytest.raises(CipsError, match="built with TensorRT 9.0.0"):
        TensorRTEngine(copy)
