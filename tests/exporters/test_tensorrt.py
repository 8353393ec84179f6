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
def test_a_plan_of_two_profiles_runs_each_request_on_its_best(tiny, tmp_path):
    from cips_deploy.exporters.pipeline import export_checkpoint
    from cips_deploy.exporters.tensorrt import TensorRTEngine

    checkpoint = tmp_path / "tiny.safetensors"
    tiny.save(checkpoint)
    export_checkpoint(checkpoint, engine="trt", output=tmp_path / "two.plan",
                      min_shapes=["coords:1x64x2", "coords:1x1x2"], opt_shapes=["coords:1x2048x2", "coords:4x256x2"],
                      max_shapes=["coords:1x2048x2", "coords:4x256x2"])
    engine = TensorRTEngine(tmp_path / "two.plan")
    assert len(engine.profiles) == 2 and (engine.max_batch, engine.max_points) == (4, 2048)
    for batch, points, profile in [(4, 256, 1), (1, 2100, 0), (3, 100, 1)]:
        assert engine.calls(batch, points)[0].index == profile
        coords = (torch.rand(batch, points, 2) * 2 - 1).cuda()
        w = tiny.map(torch.randn(batch, 64)).detach()
        with torch.no_grad():
            expected = tiny.synthesize(coords.cpu(), w)
        assert (engine.synthesize(coords, w.cuda()).cpu() - expected).abs().max().item() <= 1e-4
    assert engine.contexts.created() == [0, 1]


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


# ------------------------------------------------ the runtime's profiles (a stand-in TensorRT and stream, on the CPU)


class FakeRunTensorRT:
    """The part of the TensorRT 10 runtime API :class:`TensorRTEngine` and the grid plans call.

    Its engine has the given ``profiles`` (``[{input: (min, opt, max)}]``) and ``outputs``; its
    contexts start on profile 0, switch with ``set_optimization_profile_async``, refuse input
    shapes outside their profile, and "run" ``compute({input: array}) -> {output: array}``,
    writing into the bound output buffers, so results show where every value went."""

    __version__ = "10.3.0"

    def __init__(self, profiles, outputs, compute):
        import ctypes

        import numpy as np

        fake, self.calls = self, []
        inputs = list(profiles[0])
        self.Logger = type("Logger", (), {"WARNING": "W", "__init__": lambda self, severity: None})
        self.TensorIOMode = type("TensorIOMode", (), {"INPUT": "input", "OUTPUT": "output"})
        self.float32 = "float32"

        def view(address, shape):
            return np.ctypeslib.as_array((ctypes.c_float * int(np.prod(shape))).from_address(address)).reshape(shape)

        class Context:
            def __init__(self):
                self.profile, self.shapes, self.addresses = 0, {}, {}

            def set_optimization_profile_async(self, index, stream_handle):
                fake.calls.append(("switch", index, stream_handle))
                self.profile = index
                return True

            def set_input_shape(self, name, shape):
                self.shapes[name] = tuple(shape)

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

            def execute_async_v3(self, stream_handle):
                for name in inputs:
                    low, _, high = profiles[self.profile][name]
                    if not all(a <= b <= c for a, b, c in zip(low, self.shapes[name], high)):
                        return False
                fake.calls.append(("run", self.profile, *(self.shapes[name] for name in inputs[:2])))
                results = compute({name: view(self.addresses[name], self.shapes[name]) for name in inputs})
                for name, array in results.items():
                    view(self.addresses[name], array.shape)[...] = array
                return True

        class Engine:
            num_io_tensors = len(inputs) + len(outputs)
            num_optimization_profiles = len(profiles)

            def get_tensor_name(self, index):
                return (inputs + list(outputs))[index]

            def get_tensor_mode(self, name):
                return "output" if name in outputs else "input"

            def get_tensor_dtype(self, name):
                return "float32"

            def get_tensor_profile_shape(self, name, index):
                return profiles[index][name]

            def create_execution_context(self):
                fake.calls.append(("create",))
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine()

        self.Runtime = Runtime


class FakeStream:
    cuda_stream = 4242

    def __init__(self, device=None):
        pass

    def wait_stream(self, other):
        pass


@pytest.fixture
def cpu_cuda(monkeypatch):
    """torch.cuda's streams and device guards as no-ops, so the runtimes run on CPU tensors."""
    import contextlib

    import cips_deploy.exporters.tensorrt as tensorrt_module

    monkeypatch.setattr(tensorrt_module, "gpu_facts", lambda device=None: dict(GPU))
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())


def fake_plan(path: Path, sidecar: dict) -> Path:
    path.write_bytes(b"plan")
    sidecar_path(path).write_text(json.dumps(sidecar | {"tensorrt_version": "10.3.0"}))
    return path


