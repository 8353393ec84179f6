"""Grid engines of line-factored models (issue 14): the line and compose engines of a CREPS
export, their validation, and the onnxruntime backend rendering grids through them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters import export_onnx
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.exporters.line_engines import line_engine_path
from cips_deploy.exporters.metadata import read_onnx_metadata
from cips_deploy.exporters.ort_grid import OnnxGridEngines
from cips_deploy.exporters.trt_ops import tensorrt_problems
from cips_deploy.exporters.spec import compose_spec, interface_mismatches, lines_spec
from cips_deploy.runtime.render import render


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def creps():
    return cips_deploy.create("tiny", arch="creps", seed=2)


@pytest.fixture(scope="module")
def exported(creps, tmp_path_factory):
    return export_onnx(creps, tmp_path_factory.mktemp("engines") / "creps.onnx")


def test_export_writes_validated_line_and_compose_engines(creps, exported):
    path = exported.synthesis
    assert exported.grid == {"lines": line_engine_path(path, "lines"), "compose": line_engine_path(path, "compose")}
    assert {file.name for file in exported.files} == {"creps.onnx", "creps.mapping.onnx", "creps.lines.onnx", "creps.compose.onnx"}
    features = creps.line_floats_per_value()
    for role, spec in (("lines", lines_spec(creps.config, features)), ("compose", compose_spec(creps.config, features))):
        file = exported.grid[role]
        model = onnx.load(str(file))
        assert interface_mismatches(model.graph, spec) == []
        assert tensorrt_problems(model) == []  # every node in TensorRT's ONNX-parser list
        meta = read_onnx_metadata(file)
        assert meta.role == role and meta.weights_sha256 == exported.metadata.weights_sha256
    report = exported.report
    assert report.ok and report.max_abs <= 1e-4, report.format()
    grid_cases = [case for case in report.cases if case.engine in ("lines", "compose")]
    # Square and non-square blocks, inside and outside [-1, 1], B = 1, 2, 3: rows, columns and colours each.
    assert len(grid_cases) == 12 and {case.engine for case in grid_cases} == {"lines", "compose"}
    assert any("non-square" in case.case for case in grid_cases) and any("B=3" in case.case for case in grid_cases)


def test_cylinder_creps_engines_validate(tmp_path):
    generator = cips_deploy.create("tiny", arch="creps", coordinate_space="cylinder", seed=4)
    result = export_onnx(generator, tmp_path / "cylinder.onnx")
    assert result.report.ok and any(case.engine == "compose" and "seam" in case.case for case in result.report.cases)


def test_a_wrong_compose_engine_fails_validation(creps, tmp_path, monkeypatch):
    from cips_deploy.exporters import line_engines, validate

    real = line_engines.ComposeEngine.forward

    def off_by_a_little(self, row_lines, column_lines, w):
        return real(self, row_lines, column_lines, w) + 1e-3

    monkeypatch.setattr(line_engines.ComposeEngine, "forward", off_by_a_little)
    with pytest.raises(validate.ValidationError):
        export_onnx(creps, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cips_exports_have_no_grid_engines(tmp_path):
    generator = cips_deploy.create("tiny", arch="skip", seed=1)
    result = export_onnx(generator, tmp_path / "cips.onnx")
    assert result.grid == {} and not line_engine_path(result.synthesis, "lines").exists()


def test_engines_compute_the_torch_lines_and_block(creps, exported):
    engine = cips_deploy.exporters.OnnxEngine(exported.synthesis)
    grid = OnnxGridEngines.open(engine)
    v = np.repeat(np.linspace(-1.2, 1.0, 6, dtype=np.float32)[None], 2, axis=0)  # [2, 6]
    u = np.repeat(np.linspace(-1.0, 1.3, 11, dtype=np.float32)[None], 2, axis=0)  # [2, 11]
    with torch.no_grad():
        w = creps.map(torch.randn(2, 64), truncation=0.7).numpy()
    rows, columns = grid.lines(v, u, w)
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float32
    assert rows.shape == (2, 6, creps.line_floats_per_value()) and columns.shape == (2, 11, creps.line_floats_per_value())
    coords = np.stack(np.broadcast_arrays(u[:, None, :], v[:, :, None]), axis=-1).reshape(2, -1, 2)  # row-major (u, v)
    with torch.no_grad():
        expected = creps.synthesize(torch.from_numpy(coords), torch.from_numpy(w)).numpy()
    assert np.abs(grid.compose(rows, columns, w) - expected).max() <= 1e-4


def test_onnxruntime_renders_grids_through_the_grid_engines(creps, tmp_path):
    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    backend = OnnxRuntimeBackend(checkpoint)
    assert backend._grid is not None
    # Chunks are sized for composing, not for the per-point path.
    assert backend.bytes_per_point() < cips_deploy.contracts.footprint.render_bytes_per_point(creps.config)
    torch_image = render(checkpoint, height=40, width=72, seed=3, backend="torch")
    image = render(backend, height=40, width=72, seed=3, chunk_size=500)
    assert {axis: table.count for axis, table in backend._grid.axes.items()} == {"row": 40, "column": 72}  # each line once
    assert np.abs(image.astype(int) - torch_image).max() <= 1
    # Chunking never changes a pixel.
    assert np.array_equal(render(backend, height=40, width=72, seed=3, chunk_size=77), image)
    coords = cips_deploy.grid_coords(40, 72)
    w = backend.map(np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32), truncation=0.7)
    with torch.no_grad():
        expected = creps.synthesize(torch.from_numpy(coords), torch.from_numpy(w)).numpy()
    assert np.abs(backend.run(coords, w) - expected).max() <= 1e-4


def test_scattered_layouts_take_the_per_point_engine(creps, exported, monkeypatch):
    backend = OnnxRuntimeBackend(exported.synthesis)
    composed = []
    real = OnnxGridEngines.compose
    monkeypatch.setattr(OnnxGridEngines, "compose", lambda self, *args: composed.append(1) or real(self, *args))
    rotated = render(backend, "rotated", height=32, width=32, seed=4, angle=30)
    assert composed == []  # a rotated grid shares no rows or columns: no line work, no composition
    expected = render(creps, "rotated", height=32, width=32, seed=4, angle=30)
    assert np.abs(rotated.astype(int) - expected).max() <= 1
    render(backend, height=16, width=16, seed=4)
    assert composed  # the flat grid does compose


def test_grid_engines_of_other_weights_are_refused(creps, exported, tmp_path):
    other = export_onnx(cips_deploy.create("tiny", arch="creps", seed=3), tmp_path / "other.onnx")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for file in exported.files:
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "creps.compose.onnx").write_bytes(other.grid["compose"].read_bytes())
    with pytest.raises(CipsError, match="different model"):
        OnnxRuntimeBackend(folder / "creps.onnx")


def test_per_point_styles_export_has_no_grid_engines(creps, tmp_path):
    result = export_onnx(creps, tmp_path / "spatial.onnx", spatial_style=True, mapping=False)
    assert result.grid == {}


@pytest.mark.slow
def test_official_snapshot_renders_1024_through_the_grid_engines(official_creps_dir, tmp_path):
    from cips_deploy.cli import cli

    snapshot = official_creps_dir / "creps_r16_snapshot.pkl"
    images = {}
    for backend in ("onnxruntime", "torch"):
        out = tmp_path / f"{backend}.png"
        args = ["render", "--checkpoint", str(snapshot), "--backend", backend, "--height", "1024", "--width", "1024", "--seed", "5", "-o", str(out)]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        from PIL import Image

        images[backend] = np.asarray(Image.open(out)).astype(int)
    assert images["onnxruntime"].shape == (1024, 1024, 3)
    assert np.abs(images["onnxruntime"] - images["torch"]).max() <= 1
    entry = next(Path(tmp_path / "cache" / "onnx").rglob("model.onnx"))
    assert line_engine_path(entry, "lines").is_file() and line_engine_path(entry, "compose").is_file()


def test_cli_export_writes_every_engine_of_the_model(creps, tmp_path):
    from cips_deploy.cli import cli

    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--engine", "onnx", "-o", str(tmp_path / "out" / "m.onnx")])
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["m.compose.onnx", "m.lines.onnx", "m.mapping.onnx", "m.onnx"]
    # The exported set renders grids through its grid engines.
    backend = OnnxRuntimeBackend(tmp_path / "out" / "m.onnx")
    assert backend._grid is not None
    image = render(backend, height=24, width=24, seed=1)
    assert np.abs(image.astype(int) - render(creps, height=24, width=24, seed=1)).max() <= 1


def test_grid_profiles_follow_the_chunk():
    from cips_deploy.exporters.trt_grid import LINE_VALUES, MAX_COLUMNS, GridProfile

    lines = GridProfile.for_role("lines", 2, 65536)
    assert lines.shapes(lines_spec(cips_deploy.create("tiny", arch="creps").config, 384))["v"] == ((1, 1), (2, LINE_VALUES), (2, LINE_VALUES))
    compose = GridProfile.for_role("compose", 1, 65536)
    shapes = compose.shapes(compose_spec(cips_deploy.create("tiny", arch="creps").config, 384))
    assert shapes["row_lines"][2] == (1, 48, 384) and shapes["column_lines"][2] == (1, MAX_COLUMNS, 384)
    assert shapes["w"] == ((1, 64), (1, 64), (1, 64))
    assert compose.max_points >= 3 * 65536  # the largest block a chunk composes fits in one call
    small = GridProfile.for_role("compose", 1, 100)
    assert small.max_columns == 100 and small.max_rows == 3


try:
    import tensorrt  # noqa: F401

    HAVE_TENSORRT = torch.cuda.is_available()
except ImportError:
    HAVE_TENSORRT = False


@pytest.mark.skipif(not HAVE_TENSORRT, reason="TensorRT grid plans need the tensorrt package and a CUDA GPU")
def test_tensorrt_builds_and_renders_grid_plans(creps, tmp_path):
    from cips_deploy.exporters import export_checkpoint
    from cips_deploy.exporters.backends import TensorRTBackend

    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    summary = export_checkpoint(checkpoint, engine="trt", output=tmp_path / "m.plan", chunk_size=4096)
    names = {path.name for path in summary.files}
    assert {"m.plan", "m.plan.json", "m.lines.plan", "m.lines.plan.json", "m.compose.plan", "m.compose.plan.json"} <= names
    backend = TensorRTBackend(tmp_path / "m.plan", device="cuda")
    assert backend._grid is not None
    image = render(backend, height=64, width=96, seed=2)
    assert np.abs(image.astype(int) - render(creps, height=64, width=96, seed=2)).max() <= 1
    rotated = render(backend, "rotated", height=32, width=32, seed=2, angle=30)
    assert np.abs(rotated.astype(int) - render(creps, "rotated", height=32, width=32, seed=2, angle=30)).max() <= 1


def test_triton_repository_holds_every_engine_and_a_grid_ensemble(creps, tmp_path):
    from cips_deploy.exporters import export_checkpoint

    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    repo = tmp_path / "repo"
    export_checkpoint(checkpoint, triton_repo=repo, triton_model_name="creps", validate=False)
    assert sorted(path.name for path in repo.iterdir()) == [
        "creps", "creps_compose", "creps_ensemble", "creps_grid", "creps_lines", "creps_mapping"]
    assert (repo / "creps_lines" / "1" / "model.onnx").is_file() and (repo / "creps_compose" / "1" / "model.onnx").is_file()
    grid = (repo / "creps_grid" / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in grid
    # z -> w (mapping) -> lines -> compose, the style feeding both engines.
    for step in ('model_name: "creps_mapping"', 'model_name: "creps_lines"', 'model_name: "creps_compose"'):
        assert step in grid
    assert grid.count('value: "styles"') == 3 and 'key: "row_lines" value: "row_lines"' in grid
    lines_config = (repo / "creps_lines" / "config.pbtxt").read_text()
    assert 'name: "row_lines"' in lines_config and f"dims: [ -1, {creps.line_floats_per_value()} ]" in lines_config


@pytest.mark.slow
def test_triton_serves_the_grid_ensemble(creps, tmp_path):
    from cips_deploy.exporters import export_checkpoint, triton_server

    try:
        triton_server.find_server()
        import tritonclient.grpc as grpcclient
    except (CipsError, ImportError, RuntimeError) as error:
        pytest.skip(f"no Triton server or client here: {error}")
    import socket

    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    repo = tmp_path / "repo"
    export_checkpoint(checkpoint, triton_repo=repo, triton_model_name="creps", triton_backend="python", validate=False)
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    z = torch.randn(1, 64)
    v, u = torch.linspace(-1, 1, 12)[None], torch.linspace(-1, 1, 20)[None]
    with triton_server.LocalServer(repo, http_port=ports[0], grpc_port=ports[1]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = []
        for name, array in (("z", z), ("v", v), ("u", u)):
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array.numpy())
            inputs.append(tensor)
        rgb = client.infer("creps_grid", inputs).as_numpy("rgb")
    from cips_deploy.exporters.line_engines import block_coords

    with torch.no_grad():
        expected = creps.synthesize(block_coords(v, u), creps.map(z, truncation=1.0))
    assert rgb.shape == (1, 240, 3) and np.abs(rgb - expected.numpy()).max() <= 1e-4


# --------------------------------------------------------------- per-layer styles (style mixing)


def test_layer_styles_exports_grid_engines_that_mix(creps, tmp_path, monkeypatch):
    """`export --layer-styles` of CREPS (the family trained with style mixing) keeps its grid
    engines, taking ws [B, L, S]: a mixed grid renders through lines and compose, as torch does."""
    result = export_onnx(creps, tmp_path / "layered.onnx", layer_styles=True)
    assert set(result.grid) == {"lines", "compose"} and result.report.ok, result.report.format()
    layers = creps.config.family.style_layers(creps.config)
    features = creps.line_floats_per_value()
    for role, spec in (("lines", lines_spec(creps.config, features, True)), ("compose", compose_spec(creps.config, features, True))):
        assert interface_mismatches(onnx.load(str(result.grid[role])).graph, spec) == []
        assert spec.tensor("w").shape == ("batch", layers, creps.config.style_dim)
    # The validation fed each grid engine two styles across the style inputs.
    assert {case.engine for case in result.report.cases} >= {"lines", "compose"}
    composed = []
    real = OnnxGridEngines.compose
    monkeypatch.setattr(OnnxGridEngines, "compose", lambda self, *args: composed.append(1) or real(self, *args))
    backend = OnnxRuntimeBackend(tmp_path / "layered.onnx")
    assert backend._grid is not None and backend.takes_layer_styles()
    rng = np.random.default_rng(4)
    first, second = (backend.map(rng.standard_normal((2, creps.config.latent_dim)).astype(np.float32)) for _ in range(2))
    ws = np.stack([first] * (layers // 2) + [second] * (layers - layers // 2), axis=1)  # [2, L, S]
    grid = np.repeat(cips_deploy.grid_coords(24, 40), 2, axis=0)
    scattered = np.repeat(rng.uniform(-1, 1, (1, 300, 2)).astype(np.float32), 2, axis=0)
    with torch.no_grad():
        for coords in (grid, scattered):  # the grid composes; scattered points go per point, with ws whole
            expected = creps.synthesize_layers(torch.from_numpy(coords), torch.from_numpy(ws)).numpy()
            assert np.abs(backend.run_layers(coords, ws) - expected).max() <= 1e-4
            if coords is grid:
                assert composed
                composed.clear()
            else:
                assert not composed
        # One style is L equal ones, through the same grid engines.
        expected = creps.synthesize(torch.from_numpy(grid), torch.from_numpy(first)).numpy()
        assert np.abs(backend.run(grid, first) - expected).max() <= 1e-4 and composed


def test_grid_engines_of_the_other_style_kind_are_refused(creps, exported, tmp_path):
    """Plain grid engines beside a per-layer-style engine of the same weights (or the reverse)
    would be fed styles of the wrong shape: refused in one sentence when the backend opens."""
    (tmp_path / "layered").mkdir()
    layered = export_onnx(creps, tmp_path / "layered" / "creps.onnx", layer_styles=True, validate_export=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("creps.onnx", "creps.mapping.onnx"):
        (mixed / name).write_bytes((layered.synthesis.parent / name).read_bytes())
    for role in ("lines", "compose"):
        (mixed / f"creps.{role}.onnx").write_bytes(exported.grid[role].read_bytes())
    with pytest.raises(CipsError, match="takes one style per sample, unlike"):
        OnnxRuntimeBackend(mixed / "creps.onnx")
