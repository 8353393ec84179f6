"""`cips-deploy inspect` and `compare` on real models: the demo's fp32, fp16 and int8 engines
against its checkpoint, the CREPS demo's line + compose export, official files, backend specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.models import CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL, DEMO_ENGINE, DEMO_MODEL


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def compared(*args, code: int = 0) -> dict:
    result = invoke("compare", *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory) -> dict[str, Path]:
    """The demo exported as fp16 and (dynamic) int8 engines, as a user does."""
    pytest.importorskip("onnxconverter_common", reason="fp16 engines need onnxconverter-common (the test extra has it)")
    folder = tmp_path_factory.mktemp("reduced")
    engines = {}
    for mode, flags in {"fp16": ["--precision", "fp16"], "int8": ["--quantize", "int8"]}.items():
        engines[mode] = folder / f"{mode}.onnx"
        result = invoke("export", DEMO_MODEL, "-o", engines[mode], *flags)
        assert result.exit_code == 0, result.output
    return engines


def test_inspect_checkpoints_and_engines_agree():
    generator = cips_deploy.load(DEMO_MODEL)
    checkpoint = json.loads(invoke("inspect", DEMO_MODEL, "--json").output)
    engine = json.loads(invoke("inspect", DEMO_ENGINE, "--json").output)
    assert checkpoint["format"] == "cips-deploy safetensors checkpoint" and checkpoint["size_bytes"] == DEMO_MODEL.stat().st_size
    assert checkpoint["parameters"] == engine["parameters"] == generator.num_parameters
    assert checkpoint["flops_per_point"] == engine["flops_per_point"] == generator.flops_per_point()
    creps = json.loads(invoke("inspect", CREPS_DEMO_ENGINE, "--json").output)
    assert creps["parameters"] == cips_deploy.load(CREPS_DEMO_MODEL).num_parameters and creps["line_flops_per_position"] > 0


def test_inspect_official_files(official_dir, official_creps_dir):
    pt = json.loads(invoke("inspect", official_dir / "cipsskip_s8.pt", "--json").output)
    assert pt["format"] == "official CIPS checkpoint (.pt)" and pt["parameters"] == 1_301_291
    pkl = json.loads(invoke("inspect", official_creps_dir / "creps_r16_snapshot.pkl", "--json").output)
    assert pkl["format"] == "official CREPS snapshot (.pkl)" and pkl["architecture"] == "CREPS"


@pytest.mark.slow
def test_reduced_engines_inspect_and_compare(reduced):
    for mode, path in reduced.items():
        facts = json.loads(invoke("inspect", path, "--json").output)
        assert facts["precision"] == mode and facts["quality"]["passed"] and facts["quality"]["min_psnr_db"] == 40.0
        assert facts["initializers"]["by_type"].get("float16" if mode == "fp16" else "int8", 0) > 0
        assert facts["content_hash"] == "verified"
    # The acceptance: int8 against the checkpoint fails a 1e-6 bound, passes a 40 dB gate.
    failed = invoke("compare", reduced["int8"], DEMO_MODEL, "--atol", "1e-6")
    assert failed.exit_code == 1 and "Outside the tolerance" in failed.output and "atol 1e-06" in failed.output
    assert failed.output.strip().splitlines()[-1].startswith("Error: ")
    report = compared(reduced["int8"], DEMO_MODEL, "--psnr-min", "40")
    assert report["passed"] and 40 <= report["psnr"] < 120 and report["max_abs"] > 1e-4
    assert report["backends"] == ["onnxruntime", "torch"] and len(report["worst_points"]) == 5
    fp16 = compared(reduced["fp16"], DEMO_MODEL, "--psnr-min", "40", "--points", "2000", "--seeds", "0,1")
    assert fp16["passed"] and fp16["mode"] == "points" and fp16["points_per_seed"] == 2000 and 0 < fp16["max_abs"] < 0.1


def test_fp32_engine_matches_its_checkpoint_on_grids_and_points():
    grid = compared(DEMO_ENGINE, DEMO_MODEL, "--size", "16x48", "--seeds", "0-1")
    assert grid["passed"] and grid["details"]["topology"] == "cylinder" and grid["max_abs"] < 1e-4
    assert grid["points_per_seed"] == 16 * 48 and [case["seed"] for case in grid["cases"]] == [0, 1]
    points = compared(f"onnxruntime:{DEMO_ENGINE},providers=cpu", f"torch:{DEMO_MODEL}", "--points", "1000", "--shared-style")
    assert points["passed"] and points["cases"][0]["style_max_abs"] == 0.0
    text = invoke("compare", DEMO_ENGINE, DEMO_MODEL, "--size", "8x16")
    assert text.exit_code == 0 and "worst points" in text.output and "passed" in text.output


@pytest.mark.slow
def test_creps_line_and_compose_export_against_its_checkpoint():
    grid = compared(CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL, "--size", "24x40", "--topology", "flat")
    assert grid["passed"] and grid["max_abs"] < 1e-4  # the onnxruntime backend renders grids by lines + compose
    rotated = compared(CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL, "--size", "16x16", "-t", "rotated", "-p", "angle=20")
    assert rotated["passed"] and rotated["details"]["params"]["angle"] == 20.0
    points = compared(CREPS_DEMO_ENGINE, CREPS_DEMO_MODEL, "--points", "700")
    assert points["passed"] and points["points_per_seed"] == 700


def test_bf16_torch_differs_from_fp32_and_is_caught():
    report = compared(f"torch:{DEMO_MODEL},precision=bf16", DEMO_MODEL, "--atol", "1e-6", "--size", "16x32", code=1)
    assert report["max_abs"] > 1e-6 and not report["passed"] and "atol 1e-06" in report["failures"][0]


def test_openvino_runs_the_same_engine():
    pytest.importorskip("openvino")
    report = compared(f"openvino:{DEMO_ENGINE}", DEMO_ENGINE, "--size", "8x32")
    assert report["passed"] and report["backends"] == ["openvino", "onnxruntime"]


@pytest.mark.parametrize("args, code, message", [
    (["nope:x.onnx", str(DEMO_ENGINE)], 1, "Unknown backend 'nope'"),
    (["missing.onnx", str(DEMO_ENGINE)], 1, "No such model file"),
    ([str(DEMO_ENGINE), str(DEMO_MODEL), "--size", "big"], 1, "--size is written HxW"),
    ([str(DEMO_ENGINE), str(DEMO_MODEL), "--points", "10", "--topology", "flat"], 1, "not both"),
    ([str(DEMO_ENGINE), str(CREPS_DEMO_MODEL)], 1, ""),  # another model: refused or compared, never a traceback
    ([str(DEMO_ENGINE), str(DEMO_MODEL), "--seeds", "x"], 1, "--seeds takes"),
    ([str(DEMO_ENGINE)], 2, "Missing argument"),
    ([str(DEMO_ENGINE), str(DEMO_MODEL), "--atol", "-1"], 1, "--atol must be at least 0"),
])
def test_bad_comparisons_are_one_sentence(tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("compare", *args)
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output, result.output
