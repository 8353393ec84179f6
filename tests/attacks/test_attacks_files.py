"""Attack family: data and files. One overwrite rule (--force) for every command; leftovers of
killed runs (hidden .partial files, .cips-export staging folders) are swept by the next run of
the same command; NaN colours are refused rather than written as black pixels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.runtime.atomic import sweep_leftovers
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError

from ..helpers.attack_tools import CLI, files_under, refused


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _aged(path, seconds=7200):
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def _invoke(args, cwd):
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return tiny_checkpoint


@pytest.mark.parametrize(
    "command",
    [
        ["render", "--checkpoint", "{model}", "--height", "8", "-q", "-o", "out.png"],
        ["export", "{model}", "--engine", "onnx", "--no-validate", "-o", "out.onnx"],
        ["scale-consistency", "{model}", "--size", "12", "--samples", "1", "-o", "out.json"],
    ],
    ids=["render", "export", "scale-consistency"],
)
def test_every_command_refuses_to_replace_an_existing_output_without_force(model, tmp_path, command):
    command = [part.replace("{model}", str(model)) for part in command]
    output = tmp_path / command[-1]
    output.write_bytes(b"the user's file")
    refused(command, "already exists; pass --force to replace it", cwd=tmp_path)
    assert output.read_bytes() == b"the user's file"
    result = _invoke([*command, "--force"], tmp_path)
    assert result.exit_code == 0, result.output
    assert output.read_bytes() != b"the user's file"


def test_a_render_sweeps_the_leftovers_of_killed_renders_of_the_same_output(model, tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f".out.png.{dead}.abcd1234.partial"
    running = tmp_path / f".out.png.{alive}.abcd1234.partial"  # a concurrent render's: kept
    old_scheme = tmp_path / ".out.png.k2j4h5g6.partial"  # an earlier version's, two hours old
    recent_old_scheme = tmp_path / ".out.png.z9y8x7w6.partial"  # may still be written: kept
    other = tmp_path / f".other.png.{dead}.abcd1234.partial"  # another output's: not this run's business
    for path in (stale, running, old_scheme, recent_old_scheme, other):
        path.write_bytes(b"half a png")
    _aged(old_scheme)
    result = _invoke(["render", "--checkpoint", str(model), "--height", "8", "-q", "-o", "out.png"], tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(files_under(tmp_path)) == sorted(
        ["out.png", running.name, recent_old_scheme.name, other.name]
    )


def test_an_export_sweeps_killed_exports_staging_folders(model, tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".cips-export.{dead}.abcd1234.partial"
    stale.mkdir()
    (stale / "out.onnx").write_bytes(b"\0" * 4096)
    old = tmp_path / ".cips-export.abcd1234"  # the exporter's earlier naming (tempfile.TemporaryDirectory)
    old.mkdir()
    _aged(old)
    result = _invoke(["export", str(model), "--engine", "onnx", "--no-validate", "-o", "out.onnx"], tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(files_under(tmp_path)) == ["out.mapping.onnx", "out.onnx"]


def test_the_sweep_removes_only_dead_writers_leftovers_of_its_label(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".state.pt.{dead}.abcd1234.partial").write_bytes(b"x")
    (tmp_path / f".state.pt.{dead}.abcd1234.probe").write_bytes(b"")
    (tmp_path / f".state.pt.{os.getpid()}.abcd1234.partial").write_bytes(b"mine, in progress")
    (tmp_path / "state.pt").write_bytes(b"the real file")
    (tmp_path / ".state.pt.notes").write_bytes(b"the user's hidden file")
    removed = sweep_leftovers(tmp_path, "state.pt")
    assert sorted(path.name for path in removed) == sorted([f".state.pt.{dead}.abcd1234.partial", f".state.pt.{dead}.abcd1234.probe"])
    assert sorted(files_under(tmp_path)) == sorted(
        ["state.pt", ".state.pt.notes", f".state.pt.{os.getpid()}.abcd1234.partial"]
    )


@pytest.mark.slow
def test_an_export_killed_with_sigkill_is_cleaned_by_the_next_export(model, tmp_path):
    process = subprocess.Popen([CLI, "export", str(model), "--engine", "onnx", "-o", "out.onnx"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".cips-export.*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not list(tmp_path.glob(".cips-export.*")):
        pytest.skip("the export finished before it could be killed")
    result = _invoke(["export", str(model), "--engine", "onnx", "--no-validate", "-o", "out.onnx", "--force"], tmp_path)
    assert result.exit_code == 0, result.output
    assert sorted(files_under(tmp_path)) == ["out.mapping.onnx", "out.onnx"]


def test_non_finite_colours_are_refused_not_written_black(tmp_path):
    generator = cips_deploy.create("tiny", seed=0)
    with torch.no_grad():
        generator.blocks[-1].to_rgb.bias.fill_(float("inf"))
    with pytest.raises(CipsError, match="computed NaN or infinite colours"):
        cips_deploy.render(generator, "flat", 8, 8)


def test_a_trained_model_that_overflows_is_refused_at_load(tmp_path):
    generator = cips_deploy.create("tiny", seed=0)
    with torch.no_grad():
        generator.blocks[-1].to_rgb.bias.fill_(float("inf"))
    generator.save(tmp_path / "inf.safetensors")
    refused(["render", "--checkpoint", "inf.safetensors", "--height", "8", "-o", "x.png"], "NaN or infinite", cwd=tmp_path)


def test_a_training_sweeps_the_half_written_state_of_a_killed_run(tmp_path):
    from cips_deploy.train.loop import lock_run

    run = tmp_path / "run"
    run.mkdir()
    dead = _dead_pid()
    stale = run / f".training-state.pt.{dead}.abcd1234.partial"
    stale.write_bytes(b"\0" * 4096)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(images / "black.png")
    from cips_deploy.train import TrainOptions, train

    train(TrainOptions(data=str(images), out=str(run), preset="tiny", resolution=16, batch=2, steps=1,
                       checkpoint_every=1, sample_every=1000))
    assert not stale.exists()
    assert not [name for name in files_under(tmp_path) if name.endswith(".partial")]
    holder = lock_run(run)  # the finished run released its lock
    holder.close()
