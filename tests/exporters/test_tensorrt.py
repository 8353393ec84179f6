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


# ------------------------------------------------ shape profiles, verbosity, timing cache (a stand-in TensorRT)


class FakeTensorRT:
    """The part of the TensorRT 10 Python API the builder calls, recording what it is asked.

    It checks the wiring (profiles in order, flags, logger level, timing cache read and written),
    not TensorRT itself: the real build runs in the tests above where a GPU and tensorrt exist."""

    __version__ = "10.99.0"

    def __init__(self, cache_valid: bool = True):
        self.calls: list = []
        self.cache_valid = cache_valid
        fake = self

        class Logger:
            ERROR, WARNING, INFO, VERBOSE = "E", "W", "I", "V"

            def __init__(self, severity):
                fake.calls.append(("logger", severity))

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timed"

        class Config:
            profiling_verbosity = None
            int8_calibrator = None

            def set_calibration_profile(self, profile):
                fake.calls.append(("calibration profile", profile.shapes))

            def __init__(self):
                self.profiles, self.flags, self.cache = [], set(), None

            def set_memory_pool_limit(self, pool, size):
                pass

            def clear_flag(self, flag):
                self.flags.discard(flag)

            def set_flag(self, flag):
                self.flags.add(flag)

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)
                return len(self.profiles) - 1

            def create_timing_cache(self, data):
                fake.calls.append(("cache read", bytes(data)))
                return Cache(bytes(data)) if fake.cache_valid else None

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Network:
            num_layers = 0

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return Path(path).is_file()

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", config.profiles, config.profiling_verbosity, set(config.flags),
                                   config.int8_calibrator))
                return b"plan of " + repr(config.profiles).encode()

        class IInt8MinMaxCalibrator:
            def __init__(self):
                pass

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser
        self.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
        self.float32, self.float16, self.bfloat16 = "float32", "float16", "bfloat16"
        self.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": "workspace"})
        self.BuilderFlag = type("BuilderFlag", (), {"TF32": "tf32", "FP16": "fp16", "BF16": "bf16",
                                                    "OBEY_PRECISION_CONSTRAINTS": "obey", "INT8": "int8"})
        self.ProfilingVerbosity = type("ProfilingVerbosity", (), {"DETAILED": "detailed"})

    def builds(self) -> list:
        return [call for call in self.calls if call[0] == "build"]


@pytest.fixture
def fake_trt(monkeypatch):
    import sys

    import cips_deploy.exporters.tensorrt as tensorrt_module

    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_module, "gpu_facts", lambda device=None: dict(GPU))
    return fake


def export_cli(*args):
    from click.testing import CliRunner

    from cips_deploy.cli import cli

    return CliRunner().invoke(cli, ["export", *[str(arg) for arg in args]], catch_exceptions=False)


def test_shape_flags_build_every_profile_in_order(tiny, tmp_path, fake_trt):
    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    cache = tmp_path / "build.cache"
    cache.write_bytes(b"earlier timings")
    result = export_cli(checkpoint, "--engine", "trt", "--no-validate", "-o", tmp_path / "t.plan",
                        "--min-shapes", "coords:1x256x2", "--opt-shapes", "coords:1x4096x2", "--max-shapes", "coords:1x8192x2",
                        "--min-shapes", "coords:1x1x2", "--opt-shapes", "coords:8x512x2", "--max-shapes", "coords:8x1024x2",
                        "--builder-verbosity", "verbose", "--timing-cache", cache)
    assert result.exit_code == 0, result.output
    (build,) = fake_trt.builds()
    first, second = build[1]
    assert first == {"coords": ((1, 256, 2), (1, 4096, 2), (1, 8192, 2)), "w": ((1, 64), (1, 64), (1, 64))}
    assert second["coords"] == ((1, 1, 2), (8, 512, 2), (8, 1024, 2)) and second["w"] == ((1, 64), (8, 64), (8, 64))
    assert build[2] == "detailed" and ("logger", "V") in fake_trt.calls
    assert ("cache read", b"earlier timings") in fake_trt.calls
    assert cache.read_bytes() == b"earlier timings+timed"  # written back, through the atomic writer
    sidecar = read_sidecar(tmp_path / "t.plan")
    assert len(sidecar["profiles"]) == 2 and sidecar["profile"]["coords"]["opt"] == [1, 4096, 2]
    assert (sidecar["max_batch"], sidecar["chunk_size"]) == (1, 8192)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.cache", "t.mapping.onnx", "t.plan", "t.plan.json",
                                                          "tiny.safetensors"]


@pytest.mark.slow  # the CREPS export: about 15 s on two cores
def test_grid_engines_get_derived_or_their_own_profiles(tmp_path, fake_trt):
    creps = cips_deploy.create("tiny", arch="creps", seed=2)
    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    result = export_cli(checkpoint, "--engine", "trt", "--no-validate", "-o", tmp_path / "c.plan",
                        "--max-shapes", "coords:2x4096x2,lines.v:2x32,lines.u:2x16")
    assert result.exit_code == 0, result.output
    synthesis, lines, compose = (build[1] for build in fake_trt.builds())
    assert synthesis[0]["coords"][2] == (2, 4096, 2)
    assert lines[0]["v"] == ((1, 1), (2, 32), (2, 32)) and lines[0]["u"][2] == (2, 16)
    # compose: no shapes given, so the GridProfile of the synthesis profile's 2 x 4096
    rows, columns = (compose[0][name][2] for name in ("row_lines", "column_lines"))
    assert rows[0] == 2 and columns[0] == 2 and rows[1] * columns[1] >= 3 * 4096
    assert read_sidecar(tmp_path / "c.lines.plan")["profiles"][0]["v"]["max"] == [2, 32]


