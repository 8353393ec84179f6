"""The torch-free runtime on exported engines: the bundled demo engines, metadata and content
hashes read without onnx, the backend chosen from the model file, rendering, and the one
sentence that a checkpoint needs the build extra.

Every test here runs in a base install (numpy, pillow, click, pluggy, onnxruntime; no torch,
onnx or safetensors) and skips nothing there: it uses the engines that ship in the package.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy._compat import BUILD_EXTRA
from cips_deploy.errors import CipsError
from cips_deploy.exporters import integrity, onnx_proto
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.exporters.engine_files import grid_engine_files, mapping_path_for, spatial_path_for
from cips_deploy.exporters.metadata import read_onnx_metadata
from cips_deploy.exporters.ort_runtime import choose_providers
from cips_deploy.models import CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL, DEMO_ENGINE, DEMO_MODEL
from cips_deploy.runtime.backend_use import backend_in_use, choose_backend
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.runtime.hashing import file_sha256

pytestmark = pytest.mark.runtime

BUNDLED = [(DEMO_ENGINE, DEMO_MODEL), (CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL)]


def engine_files(engine: Path) -> list[Path]:
    return [engine, mapping_path_for(engine), *(grid_engine_files(engine) or {}).values()]


@pytest.fixture
def no_torch(monkeypatch):
    """As in a base install: ``importlib.util.find_spec("torch")`` finds nothing."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torch" else real(name, *args))


@pytest.mark.parametrize("engine, checkpoint", BUNDLED, ids=["demo-panorama", "creps-demo"])
def test_bundled_engines_say_what_they_are(engine, checkpoint):
    meta = read_onnx_metadata(engine)
    assert meta.role == "synthesis" and not meta.spatial_style and meta.coordinate_space == "cylinder"
    assert meta.source_file == checkpoint.name and meta.source_sha256 == file_sha256(checkpoint)  # exported from the file beside it
    w_avg = meta.w_avg_array()
    assert w_avg.dtype == np.float32 and w_avg.shape == (meta.style_dim,) and np.isfinite(w_avg).all()
    for file in engine_files(engine) + ([spatial_path_for(engine)] if spatial_path_for(engine).exists() else []):
        integrity.verify(file, required=True)  # content hashes recomputed without onnx
        assert read_onnx_metadata(file).weights_sha256 == meta.weights_sha256
    assert (grid_engine_files(engine) is not None) == meta.config.family.line_factored


def test_truncation_moves_towards_w_avg_in_float32():
    meta = read_onnx_metadata(DEMO_ENGINE)
    w = np.random.default_rng(0).standard_normal((2, meta.style_dim)).astype(np.float32)
    w_avg = meta.w_avg_array()
    assert meta.truncate(w, 1.0) is w
    truncated = meta.truncate(w, 0.5)
    assert truncated.dtype == np.float32
    np.testing.assert_array_equal(truncated, w_avg + (w - w_avg) * np.float32(0.5))
    np.testing.assert_array_equal(meta.truncate(w, 0.0), np.broadcast_to(w_avg, w.shape))


def test_the_backend_is_chosen_from_the_model_file(registry):
    assert choose_backend(registry, DEMO_ENGINE, None) == "onnxruntime"
    assert choose_backend(registry, str(DEMO_ENGINE), None) == "onnxruntime"
    assert choose_backend(registry, Path("model.plan"), None) == "tensorrt"
    assert choose_backend(registry, DEMO_ENGINE, "openvino") == "openvino"  # a named backend is used as named
    with backend_in_use(registry, DEMO_ENGINE, None, "cpu") as (runner, entry):
        assert entry.name == "onnxruntime" and isinstance(runner, OnnxRuntimeBackend)
        with backend_in_use(registry, runner, None, "cpu") as (same, _):  # a constructed backend is used as it is
            assert same is runner
    with pytest.raises(CipsError, match=r"torch backend cannot run.*leave --backend out"):
        choose_backend(registry, DEMO_ENGINE, "torch")
    if "torch" in registry.backends:  # the build extra is installed: checkpoints go to torch
        assert choose_backend(registry, DEMO_MODEL, None) == "torch"
    else:
        with pytest.raises(CipsError, match="needs PyTorch"):
            choose_backend(registry, DEMO_MODEL, None)


