"""fp16 and int8 ONNX engines: the quality gate, the stored report, rendering the demo panorama."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.models import DEMO_MODEL
from cips_deploy.cli import cli
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.exporters import export_onnx
from cips_deploy.exporters.backends import OnnxRuntimeBackend
from cips_deploy.exporters.graph_passes import _elem_types, remove_redundant_casts
from cips_deploy.exporters.quality import measure_quality, psnr_and_max_error
from cips_deploy.exporters.quantize import read_quality

pytest.importorskip("onnxconverter_common", reason="fp16 engines need onnxconverter-common (the test extra has it)")


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def demo():
    return cips_deploy.load(DEMO_MODEL)


@pytest.fixture(scope="module")
def fp32_engine(tmp_path_factory, demo) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "demo.onnx"
    export_onnx(demo, path)  # validated against torch within 1e-4, after the Cast pass
    return path


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> dict[str, Path]:
    """The demo model exported as fp16, int8 and int8-static through the CLI."""
    folder = tmp_path_factory.mktemp("reduced")
    engines = {}
    for mode, flags in {"fp16": ["--precision", "fp16"], "int8": ["--quantize", "int8"],
                        "int8-static": ["--quantize", "int8-static"]}.items():
        path = folder / f"{mode}.onnx"
        result = invoke("export", DEMO_MODEL, "-o", path, *flags)
        assert result.exit_code == 0, result.output
        assert f"Quality of the {mode} engine against fp32" in result.output and "passed" in result.output
        engines[mode] = path
    return engines


def test_exported_graphs_have_no_float_to_float_cast(fp32_engine):
    model = onnx.load(str(fp32_engine))
    types = _elem_types(model)
    casts = [node for node in model.graph.node if node.op_type == "Cast"]
    redundant = [n.name for n in casts if types.get(n.input[0]) == next(a.i for a in n.attribute if a.name == "to")]
    assert casts and not redundant  # the embedding's float-to-int64 index casts remain
    assert remove_redundant_casts(model) == 0


def test_redundant_cast_pass_removes_an_identity_cast():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    nodes = [
        onnx.helper.make_node("Cast", ["x"], ["c"], to=onnx.TensorProto.FLOAT, name="/Cast"),
        onnx.helper.make_node("Neg", ["c"], ["y"], name="/Neg"),
    ]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y]))
    assert remove_redundant_casts(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Neg"] and list(model.graph.node[0].input) == ["x"]
    onnx.checker.check_model(model)


def test_psnr_of_identical_and_shifted_images():
    a = np.linspace(-1, 1, 300).reshape(1, 100, 3)
    assert psnr_and_max_error(a, a) == (math.inf, 0.0)
    psnr, error = psnr_and_max_error(a, a + 0.02)  # clipping at +1 leaves some values equal
    assert error == pytest.approx(0.02) and 10 * math.log10(4 / 0.02**2) <= psnr < 60


@pytest.mark.parametrize("mode", ["fp16", "int8", "int8-static"])
def test_report_is_stored_and_reproducible(reduced, fp32_engine, demo, mode):
    precision, report = read_quality(reduced[mode])
    assert precision == mode and report is not None and report.ok
    assert report.seeds == [0, 1, 2, 3] and report.min_psnr == (30.0 if mode == "int8-static" else 40.0)
    assert all(math.isfinite(p) and p >= report.min_psnr for p in report.psnr_db)
    # The stored figures are what the engine renders now. The export's own fp32 engine and
    # this fixture's are the same graph, but for int8, whose export traces the style on the
    # inputs: the same numbers to float32 rounding (~1e-6), which moves a PSNR by ~1e-5 dB.
    again = measure_quality(fp32_engine, reduced[mode], demo, mode=mode)
    exact = mode != "int8"
    assert again.psnr_db == pytest.approx(report.psnr_db, abs=1e-6 if exact else 1e-4)
    assert again.max_abs == pytest.approx(report.max_abs, abs=1e-7 if exact else 1e-5)


def test_engine_io_stays_float32(reduced):
    for path in reduced.values():
        graph = onnx.load(str(path)).graph
        assert {v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)} == {onnx.TensorProto.FLOAT}
    fp16 = onnx.load(str(reduced["fp16"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(reduced["int8"]))
    # int8 quantises exactly the per-point products, one per modulated layer (13 in the demo:
    # 4 blocks of 2, 4 ToRGBs, the first layer), with per-channel weight scales; the style
    # stage (the affine maps, the demodulation) and the coordinate stage stay float32.
    integer = [n for n in int8.graph.node if n.op_type == "MatMulInteger"]
    assert len(integer) == 13 and all("/affine" not in n.name and n.name.endswith("/MatMul_quant") for n in integer)
    initializers = {t.name: t for t in int8.graph.initializer}
    weight_scales = [initializers[n.input[1].removesuffix("_quantized") + "_scale"] for n in integer]
    assert all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in weight_scales)  # one per output channel
    static = onnx.load(str(reduced["int8-static"]))
    assert any(n.op_type == "QuantizeLinear" for n in static.graph.node)
    # The coordinate stage stays float32 in every mode.
    for model in (fp16, int8, static):
        assert not any(n.name.startswith(("/fourier/", "/embedding/")) and n.op_type in ("MatMulInteger", "QuantizeLinear")
                       for n in model.graph.node)


@pytest.mark.parametrize("mode", ["fp16", "int8", "int8-static"])
def test_engines_render_the_demo_panorama_within_their_report(reduced, fp32_engine, mode):
    """A panorama (64 x 256 on the cylinder, seeds the report did not use) through the
    onnxruntime backend stays above the PSNR threshold that the engine's report certifies."""
    _, report = read_quality(reduced[mode])
    reference, candidate = OnnxRuntimeBackend(fp32_engine), OnnxRuntimeBackend(reduced[mode])
    coords = grid_coords(64, 256)
    for seed in (7, 11):
        z = np.random.default_rng(seed).standard_normal((1, reference.config.style_dim)).astype(np.float32)
        w = reference.map(z)
        expected, got = reference.run(coords, w), candidate.run(coords, w)
        assert got.dtype == np.float32 and got.shape == expected.shape
        psnr, _ = psnr_and_max_error(expected, got)
        assert psnr >= report.min_psnr, (mode, seed, psnr)