def test_shape_mistakes_end_before_any_build(tiny, tmp_path, fake_trt):
    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    for flags, match in [
        (["--max-shapes", "coords:1x100x2,w:1x63"], "fixed at 64"),
        (["--max-shapes", "coords:1x100x2", "--max-batch", "2"], "one profile's limits"),
        (["--max-shapes", "coords:1x100x2,lines.v:1x8"], "only a line-factored model"),
        (["--max-shapes", "coords:1x100"], "but it has 3"),
        (["--timing-cache", tmp_path], "is a folder"),
    ]:
        result = export_cli(checkpoint, "--engine", "trt", "--no-validate", "-o", tmp_path / "t.plan", *flags)
        assert result.exit_code == 1 and match in result.output and "Traceback" not in result.output, result.output
    assert fake_trt.builds() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def test_a_timing_cache_that_is_none_is_refused_and_kept(tiny, tmp_path, fake_trt):
    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"not a timing cache")
    fake_trt.cache_valid = False
    result = export_cli(checkpoint, "--engine", "trt", "--no-validate", "-o", tmp_path / "t.plan", "--timing-cache", cache)
    assert result.exit_code == 1 and "is not a TensorRT timing cache" in result.output
    assert cache.read_bytes() == b"not a timing cache"


def test_timing_cache_reader_is_bounded(tmp_path):
    import os

    from cips_deploy.exporters.tensorrt import read_timing_cache

    assert read_timing_cache(tmp_path / "new.cache") == b""  # none yet: a new cache
    os.mkfifo(tmp_path / "fifo.cache")
    with pytest.raises(CipsError, match="FIFO"):
        read_timing_cache(tmp_path / "fifo.cache")
    (tmp_path / "link.cache").symlink_to("/dev/zero")
    with pytest.raises(CipsError, match="symbolic link"):
        read_timing_cache(tmp_path / "link.cache")


def test_pieces_stay_within_the_profile_and_pad_below_its_minimum():
    from cips_deploy.exporters.tensorrt import plan_pieces

    pieces = plan_pieces(3, 10, (2, 2), (4, 4))
    covered = {(b, n) for p in pieces for b in range(p.b0, p.b1) for n in range(p.n0, p.n1)}
    assert covered == {(b, n) for b in range(3) for n in range(10)}  # every sample and point once
    assert all(p.batch == 2 and p.points == 4 for p in pieces)  # every call within [min, max]
    assert [p.padded for p in pieces] == [False, False, True, True, True, True]
    assert not any(p.padded for p in plan_pieces(2, 8, (1, 2), (1, 4)))


@pytest.mark.parametrize("psnr, ok", [(45.0, True), (12.0, False)])
def test_int8_plans_are_calibrated_on_the_chosen_batches_and_gated(tiny, tmp_path, fake_trt, monkeypatch, psnr, ok):
    import cips_deploy.exporters.trt_gate as gate_module
    from cips_deploy.exporters.quality import QualityReport

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # the calibrator's buffers would live there
    reports = []

    def fake_quality(plan, generator, *, min_psnr, seeds=None):  # rendering a plan needs the GPU
        assert read_sidecar(plan)["precision"] == "int8"
        reports.append(QualityReport("int8-static", [0], [psnr], [0.01], 64, min_psnr))
        return reports[-1]

    monkeypatch.setattr(gate_module, "trt_quality", fake_quality)
    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    result = export_cli(checkpoint, "--engine", "trt", "--no-validate", "--quantize", "int8-static",
                        "--calibration-seeds", "3-5", "--calibration-points", "300", "-o", tmp_path / "q.plan")
    (build,) = fake_trt.builds()
    assert "int8" in build[3] and "obey" in build[3] and "tf32" not in build[3]
    calibrator = build[4]
    assert len(calibrator.pieces) == 3 and calibrator.get_batch_size() == 1  # one piece per seed
    assert all(piece["coords"].shape == (1, 300, 2) and piece["w"].shape == (1, 64) for piece in calibrator.pieces)
    assert ("calibration profile", {"coords": ((1, 300, 2),) * 3, "w": ((1, 64),) * 3}) in fake_trt.calls
    assert reports and reports[0].min_psnr == 30.0  # the int8-static default
    if ok:
        assert result.exit_code == 0, result.output
        assert "Quality of the int8-static engine" in result.output
    else:
        assert result.exit_code == 1 and "below --min-psnr 30, so nothing was written" in result.output
        assert not (tmp_path / "q.plan").exists()


def test_calibration_batches_become_pieces_of_one_shape():
    import numpy as np

    from cips_deploy.exporters.trt_calibration import uniform_batches

    coords = np.arange(2 * 5 * 2, dtype=np.float32).reshape(2, 5, 2)
    pieces = uniform_batches([{"coords": coords, "w": np.ones((2, 8), np.float32)},
                              {"coords": coords[:1, :2], "w": np.zeros((1, 2, 8), np.float32)}], points=4)
    assert [p["coords"].shape for p in pieces] == [(1, 4, 2)] * 5 and [p["w"].shape for p in pieces[:4]] == [(1, 8)] * 4
    assert pieces[4]["w"].shape == (1, 4, 8)  # a per-point style follows its points
    # A short piece repeats its own points: no point from elsewhere, none invented.
    assert pieces[1]["coords"][0].tolist() == [[8, 9], [8, 9], [8, 9], [8, 9]]
    assert pieces[4]["coords"][0].tolist() == [[0, 1], [2, 3], [0, 1], [2, 3]]