def test_the_runtime_takes_the_best_profile_per_request_on_its_own_context(tiny, tmp_path, monkeypatch, cpu_cuda):
    """Two profiles (one sample of up to 1024 points from 64; up to 8 x 128): each request runs
    on the profile with the fewest calls, through that profile's context, switched once on the
    engine's stream; padding below a minimum is dropped. TensorRT and CUDA are stand-ins: the
    buffers are CPU tensors, so what is checked is the runtime's choice, cutting and reassembly."""
    import sys

    from cips_deploy.exporters.tensorrt import TensorRTEngine

    style = tiny.config.style_dim
    profiles = [{"coords": ((1, 64, 2), (1, 1024, 2), (1, 1024, 2)), "w": ((1, style), (1, style), (1, style))},
                {"coords": ((1, 1, 2), (8, 128, 2), (8, 128, 2)), "w": ((1, style), (8, style), (8, style))}]

    def compute(x):  # rgb = (x, y, sum of w): every point's place and sample show
        import numpy as np

        return {"rgb": np.concatenate([x["coords"], np.repeat(x["w"].sum(-1)[:, None, None], x["coords"].shape[1], 1)], -1)}

    fake = FakeRunTensorRT(profiles, ("rgb",), compute)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    engine = TensorRTEngine(fake_plan(tmp_path / "m.plan", fake_sidecar(tiny)), device="cpu")
    assert [p.index for p in engine.profiles] == [0, 1] and (engine.max_batch, engine.max_points) == (8, 1024)
    assert fake.calls == []  # no context before the first request

    def render(batch, points):
        coords = torch.rand(batch, points, 2) * 2 - 1
        w = torch.randn(batch, style)
        rgb = engine.synthesize(coords, w)
        assert rgb.shape == (batch, points, 3)
        assert torch.equal(rgb[..., :2], coords)  # every point back in its place
        assert torch.allclose(rgb[..., 2], w.sum(-1, keepdim=True).expand(batch, points), atol=1e-5)

    render(8, 128)  # one call of profile 1 (profile 0 would need 8)
    assert fake.calls == [("create",), ("switch", 1, FakeStream.cuda_stream), ("run", 1, (8, 128, 2), (8, style))]
    fake.calls.clear()
    render(1, 1050)  # profile 0: 1024 points, then 26 padded to its minimum 64 (profile 1 needs 9 calls)
    assert fake.calls == [("create",), ("run", 0, (1, 1024, 2), (1, style)), ("run", 0, (1, 64, 2), (1, style))]
    fake.calls.clear()
    render(3, 100)  # profile 1 again: its context is reused, not switched again
    assert fake.calls == [("run", 1, (3, 100, 2), (3, style))]