def bad_export(tmp_path: Path, *args, match: str) -> str:
    before = files_in(tmp_path)
    result = invoke("export", *args)
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line]
    assert lines[-1].startswith("Error: ") and match in lines[-1], result.output
    assert sum(line.startswith("Error: ") for line in lines) == 1 and "Traceback" not in result.output
    assert files_in(tmp_path) == before  # nothing written, not even a temporary folder
    return result.output


def test_quality_gate_fails_cleanly(tmp_path):
    output = bad_export(tmp_path, DEMO_MODEL, "--quantize", "int8", "--min-psnr", "200", "-o", tmp_path / "q.onnx",
                        match="below --min-psnr 200, so nothing was written")
    assert "threshold 200 dB: FAILED" in output  # the report comes first, then the sentence


def test_bad_reduced_precision_requests(tmp_path):
    bad_export(tmp_path, DEMO_MODEL, "--quantize", "int8", "--precision", "fp16", match="exclude each other")
    bad_export(tmp_path, DEMO_MODEL, "--min-psnr", "30", match="--min-psnr gates fp16 and int8")
    bad_export(tmp_path, DEMO_MODEL, "--precision", "fp16", "--min-psnr", "nan", match="--min-psnr must be a finite number")
    bad_export(tmp_path, DEMO_MODEL, "--precision", "fp16", "--min-psnr", "1e999", match="--min-psnr must be")
    bad_export(tmp_path, DEMO_MODEL, "--quantize", "int8", "--engine", "trt", match="--quantize makes ONNX engines")


def test_int8_refuses_an_engine_with_folded_weights(fp32_engine, tmp_path):
    """The fp32 export folds the style into the weight at run time: nothing for a dynamic
    quantiser. Asked to, int8 says so instead of quantising the style stage."""
    from cips_deploy.errors import CipsError
    from cips_deploy.exporters.quantize import quantize_int8_dynamic

    with pytest.raises(CipsError, match="no per-point product with a constant weight"):
        quantize_int8_dynamic(fp32_engine, tmp_path / "int8.onnx")


@pytest.mark.parametrize("mode", ["int8", "int8-static"])
def test_per_point_style_engines_quantize_too(tmp_path, mode):
    path = tmp_path / "spatial.onnx"
    result = invoke("export", DEMO_MODEL, "--spatial-style", "--no-validate", "--quantize", mode, "-o", path)
    assert result.exit_code == 0, result.output
    precision, report = read_quality(path)
    assert precision == mode and report.ok and report.worst_psnr >= report.min_psnr


# ------------------------------------------------------------ calibration data the user chooses


