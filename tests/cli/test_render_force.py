"""render --outdir and --viewer obey --force like the main output: an existing file is
refused in one sentence before anything is rendered, and replaced with --force."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from click.testing import CliRunner

from cips_deploy.cli import cli

from ..helpers.attack_tools import refused


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_outdir_seed_files_need_force(tmp_path):
    out = tmp_path / "seeds"
    out.mkdir()
    (out / "seed0002.png").write_bytes(b"mine")
    refused(["render", "--preset", "tiny", "--seeds", "0-3", "--height", "8", "--outdir", str(out)],
            f"Error: {out / 'seed0002.png'} already exists; pass --force to replace it.", cwd=tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["seed0002.png"]  # nothing rendered, nothing replaced
    assert (out / "seed0002.png").read_bytes() == b"mine"
    forced = invoke("render", "--preset", "tiny", "--seeds", "0-3", "--height", "8", "--outdir", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == [f"seed000{i}.png" for i in range(4)]
    with Image.open(out / "seed0002.png") as image:
        assert image.size == (8, 8)


def test_viewer_page_needs_force(tmp_path):
    page = tmp_path / "pano.html"
    page.write_text("mine")
    args = ["render", "--preset", "tiny", "--coordinate-space", "cylinder", "-t", "cylinder", "--height", "8",
            "--viewer", str(page), "-o", str(tmp_path / "pano.png")]
    refused(args, f"Error: {page} already exists; pass --force to replace it.", cwd=tmp_path)
    assert page.read_text() == "mine" and not (tmp_path / "pano.png").exists()
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0, forced.output
    assert page.read_text().startswith("<!doctype html>") and Path(tmp_path / "pano.png").is_file()