def test_grid_plans_take_the_best_profile_per_call(tmp_path, monkeypatch, cpu_cuda):
    """The line and compose plans of a CREPS export, each with two profiles (one sample of big
    blocks; 4 samples of small ones): every call runs on the profile with the fewest calls, and
    the tiles come back in place. Stand-in TensorRT and CUDA, as above."""
    import hashlib
    import sys
    import types

    import numpy as np

    from cips_deploy.exporters.spec import compose_spec, lines_spec
    from cips_deploy.exporters.trt_grid import TensorRTGridEngines

    creps = cips_deploy.create("tiny", arch="creps", seed=2)
    features, style = creps.line_floats_per_value(), creps.config.style_dim

    def lines(x):  # row_lines = v + sum of w, column_lines = 2 u, on every feature
        shift = x["w"].sum(-1)[:, None, None]
        return {"row_lines": np.broadcast_to(x["v"][..., None] + shift, (*x["v"].shape, features)),
                "column_lines": np.broadcast_to(2 * x["u"][..., None], (*x["u"].shape, features))}

    def compose(x):  # pixel (i, j) = (its row's line, its column's line, sum of w)
        rows, columns = x["row_lines"][..., 0], x["column_lines"][..., 0]
        batch, height, width = rows.shape[0], rows.shape[1], columns.shape[1]
        grid = np.stack([np.repeat(rows[:, :, None], width, 2), np.repeat(columns[:, None, :], height, 1),
                         np.broadcast_to(x["w"].sum(-1)[:, None, None], (batch, height, width))], -1)
        return {"rgb": grid.reshape(batch, height * width, 3)}

    def profile(batch, rows, columns, f=None):
        shapes = {}
        for name, size in (("rows", rows), ("columns", columns)):
            tail = () if f is None else (f,)
            shapes[name] = ((1, 1, *tail), (batch, size, *tail), (batch, size, *tail))
        shapes["w"] = ((1, style), (batch, style), (batch, style))
        return shapes

    def renamed(shapes, rows, columns):
        return {rows: shapes["rows"], columns: shapes["columns"], "w": shapes["w"]}

    fakes = {
        b"lines": FakeRunTensorRT([renamed(profile(1, 64, 64), "v", "u"), renamed(profile(4, 16, 16), "v", "u")],
                                  ("row_lines", "column_lines"), lines),
        b"compose": FakeRunTensorRT([renamed(profile(1, 8, 64, features), "row_lines", "column_lines"),
                                     renamed(profile(4, 4, 16, features), "row_lines", "column_lines")], ("rgb",), compose),
    }

    def load(data):  # each plan's bytes name its stand-in engine
        return fakes[data].Runtime(None).deserialize_cuda_engine(data)

    both = types.SimpleNamespace(__version__="10.3.0", Logger=fakes[b"lines"].Logger,
                                 Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=load))
    monkeypatch.setitem(sys.modules, "tensorrt", both)
    files, weights = {}, None
    for role, spec in (("lines", lines_spec(creps.config, features)), ("compose", compose_spec(creps.config, features))):
        meta = build_metadata(creps, spec, opset=17, source_sha256="ef" * 32)
        weights = meta.weights_sha256
        path = tmp_path / f"c.{role}.plan"
        path.write_bytes(role.encode())
        sidecar_path(path).write_text(json.dumps({
            "format": "cips-deploy/tensorrt-engine", "format_version": "1", "tensorrt_version": "10.3.0", "gpu": dict(GPU),
            "precision": "fp32", "plan_sha256": hashlib.sha256(role.encode()).hexdigest(), "metadata": meta.to_strings()}))
        files[role] = path
    synthesis = types.SimpleNamespace(metadata=types.SimpleNamespace(weights_sha256=weights), device=torch.device("cpu"))
    grid = TensorRTGridEngines(synthesis, files)
    assert (grid.plans["lines"].max_batch, grid.plans["lines"].max_rows) == (4, 64)

    def check_lines(batch, height, width, expected_run):
        v, u, w = torch.rand(batch, height), torch.rand(batch, width), torch.randn(batch, style)
        fakes[b"lines"].calls.clear()
        rows, columns = grid.device_lines(v, u, w)
        assert torch.allclose(rows, (v + w.sum(-1, keepdim=True))[..., None].expand(-1, -1, features), atol=1e-5)
        assert torch.equal(columns, (2 * u)[..., None].expand(-1, -1, features))
        assert [call for call in fakes[b"lines"].calls if call[0] == "run"] == expected_run

    check_lines(4, 16, 1, [("run", 1, (4, 16), (4, 1))])  # profile 0 would need 4 calls (one sample each)
    check_lines(1, 64, 1, [("run", 0, (1, 64), (1, 1))])  # profile 1 would need 4 (16 rows each)

    def check_compose(batch, height, width, expected_runs):
        rows, columns, w = torch.rand(batch, height, features), torch.rand(batch, width, features), torch.randn(batch, style)
        fakes[b"compose"].calls.clear()
        rgb = grid.device_compose(rows, columns, w).reshape(batch, height, width, 3)
        assert torch.equal(rgb[..., 0], rows[..., 0][:, :, None].expand(-1, -1, width))
        assert torch.equal(rgb[..., 1], columns[..., 0][:, None, :].expand(-1, height, -1))
        runs = [call for call in fakes[b"compose"].calls if call[0] == "run"]
        assert len(runs) == expected_runs[0] and {call[1] for call in runs} == {expected_runs[1]}

    check_compose(1, 8, 64, (1, 0))  # one call of profile 0; profile 1 tiles it 2 x 4
    check_compose(4, 4, 16, (1, 1))  # one call of profile 1; profile 0 takes one sample a call
    check_compose(4, 8, 64, (4, 0))  # profile 0: a call per sample, 4; profile 1: 2 x 4 tiles, 8
    assert [call[0] for call in fakes[b"compose"].calls] == ["run"] * 4  # contexts made earlier, reused

    # A grid plan whose profile starts above one line cannot take the renderer's blocks: refused.
    from cips_deploy.exporters.trt_grid import _Plan

    fakes[b"lines"] = FakeRunTensorRT([{"v": ((1, 2), (1, 8), (1, 8)), "u": ((1, 1), (1, 8), (1, 8)),
                                        "w": ((1, style),) * 3}], ("row_lines", "column_lines"), lines)
    with pytest.raises(CipsError, match="does not start at one line"):
        _Plan(files["lines"], "lines", torch.device("cpu"), weights)
