"""`cips-deploy info` and `cips-deploy import-official`, as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_info_describes_an_official_checkpoint(official_dir):
    result = run("info", str(official_dir / "cipsskip_s8.pt"))
    assert result.exit_code == 0, result.output
    assert "CIPSskip" in result.output and "1,301,291" in result.output
    assert "training_resolution" in result.output and "official CIPS checkpoint" in result.output


def test_info_json(official_dir):
    result = run("info", "--json", str(official_dir / "cipsres_s8_g_ema.pt"))
    facts = json.loads(result.output)
    assert facts["architecture"] == "CIPSres" and facts["training_resolution"] == 8
    assert facts["parameters"] == cips_deploy.load(official_dir / "cipsres_s8_g_ema.pt").num_parameters


def test_import_official_converts_once_and_protects_existing_files(official_dir, tmp_path):
    destination = tmp_path / "res.safetensors"
    result = run("import-official", str(official_dir / "cipsres_s8_g_ema.pt"), "-o", str(destination))
    assert result.exit_code == 0, result.output
    assert cips_deploy.load(destination).config.arch == "res"
    before = destination.read_bytes()
    again = run("import-official", str(official_dir / "cipsskip_s8.pt"), "-o", str(destination))
    assert again.exit_code == 1 and "already exists" in again.output
    assert destination.read_bytes() == before
    forced = run("import-official", str(official_dir / "cipsskip_s8.pt"), "-o", str(destination), "--force")
    assert forced.exit_code == 0 and cips_deploy.load(destination).config.arch == "skip"


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "missing.safetensors"], "No such checkpoint"),
        (["import-official", "README.md", "-o", "out.safetensors"], "not a checkpoint"),
        (["import-official", "{official}", "-o", "no/such/folder/out.safetensors"], "does not exist"),
    ],
)
def test_bad_input_is_one_sentence_without_traceback(official_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    args = [arg.replace("{official}", str(official_dir / "cipsskip_s8.pt")) for arg in args]
    result = run(*args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_console_script_is_installed_and_reports_errors_cleanly(tmp_path):
    beside_python = Path(sys.executable).parent / "cips-deploy"
    executable = str(beside_python) if beside_python.exists() else shutil.which("cips-deploy")
    if executable is None:
        pytest.fail("the cips-deploy console script is not on PATH: is the package installed?")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and cips_deploy.__version__ in version.stdout
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    result = subprocess.run([executable, "info", str(broken)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