def test_render_from_the_engine_file():
    image = cips_deploy.render(DEMO_ENGINE, "cylinder", height=32, width=128, seed=3)
    assert image.shape == (32, 128, 3) and image.dtype == np.uint8 and image.std() > 0
    assert np.array_equal(cips_deploy.render(str(DEMO_ENGINE), "cylinder", 32, 128, seed=3, backend="onnxruntime"), image)
    for chunk_size in (1, 77, 4000):  # chunking never changes a pixel
        assert np.array_equal(cips_deploy.render(DEMO_ENGINE, "cylinder", 32, 128, seed=3, chunk_size=chunk_size), image)
    assert not np.array_equal(cips_deploy.render(DEMO_ENGINE, "cylinder", 32, 128, seed=4), image)
    # Per-point styles (a blend towards another seed) take the engine's twin demo-panorama.spatial.onnx.
    blended = cips_deploy.render(DEMO_ENGINE, "cylinder", 32, 128, seed=3, blend_seed=4)
    assert blended.shape == image.shape and not np.array_equal(blended, image)
    assert np.array_equal(cips_deploy.render(DEMO_ENGINE, "cylinder", 32, 128, seed=3, blend_seed=4, chunk_size=100), blended)


def test_the_creps_demo_renders_grids_through_its_grid_engines():
    backend = OnnxRuntimeBackend(CREPS_DEMO_ENGINE)
    assert backend._grid is not None
    image = cips_deploy.render(backend, "cylinder", height=24, width=40, seed=1, chunk_size=500)
    assert {axis: table.count for axis, table in backend._grid.axes.items()} == {"row": 24, "column": 40}  # each line once
    assert np.array_equal(cips_deploy.render(backend, "cylinder", height=24, width=40, seed=1, chunk_size=77), image)
    # Lines + composition compute what the per-point engine computes.
    coords = grid_coords(24, 40)
    w = backend.map(np.random.default_rng(2).standard_normal((1, backend.config.style_dim)).astype(np.float32), 0.7)
    per_point = backend._engine(spatial=False).synthesize(coords, w)
    assert np.abs(backend.run(coords, w) - per_point).max() <= 1e-4
    # Scattered points take the per-point engine and agree with it.
    scattered = np.random.default_rng(3).uniform(-1, 1, (1, 300, 2)).astype(np.float32)
    assert np.abs(backend.run(scattered, w) - backend._engine(spatial=False).synthesize(scattered, w)).max() <= 1e-4
    assert backend.bytes_per_point() < backend.bytes_per_point(per_point_style=True)


def test_cli_renders_the_bundled_engine_by_default(tmp_path):
    out = tmp_path / "panorama.png"
    result = CliRunner().invoke(cli, ["render", "--topology", "cylinder", "--height", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out)).shape == (16, 64, 3)
    refused = CliRunner().invoke(cli, ["render", "--checkpoint", str(DEMO_ENGINE), "--backend", "torch",
                                                      "--height", "8", "-o", str(tmp_path / "x.png")])
    assert refused.exit_code == 1 and "the torch backend cannot run" in refused.output
    assert not (tmp_path / "x.png").exists()


def test_cli_info_describes_an_engine():
    result = CliRunner().invoke(cli, ["info", str(CREPS_DEMO_ENGINE), "--json"])
    assert result.exit_code == 0, result.output
    facts = __import__("json").loads(result.output[result.output.index("{"):])
    assert facts["engines_beside_it"] == "mapping, lines, compose" and facts["source_file"] == CREPS_DEMO_MODEL.name


def test_a_checkpoint_without_torch_needs_the_build_extra(no_torch, tmp_path, monkeypatch):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CipsError) as refused:
        OnnxRuntimeBackend(DEMO_MODEL)
    message = str(refused.value)
    assert BUILD_EXTRA in message and "needs PyTorch" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert not (tmp_path / "cache").exists()  # nothing was exported
    # The checkpoint's own engine stands in for it without torch: its metadata names the checkpoint's hash.
    backend = OnnxRuntimeBackend(DEMO_MODEL, engine=DEMO_ENGINE)
    assert backend.config == read_onnx_metadata(DEMO_ENGINE).config


