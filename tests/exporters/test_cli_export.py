"""``cips-deploy export``: happy paths and every kind of bad input (one sentence, exit 1, no files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.exporters import read_onnx_metadata
from cips_deploy.families.checkpoint import file_sha256



def invoke(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    cips_deploy.create("tiny", seed=0).save(path)
    return path


def test_official_checkpoint_exports_directly(tmp_path, official_dir):
    official = official_dir / "cipsskip_s8.pt"
    result = invoke("export", official, "--engine", "onnx", "-o", tmp_path / "churches.onnx")
    assert result.exit_code == 0, result.output
    assert "passed: largest difference" in result.output and "Wrote" in result.output
    assert files_in(tmp_path) == ["churches.mapping.onnx", "churches.onnx"]
    meta = read_onnx_metadata(tmp_path / "churches.onnx")
    assert meta.source_sha256 == file_sha256(official) and meta.source_file == official.name


def test_default_output_name_and_options(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("export", checkpoint, "--no-validate", "--spatial-style", "--opset", "18", "--external-data")
    assert result.exit_code == 0, result.output
    assert "Validation" not in result.output and "w [B, N, 64]" in result.output
    assert files_in(tmp_path) == ["tiny.mapping.onnx", "tiny.onnx", "tiny.onnx.data"]
    meta = read_onnx_metadata(tmp_path / "tiny.onnx")
    assert meta.spatial_style and meta.opset == 18


def test_triton_repository_from_the_cli(checkpoint, tmp_path):
    result = invoke("export", checkpoint, "--no-validate", "--triton-repo", tmp_path / "repo", "--name", "cips")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path) == [
        # each model folder carries the output guard's marker: --force replaces only what cips-deploy wrote
        "repo", "repo/cips", "repo/cips/.cips-deploy-output", "repo/cips/1", "repo/cips/1/model.onnx",
        "repo/cips/config.pbtxt", "repo/cips_ensemble", "repo/cips_ensemble/.cips-deploy-output",
        "repo/cips_ensemble/1", "repo/cips_ensemble/config.pbtxt", "repo/cips_mapping",
        "repo/cips_mapping/.cips-deploy-output", "repo/cips_mapping/1", "repo/cips_mapping/1/model.onnx",
        "repo/cips_mapping/config.pbtxt",
    ]


def bad(tmp_path: Path, *args: str, match: str, report: bool = False) -> str:
    """Run a failing export: one error sentence (after the validation report, if any),
    exit status 1, no traceback, and no file added to ``tmp_path``."""
    before = files_in(tmp_path)
    result = invoke("export", *args)
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == [lines[-1]] and (report or len(lines) == 1), result.output
    assert match in lines[-1], lines[-1]
    assert "Traceback" not in result.output
    assert files_in(tmp_path) == before  # nothing written, not even a temporary file
    return result.output


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    bad(tmp_path, tmp_path / "notes.txt", "-o", tmp_path / "x.onnx", match="is not a checkpoint")
    bad(tmp_path, tmp_path / "missing.pt", "-o", tmp_path / "x.onnx", match="No such checkpoint")


def test_unsupported_opset(checkpoint, tmp_path):
    bad(tmp_path, checkpoint, "--opset", "11", "-o", tmp_path / "x.onnx", match="opset 11 is not supported")


@pytest.mark.parametrize("where", ["missing/x.onnx", "file/x.onnx", "/proc/x.onnx"])
def test_unwritable_output(checkpoint, tmp_path, where):
    (tmp_path / "file").write_text("a file, not a folder")
    target = where if where.startswith("/") else tmp_path / where
    bad(tmp_path, checkpoint, "-o", target, match="Cannot write")


def test_precision_the_onnx_engine_cannot_do(checkpoint, tmp_path):
    bad(tmp_path, checkpoint, "--precision", "bf16", "-o", tmp_path / "x.onnx", match="ONNX engines are exported in fp32")
    bad(tmp_path, checkpoint, "--timing-cache", tmp_path / "t.cache", "-o", tmp_path / "x.onnx", match="--timing-cache")
    bad(tmp_path, checkpoint, "--chunk-size", "4096", "-o", tmp_path / "x.onnx", match="optimization profile")


def test_existing_output_and_wrong_suffix(checkpoint, tmp_path):
    (tmp_path / "x.onnx").write_text("old")
    bad(tmp_path, checkpoint, "-o", tmp_path / "x.onnx", match="already exists; pass --force")
    bad(tmp_path, checkpoint, "-o", tmp_path / "x.plan", match="written to a .onnx file")


def test_failed_validation_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    # Make torch disagree with the exported graph: validation must catch it and write nothing.
    from cips_deploy.families.generator import Generator

    original = Generator.synthesize

    def skewed(self, coords, w, **kwargs):
        out = original(self, coords, w, **kwargs)
        return out if torch.onnx.is_in_onnx_export() else out + 1e-3

    monkeypatch.setattr(Generator, "synthesize", skewed)
    output = bad(tmp_path, checkpoint, "-o", tmp_path / "x.onnx", match="Validation failed", report=True)
    assert "FAILED" in output and "max abs 1.0" in output


def test_engine_metadata_mismatch(checkpoint, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    assert invoke("export", checkpoint, "--no-validate", "-o", out / "m.onnx").exit_code == 0
    # The mapping engine, or an engine without per-point styles, is not what was asked for.
    bad(tmp_path, out / "m.mapping.onnx", "--engine", "trt", "-o", tmp_path / "m.plan", match="mapping engine")
    bad(tmp_path, out / "m.onnx", "--engine", "trt", "--spatial-style", "-o", tmp_path / "m.plan",
        match="takes one style per sample")
    bad(tmp_path, out / "m.onnx", "--engine", "onnx", "-o", tmp_path / "n.onnx", match="already an ONNX engine")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_trt_without_tensorrt_is_one_sentence(checkpoint, tmp_path):
    bad(tmp_path, checkpoint, "--engine", "trt", "-o", tmp_path / "x.plan", match="TensorRT is not installed here")


@pytest.mark.parametrize("option, value, match", [
    ("--opset", "1180591620717411303424", "--opset must be at most"),
    ("--max-batch", "0", "--max-batch must be at least 1"),
    ("--max-batch", "1180591620717411303424", "--max-batch must be at most"),
    ("--chunk-size", "-5", "--chunk-size must be at least 1"),
    ("--min-psnr", "nan", "--min-psnr must be a finite number"),
    ("--min-psnr", "inf", "--min-psnr must be at most"),
    ("--calibration-points", "99999999999", "--calibration-points must be at most"),
])
def test_numeric_options_use_the_one_number_parser(checkpoint, tmp_path, option, value, match):
    bad(tmp_path, checkpoint, option, value, "-o", tmp_path / "x.onnx", match=match)


@pytest.mark.parametrize("option, value", [("--opset", "17.5"), ("--max-batch", "nan"), ("--chunk-size", "1e3"),
                                           ("--min-psnr", "forty")])
def test_text_that_is_no_number_is_a_usage_error(checkpoint, tmp_path, option, value):
    result = invoke("export", checkpoint, option, value, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output and files_in(tmp_path) == []


def test_shape_flags_are_offered_and_a_wrong_spelling_is_one_sentence(checkpoint, tmp_path):
    text = invoke("export", "--help").output
    for flag in ("--min-shapes", "--opt-shapes", "--max-shapes", "--builder-verbosity", "--timing-cache",
                 "--calibration-seeds", "--calibration-points", "--calibration-data"):
        assert flag in text
    bad(tmp_path, checkpoint, "--engine", "trt", "--max-shapes", "coords=1x64x2", "-o", tmp_path / "x.plan",
        match="--max-shapes takes NAME:DIMS items")
    bad(tmp_path, checkpoint, "--engine", "trt", "--opt-shapes", "coords:1x0x2", "-o", tmp_path / "x.plan",
        match="sizes go from 1 to 2**31 - 1")
    bad(tmp_path, checkpoint, "--max-shapes", "coords:1x64x2", "-o", tmp_path / "x.onnx", match="set TensorRT's build")
    bad(tmp_path, checkpoint, "--builder-verbosity", "info", "-o", tmp_path / "x.onnx", match="sets TensorRT's build")