def activation_scales(path: Path) -> dict[str, float]:
    """The calibrated scale of every quantised activation of a static int8 engine."""
    model = onnx.load(str(path))
    return {t.name: float(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer
            if t.name.endswith("_scale") and not t.dims}


def test_calibration_seeds_and_points_change_the_scales(reduced, tmp_path):
    default = activation_scales(reduced["int8-static"])
    path = tmp_path / "other.onnx"
    result = invoke("export", DEMO_MODEL, "--no-validate", "--quantize", "int8-static", "--calibration-seeds", "7,70",
                    "--calibration-points", "512", "-o", path)
    assert result.exit_code == 0, result.output
    other = activation_scales(path)
    assert other.keys() == default.keys() and other != default
    precision, report = read_quality(path)
    assert precision == "int8-static" and report.ok


def test_a_calibration_folder_calibrates_the_engine(tmp_path, demo):
    folder = tmp_path / "batches"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(2):
        w = demo.map(torch.from_numpy(cips_deploy.seed_latent(50 + index, demo.config))).detach().numpy()
        np.savez(folder / f"{index}.npz", coords=grid_coords(32, 32), w=w)  # a 32 x 32 image per batch
    np.savez(folder / "2.npz", coords=rng.uniform(-1, 1, (1, 300, 2)), w=w)  # float64 is converted
    path = tmp_path / "data.onnx"
    result = invoke("export", DEMO_MODEL, "--no-validate", "--quantize", "int8-static", "--calibration-data", folder, "-o", path)
    assert result.exit_code == 0, result.output
    assert activation_scales(path)  # calibrated, and its report passed the default gate
    assert read_quality(path)[1].ok


def test_a_mismatched_calibration_folder_is_one_sentence(tmp_path):
    folder = tmp_path / "batches"
    folder.mkdir()
    np.savez(folder / "a.npz", coords=np.zeros((1, 8, 2), np.float32), w=np.zeros((1, 512), np.float32))
    bad_export(tmp_path, DEMO_MODEL, "--no-validate", "--quantize", "int8-static", "--calibration-data", folder,
               "-o", tmp_path / "x.onnx", match="has w [1, 512], but this engine takes [1, 64]")
    bad_export(tmp_path, DEMO_MODEL, "--quantize", "int8", "--calibration-seeds", "1-3", "-o", tmp_path / "x.onnx",
               match="add --quantize int8-static")


def test_the_gate_still_refuses_with_chosen_calibration(tmp_path):
    output = bad_export(tmp_path, DEMO_MODEL, "--no-validate", "--quantize", "int8-static", "--calibration-seeds", "3",
                        "--calibration-points", "64", "--min-psnr", "200", "-o", tmp_path / "q.onnx",
                        match="below --min-psnr 200, so nothing was written")
    assert "threshold 200 dB: FAILED" in output


def test_reduced_engines_carry_the_hash_of_their_own_file(reduced):
    from cips_deploy.exporters import integrity

    for path in reduced.values():
        recorded, computed = integrity.file_content_sha256(path)
        assert recorded == computed
        integrity.verify(path)


# ------------------------------------------------------------ a line-factored model's grid engines


@pytest.fixture(scope="module")
def creps_fp16(tmp_path_factory) -> Path:
    """The CREPS demo exported as fp16 through the CLI: per-point, lines and compose engines."""
    from cips_deploy.models import CREPS_DEMO_MODEL

    path = tmp_path_factory.mktemp("creps16") / "creps.onnx"
    result = invoke("export", CREPS_DEMO_MODEL, "--precision", "fp16", "-o", path)
    assert result.exit_code == 0, result.output
    assert "Quality of the fp16 grid engines (lines, compose) against fp32" in result.output
    return path


def test_fp16_keeps_the_grid_engines_and_gates_them(creps_fp16):
    from cips_deploy.exporters import integrity
    from cips_deploy.exporters.metadata import read_onnx_props

    assert files_in(creps_fp16.parent) == ["creps.compose.onnx", "creps.lines.onnx", "creps.mapping.onnx", "creps.onnx"]
    for role in ("lines", "compose"):
        path = creps_fp16.with_name(f"creps.{role}.onnx")
        integrity.verify(path, required=True)
        precision, report = read_quality(path)
        assert precision == "fp16" and report.subject == "grid engines (lines, compose)" and report.ok
        assert read_onnx_props(path)["cips_deploy.role"] == role
        model = onnx.load(str(path))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        graph = model.graph
        assert {v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)} == {onnx.TensorProto.FLOAT}


def test_grids_render_through_the_fp16_grid_engines(creps_fp16, monkeypatch):
    from cips_deploy.exporters.ort_grid import OnnxGridEngines
    from cips_deploy.models import CREPS_DEMO_MODEL
    from cips_deploy.runtime.render import render

    composed = []
    real = OnnxGridEngines.compose
    monkeypatch.setattr(OnnxGridEngines, "compose", lambda self, *args: composed.append(1) or real(self, *args))
    backend = OnnxRuntimeBackend(creps_fp16)
    assert backend._grid is not None
    image = render(backend, "cylinder", height=32, width=128, seed=5, truncation=0.7)
    assert composed  # the grid path, not the per-point engine
    reference = render(CREPS_DEMO_MODEL, "cylinder", height=32, width=128, seed=5, truncation=0.7, backend="torch")
    psnr, _ = psnr_and_max_error(reference.astype(np.float64) / 127.5 - 1, image.astype(np.float64) / 127.5 - 1)
    _, report = read_quality(creps_fp16.with_name("creps.lines.onnx"))
    assert psnr >= report.min_psnr  # a panorama the report did not render holds its bar


def test_grid_engines_of_another_precision_are_refused(creps_fp16, tmp_path):
    from cips_deploy.errors import CipsError
    from cips_deploy.models import CREPS_DEMO_ENGINE

    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("creps.onnx", "creps.mapping.onnx"):
        (folder / name).write_bytes(creps_fp16.with_name(name).read_bytes())
    for role in ("lines", "compose"):  # the fp32 ones of the same weights
        (folder / f"creps.{role}.onnx").write_bytes(CREPS_DEMO_ENGINE.with_name(f"creps-demo.{role}.onnx").read_bytes())
    with pytest.raises(CipsError, match="is an fp32 engine beside the fp16 engine"):
        OnnxRuntimeBackend(folder / "creps.onnx")