def test_the_runtime_renders_with_torch_onnx_and_safetensors_unimportable(tmp_path):
    """A fresh interpreter where importing torch, onnx or safetensors fails: the base install."""
    script = f"""
import sys
for name in ("torch", "onnx", "safetensors"):
    sys.modules[name] = None  # import fails, find_spec finds nothing
import numpy as np
import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.models import DEMO_ENGINE, DEMO_MODEL, CREPS_DEMO_ENGINE
image = cips_deploy.render(DEMO_ENGINE, "cylinder", height=16, width=64, seed=0)
assert image.shape == (16, 64, 3), image.shape
creps = cips_deploy.render(CREPS_DEMO_ENGINE, "flat", height=16, width=16, seed=0)
assert creps.shape == (16, 16, 3), creps.shape
try:
    OnnxRuntimeBackend(DEMO_MODEL)
except CipsError as error:
    print(error)
else:
    raise SystemExit("a checkpoint was accepted without torch")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**__import__("os").environ, "CIPS_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"install the build extra: {BUILD_EXTRA}.")


def _largest_initializer(data: bytes) -> tuple[int, int]:
    """(start, end) of the raw bytes of the largest initializer, found with the protobuf-free reader."""
    best = (0, 0)
    for item in onnx_proto.fields(data):
        if item.number != onnx_proto.MODEL_GRAPH:
            continue
        for entry in onnx_proto.fields(data, item.value_start, item.end):
            if entry.number == onnx_proto.GRAPH_INITIALIZER:
                for part in onnx_proto.fields(data, entry.value_start, entry.end):
                    if part.number == onnx_proto.TENSOR_RAW_DATA and part.end - part.value_start > best[1] - best[0]:
                        best = (part.value_start, part.end)
    return best


def test_damaged_engines_are_refused_in_one_sentence(tmp_path):
    engine = tmp_path / "demo.onnx"
    for file in engine_files(DEMO_ENGINE):
        shutil.copyfile(file, tmp_path / file.name.replace("demo-panorama", "demo"))
    data = bytearray(engine.read_bytes())
    start, end = _largest_initializer(bytes(data))
    assert end - start > 1000
    data[(start + end) // 2] ^= 0xFF  # one weight byte
    engine.write_bytes(bytes(data))
    with pytest.raises(CipsError, match="was modified after export"):
        OnnxRuntimeBackend(engine)
    engine.write_bytes(DEMO_ENGINE.read_bytes()[: len(data) // 2])  # cut in the middle
    with pytest.raises(CipsError, match="not a readable ONNX model"):
        OnnxRuntimeBackend(engine)
    engine.write_bytes(b"\xff\x00junk" * 10)
    with pytest.raises(CipsError, match="not an ONNX model"):
        read_onnx_metadata(engine)
    engine.write_bytes(b"")
    with pytest.raises(CipsError, match="not a cips-deploy engine"):
        read_onnx_metadata(engine)


@pytest.mark.parametrize("engine", [DEMO_ENGINE, CREPS_DEMO_ENGINE], ids=["demo-panorama", "creps-demo"])
def test_a_triton_repository_from_an_engine(engine, tmp_path):
    """``cips-deploy serve model.onnx`` writes its repository from the engine files alone."""
    from cips_deploy.exporters.triton import write_engine_repository

    written = write_engine_repository(tmp_path, engine, backend="python")
    name = engine.stem
    expected = {name, f"{name}_mapping", f"{name}_ensemble"}
    if grid_engine_files(engine) is not None:
        expected |= {f"{name}_lines", f"{name}_compose", f"{name}_grid"}
    assert {folder.name for folder in written} == expected == {path.name for path in tmp_path.iterdir()}
    assert (tmp_path / name / "1" / "model.onnx").read_bytes() == engine.read_bytes()
    assert (tmp_path / name / "1" / "model.py").is_file()
    config = (tmp_path / name / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and read_onnx_metadata(engine).weights_sha256 in config
    with pytest.raises(CipsError, match="already exists"):
        write_engine_repository(tmp_path, engine)


def test_provider_choice():
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", everything) == everything
    assert choose_providers(None, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == everything[1:]
    assert choose_providers("cuda", everything) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(CipsError, match="has no CUDAExecutionProvider"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(CipsError, match="Unknown onnxruntime provider"):
        choose_providers("tpu", everything)


def test_triton_options_are_checked_before_connecting():
    from cips_deploy.exporters.triton_backend import TritonBackend

    for options, message in (({"url": "http://x:1"}, "no scheme"), ({"inflight": "0"}, "1 to 64"),
                             ({"protocol": "udp"}, "grpc or http"), ({"timeout": "-1"}, "timeout")):
        with pytest.raises(CipsError, match=message):
            TritonBackend(DEMO_ENGINE, **options)


def test_commands_that_need_torch_say_so_in_one_sentence(no_torch, tmp_path):
    for args in (["export", str(DEMO_MODEL), "-o", str(tmp_path / "x.onnx")], ["info", str(DEMO_MODEL)],
                 ["render", "--checkpoint", str(DEMO_MODEL), "--backend", "onnxruntime", "-o", str(tmp_path / "x.png")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        last = result.output.strip().splitlines()[-1]
        assert "needs PyTorch" in last and BUILD_EXTRA in last, (args, result.output)
    assert list(tmp_path.iterdir()) == []


class _SeparableEngines:
    """Grid engines of a made-up line-factored function, exact in float32: a pixel is
    (u + v, u * v, w0) from the row line [v, 1] and the column line [u, 1]. Records the calls."""

    features = 2

    def __init__(self) -> None:
        self.line_calls: list[tuple[int, int]] = []
        self.compose_calls: list[tuple[int, int]] = []

    @staticmethod
    def _line(values: np.ndarray) -> np.ndarray:
        return np.stack([values, np.ones_like(values)], axis=-1).astype(np.float32)  # [B, K, 2]

    def lines(self, v, u, w):
        self.line_calls.append((v.shape[1], u.shape[1]))
        return self._line(v), self._line(u)

    def compose(self, rows, columns, w):
        self.compose_calls.append((rows.shape[1], columns.shape[1]))
        v, u = rows[:, :, None, 0], columns[:, None, :, 0]  # [B, H, 1], [B, 1, W]
        rgb = np.stack(np.broadcast_arrays(u + v, u * v, np.broadcast_to(w[:, :1, None], (u + v).shape)), axis=-1)
        return rgb.reshape(rows.shape[0], -1, 3).astype(np.float32)

    def per_point(self, coords, w):
        u, v = coords[..., 0], coords[..., 1]
        return np.stack(np.broadcast_arrays(u + v, u * v, np.broadcast_to(w[:, :1], u.shape)), axis=-1).astype(np.float32)


def test_the_grid_renderer_computes_each_line_once_and_composes_blocks():
    from cips_deploy.exporters.grid_runtime import PAD_COLUMNS, GridRenderer

    config = read_onnx_metadata(CREPS_DEMO_ENGINE).config  # a line-factored family's config
    engines = _SeparableEngines()
    renderer = GridRenderer(engines, config, max_bytes=1 << 20, pad=64, point_batch=128)
    w = np.full((1, config.style_dim), 0.25, dtype=np.float32)
    coords = grid_coords(30, 50)
    whole = engines.per_point(coords, w)
    for chunk in (7, 64, 150, 1500):  # rows of a grid, in order; the chunk need not end on a row
        parts = [renderer.synthesize(coords[:, start : start + chunk], w) for start in range(0, 1500, chunk)]
        assert np.array_equal(np.concatenate(parts, axis=1), whole), chunk
    assert {axis: table.count for axis, table in renderer.axes.items()} == {"row": 30, "column": 50}
    values_pad = 64 // config.family.line_slots(config)
    assert all(max(call) % values_pad == 0 for call in engines.line_calls)  # padded groups
    assert all(columns % PAD_COLUMNS == 0 for _, columns in engines.compose_calls)  # padded blocks
    # Points in any order, and scattered points (the per-point engine), give the same colours.
    shuffled = coords[:, np.random.default_rng(0).permutation(1500)]
    assert np.array_equal(renderer.synthesize(shuffled, w), engines.per_point(shuffled, w))
    scattered = np.random.default_rng(1).uniform(-1, 1, (1, 300, 2)).astype(np.float32)
    calls = len(engines.compose_calls)
    assert np.array_equal(renderer.synthesize(scattered, w), engines.per_point(scattered, w))
    assert len(engines.compose_calls) == calls  # no composition for scattered points
    # A new style starts the tables afresh; a tight budget restarts them instead of growing past it.
    renderer.synthesize(coords[:, :50], w + 1)
    assert renderer.axes["row"].count == 1 and renderer.axes["column"].count == 50
    small = GridRenderer(_SeparableEngines(), config, max_bytes=2 * 4 * 2 * 60, pad=64, point_batch=128)
    for start in range(0, 1500, 100):
        assert np.array_equal(small.synthesize(coords[:, start : start + 100], w), whole[:, start : start + 100])
    assert small.nbytes <= 4 * 2 * 2 * 64 * 2  # bounded tables
