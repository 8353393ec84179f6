"""ONNX export: I/O contract, metadata, validation, external data, official parity, TensorRT ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import cips_deploy
from cips_deploy.families.checkpoint import file_sha256
from cips_deploy.contracts.config import preset_config
from cips_deploy.runtime.coords import grid_coords, planar_to_points
from cips_deploy.errors import CipsError
from cips_deploy.exporters import (
    OnnxEngine,
    ValidationError,
    export_onnx,
    needs_external_data,
    read_onnx_metadata,
    weights_sha256,
)
from cips_deploy.exporters.cache import cached_onnx
from cips_deploy.exporters.onnx_export import EXTERNAL_DATA_THRESHOLD, estimated_weight_bytes
from cips_deploy.exporters.trt_ops import TENSORRT10_ONNX_OPS, tensorrt_problems
from cips_deploy.families.generator import Generator


def run(path: Path, coords: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["rgb"], {"coords": coords.detach().numpy(), "w": w.detach().numpy()})[0]


@pytest.fixture(scope="module")
def tiny() -> Generator:  # noqa: D103
    return cips_deploy.create("tiny", arch="skip", seed=3)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(tiny, folder / "tiny.onnx", source_file="tiny.safetensors", source_sha256="ab" * 32)


def test_engine_io_contract(exported, tiny):
    model = onnx.load(str(exported.synthesis))
    shapes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in list(model.graph.input) + list(model.graph.output)
    }
    assert shapes == {"coords": ["batch", "points", 2], "w": ["batch", 64], "rgb": ["batch", "points", 3]}
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version == 17
    onnx.checker.check_model(str(exported.synthesis), full_check=True)
    mapping = onnx.load(str(exported.mapping))
    assert [i.name for i in mapping.graph.input] == ["z"] and [o.name for o in mapping.graph.output] == ["w"]
    # Dynamic axes really are dynamic: sizes other than the traced ones run.
    coords = torch.rand(1, 5, 2) * 2 - 1
    w = tiny.map(torch.randn(1, 64))
    with torch.no_grad():
        expected = tiny.synthesize(coords, w).numpy()
    assert np.abs(run(exported.synthesis, coords, w) - expected).max() <= 1e-4


def test_metadata_round_trip(exported, tiny):
    meta = read_onnx_metadata(exported.synthesis)
    assert meta.role == "synthesis" and not meta.spatial_style
    assert meta.config == tiny.config and meta.coordinate_space == "plane"
    assert torch.equal(meta.w_avg_tensor(), tiny.w_avg)  # bit for bit through JSON
    assert meta.source_sha256 == "ab" * 32 and meta.source_file == "tiny.safetensors"
    assert meta.weights_sha256 == weights_sha256(tiny)
    assert meta.package_version == cips_deploy.__version__ and meta.opset == 17
    props = {p.key for p in onnx.load(str(exported.synthesis), load_external_data=False).metadata_props}
    assert {"cips_deploy.w_avg", "cips_deploy.config", "cips_deploy.coordinate_space", "cips_deploy.source_sha256",
            "cips_deploy.package_version", "cips_deploy.opset"} <= props
    assert read_onnx_metadata(exported.mapping).role == "mapping"


def test_validation_report_covers_the_required_cases(exported):
    report = exported.report
    assert report.ok and report.max_abs <= 1e-4
    names = " | ".join(case.case for case in report.cases)
    for needle in ("B=1", "B=2", "B=3", "outside [-1, 1]", "off-grid", "training grid", "u, v = +-1"):
        assert needle in names
    shapes = [case.shapes for case in report.cases if case.engine == "synthesis"]
    assert any("999" in s for s in shapes) and any("257" in s for s in shapes)  # N not a power of two
    assert "passed" in report.format()


def test_failed_validation_writes_nothing(tiny, tmp_path):
    # No fp32 engine matches torch to 1e-12: the export must fail and leave the folder empty.
    with pytest.raises(ValidationError, match="Validation failed"):
        export_onnx(tiny, tmp_path / "tiny.onnx", atol=1e-12)
    assert list(tmp_path.iterdir()) == []


def test_no_validate_skips_the_report(tiny, tmp_path):
    result = export_onnx(tiny, tmp_path / "tiny.onnx", validate_export=False)
    assert result.report is None and result.synthesis.is_file()


@pytest.mark.parametrize("opset", [13, 20])
def test_other_opsets_export_and_validate(tiny, tmp_path, opset):
    result = export_onnx(tiny, tmp_path / "tiny.onnx", opset=opset, mapping=False)
    assert onnx.load(str(result.synthesis)).opset_import[0].version == opset
    assert result.report.ok


@pytest.mark.parametrize("opset", [9, 12, 21])
def test_unsupported_opset_is_refused(tiny, tmp_path, opset):
    with pytest.raises(CipsError, match=f"opset {opset} is not supported"):
        export_onnx(tiny, tmp_path / "tiny.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_forced_external_data_and_replacing_it(tiny, tmp_path):
    path = tmp_path / "tiny.onnx"
    result = export_onnx(tiny, path, external_data=True)
    data = tmp_path / "tiny.onnx.data"
    assert result.external_data and data.is_file()
    assert path.stat().st_size < 100_000 < data.stat().st_size  # weights live outside the protobuf
    assert read_onnx_metadata(path).weights_sha256 == weights_sha256(tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mapping.onnx", "tiny.onnx", "tiny.onnx.data"]
    # Replacing it with an inline export removes the data file nobody refers to any more.
    export_onnx(tiny, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mapping.onnx", "tiny.onnx"]


def test_paper1024_needs_external_data_without_allocating():
    with torch.device("meta"):
        big = Generator(preset_config("paper1024"))
        paper256 = Generator(preset_config("paper256"))
    assert estimated_weight_bytes(big) >= 512 * 1024 * 1024 * 4  # the embedding grid alone
    assert estimated_weight_bytes(big) > EXTERNAL_DATA_THRESHOLD and needs_external_data(big)
    assert not needs_external_data(paper256)


def test_existing_output_needs_overwrite(exported, tiny):
    with pytest.raises(CipsError, match="already exists; pass --force"):
        export_onnx(tiny, exported.synthesis)


@pytest.mark.parametrize("destination", ["missing/tiny.onnx", "afile/tiny.onnx"])
def test_unwritable_destination(tiny, tmp_path, destination):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(CipsError, match="Cannot write"):
        export_onnx(tiny, tmp_path / destination)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "checkpoint, reference",
    [("cipsskip_s8.pt", "reference_outputs.pt"), ("cipsres_s8_g_ema.pt", "reference_outputs_cipsres.pt")],
)
def test_official_checkpoints_reproduce_official_outputs(tmp_path, official_dir, checkpoint, reference):
    """The exported engines of the official fixtures give the official rgb within 1e-4."""
    generator = cips_deploy.load(official_dir / checkpoint)
    result = export_onnx(generator, tmp_path / "official.onnx", source_sha256=file_sha256(official_dir / checkpoint))
    engine = OnnxEngine(result.synthesis, providers="cpu", checkpoint_sha256=file_sha256(official_dir / checkpoint))
    cases = torch.load(official_dir / reference, weights_only=True)
    worst = 0.0
    for name, case in cases.items():
        coords = planar_to_points(case["coords"])
        w = case["latent"] if case["input_is_latent"] else engine.map(case["latent"])
        rgb = engine.synthesize(coords, w)  # torch CPU tensors in (the official files'), numpy out
        expected = case["rgb"].permute(0, 2, 3, 1).reshape(rgb.shape).numpy()
        worst = max(worst, float(np.abs(rgb - expected).max()))
    print(f"{checkpoint}: max abs against the official outputs through onnxruntime {worst:.2e}")
    assert worst <= 1e-4


ALL_VARIANTS = [(a, s, p) for a in ("skip", "res", "ne", "creps") for s in ("plane", "cylinder") for p in (False, True)]


@pytest.mark.parametrize("arch, space, spatial", ALL_VARIANTS)
def test_every_node_is_supported_by_tensorrt(tmp_path, arch, space, spatial):
    size = {"size": 8} if arch == "creps" else {}  # a CREPS has one width per block 4 .. size
    generator = cips_deploy.create("tiny", arch=arch, coordinate_space=space, widths=(16, 16), **size)
    result = export_onnx(generator, tmp_path / "g.onnx", spatial_style=spatial, validate_export=False)
    for path in (result.synthesis, result.mapping):
        model = onnx.load(str(path))
        for node in model.graph.node:
            assert node.domain in ("", "ai.onnx"), node
            assert node.op_type in TENSORRT10_ONNX_OPS, f"{node.op_type} ({node.name}) is not in TensorRT 10's parser"
        assert "GridSample" not in {node.op_type for node in model.graph.node}
        assert tensorrt_problems(model) == []


def test_tensorrt_check_catches_unsupported_ops_and_types():
    node = onnx.helper.make_node("StringNormalizer", ["x"], ["y"], name="n1")
    cast = onnx.helper.make_node("Cast", ["y"], ["z"], to=onnx.TensorProto.DOUBLE, name="c1")
    graph = onnx.helper.make_graph(
        [node, cast],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [1])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.DOUBLE, [1])],
    )
    problems = " ".join(tensorrt_problems(onnx.helper.make_model(graph)))
    assert "StringNormalizer" in problems and "DOUBLE" in problems and "STRING" in problems


def test_spatial_style_engine(tmp_path):
    generator = cips_deploy.create("tiny", arch="res", coordinate_space="cylinder", seed=1)
    result = export_onnx(generator, tmp_path / "sp.onnx", spatial_style=True)
    model = onnx.load(str(result.synthesis))
    w_input = next(v for v in model.graph.input if v.name == "w")
    assert [d.dim_param or d.dim_value for d in w_input.type.tensor_type.shape.dim] == ["batch", "points", 64]
    assert read_onnx_metadata(result.synthesis).spatial_style
    coords = torch.rand(2, 11, 2) * 2 - 1
    w = generator.map(torch.randn(2, 64))
    per_point = w[:, None, :].expand(2, 11, 64).contiguous()
    with torch.no_grad():
        expected = generator.synthesize(coords, w).numpy()
    # A per-point style that is the same everywhere is the per-sample style.
    assert np.abs(run(result.synthesis, coords, per_point) - expected).max() <= 1e-4
    engine = OnnxEngine(result.synthesis, providers="cpu")
    with pytest.raises(CipsError, match=r"per-point styles"):
        engine.synthesize(coords, w)


def test_onnx_engine_matches_torch_and_maps_with_truncation(exported, tiny):
    engine = OnnxEngine(exported.synthesis, providers="auto", generator=tiny)
    z = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    w = engine.map(z, truncation=0.6)
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(w, tiny.map(torch.from_numpy(z), truncation=0.6).numpy(), atol=1e-5, rtol=0)
    coords = np.repeat(grid_coords(24, 40), 3, axis=0)
    with torch.no_grad():
        expected = tiny.synthesize(torch.from_numpy(coords), torch.from_numpy(w)).numpy()
    rgb = engine.synthesize(coords, w)
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.float32 and np.abs(rgb - expected).max() <= 1e-4


def test_engine_for_another_model_is_refused(exported):
    other = cips_deploy.create("tiny", arch="skip", seed=4)
    with pytest.raises(CipsError, match="different weights"):
        OnnxEngine(exported.synthesis, generator=other)
    with pytest.raises(CipsError, match="different checkpoint"):
        OnnxEngine(exported.synthesis, checkpoint_sha256="cd" * 32)
    with pytest.raises(CipsError, match="different model"):
        OnnxEngine(exported.synthesis, generator=cips_deploy.create("tiny", arch="res"))
    with pytest.raises(CipsError, match="mapping engine"):
        OnnxEngine(exported.mapping)


def test_foreign_onnx_is_not_an_engine(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(CipsError, match="not a cips-deploy engine"):
        read_onnx_metadata(tmp_path / "relu.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\x00junk" * 10)
    with pytest.raises(CipsError):
        read_onnx_metadata(tmp_path / "junk.onnx")


def test_export_cache_is_keyed_by_checkpoint_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "g.safetensors"
    cips_deploy.create("tiny", seed=5).save(checkpoint)
    first = cached_onnx(checkpoint)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(checkpoint) == first and first.stat().st_mtime_ns == stamp  # not exported again
    assert read_onnx_metadata(first).source_sha256 == file_sha256(checkpoint)
    assert file_sha256(checkpoint)[:32] in str(first)
    cips_deploy.create("tiny", seed=6).save(checkpoint, overwrite=True)
    assert cached_onnx(checkpoint) != first  # other weights, other entry


def test_validation_checks_the_declared_interface_against_the_spec(exported, tiny, tmp_path):
    """A graph whose values agree but whose interface differs from the spec fails validation:
    a dynamic axis frozen to a constant, or a renamed output."""
    from cips_deploy.exporters.spec import interface_mismatches, synthesis_spec
    from cips_deploy.exporters.validate import validate

    spec = synthesis_spec(tiny.config)
    model = onnx.load(str(exported.synthesis))
    assert interface_mismatches(model.graph, spec) == []
    frozen = onnx.load(str(exported.synthesis))
    frozen.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 999  # points: no longer dynamic
    assert interface_mismatches(frozen.graph, spec) == ["input 'coords' axis 1 is 999, not 'points'"]
    onnx.save(frozen, str(tmp_path / "frozen.onnx"))
    report = validate(tiny, {"synthesis": (tmp_path / "frozen.onnx", spec)})
    assert not report.ok and report.interface_problems == ["synthesis: input 'coords' axis 1 is 999, not 'points'"]
    assert "interface FAILED" in report.format()
    renamed = onnx.load(str(exported.synthesis))
    renamed.graph.output[0].name = "colours"
    assert interface_mismatches(renamed.graph, spec) == ["outputs are ['colours'], not ['rgb']"]


def test_the_runtime_hashes_engines_as_onnx_does(exported, tmp_path):
    """The content hash recomputed from the file's bytes (no onnx: the torch-free runtime's way)
    equals the hash of the parsed model, for inline weights, external data and grid engines."""
    from cips_deploy.exporters import integrity

    external = export_onnx(cips_deploy.create("tiny", seed=5), tmp_path / "external.onnx", external_data=True,
                           validate_export=False)
    grid = export_onnx(cips_deploy.create("tiny", arch="creps", seed=5), tmp_path / "grid.onnx", validate_export=False)
    files = [file for result in (exported, external, grid) for file in result.files if file.suffix == ".onnx"]
    assert len(files) == 2 + 2 + 4
    for file in files:
        recorded, computed = integrity.file_content_sha256(file)
        assert recorded == computed == integrity.content_sha256(onnx.load(str(file))), file.name
        integrity.verify(file, required=True)
    assert (tmp_path / "external.onnx.data").is_file()
    # Moved away, the external data is missed in one sentence.
    (tmp_path / "external.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(CipsError, match="not a readable ONNX model .*external data"):
        integrity.verify(external.synthesis)
