"""The training core: modes, checkpoints, exact resume, DDP, feedback, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy import CipsError
from cips_deploy.cli import cli
from cips_deploy.families.creps import CrepsGenerator
from cips_deploy.train import TrainOptions, train
from cips_deploy.train.loop import run_summary

FAST = dict(preset="tiny", resolution=16, batch=4, checkpoint_every=2, sample_every=8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Procedural scenes: a sky gradient over a ground band with a sun, in a few variations."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(6):
        height, width = 24, 40 + 8 * index
        v = np.linspace(0, 1, height)[:, None, None]
        sky = np.array([90, 140, 230]) * (1 - v) + np.array([200, 220, 250]) * v
        image = np.broadcast_to(sky, (height, width, 3)).copy()
        horizon = int(height * (0.55 + 0.05 * (index % 3)))
        image[horizon:] = np.array([60, 120 + 10 * index, 50]) + rng.normal(0, 12, (height - horizon, width, 3))
        sun = (rng.integers(4, width - 4), rng.integers(3, horizon - 2))
        yy, xx = np.mgrid[:height, :width]
        image[(yy - sun[1]) ** 2 + (xx - sun[0]) ** 2 < 6] = [255, 230, 120]
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"scene-{index}.png")
    return folder


def run_options(data: Path, out: Path, **overrides) -> TrainOptions:
    return TrainOptions(data=str(data), out=str(out), **{**FAST, "steps": 4, **overrides})


def test_tiny_trains_and_writes_a_loadable_generator_log_and_samples(image_folder, tmp_path):
    path = train(run_options(image_folder, tmp_path / "run"))
    generator = cips_deploy.load(path)
    assert generator.config.size == 16 and generator.provenance["step"] == 4
    records = run_summary(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) and r["images_per_second"] > 0 for r in records)
    assert "r1" in records[0]  # lazy R1 on step 0, 16, 32, ...
    samples = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["step-0000002.png", "step-0000004.png"]
    assert Image.open(samples[0]).size == (16 * 3, 16 * 3)  # 8 samples in a 3 x 3 grid
    initial = cips_deploy.create("tiny", size=16)
    assert not torch.equal(initial.first.linear.weight, generator.first.linear.weight)  # it learned something


@pytest.mark.parametrize("arch, extra", [("skip", {}), ("creps", {"pl_weight": 2.0})], ids=["skip", "creps-pl"])
def test_resumed_run_repeats_the_uninterrupted_run_exactly(image_folder, tmp_path, arch, extra):
    train(run_options(image_folder, tmp_path / "whole", steps=6, checkpoint_every=3, arch=arch, **extra))
    train(run_options(image_folder, tmp_path / "split", steps=3, checkpoint_every=3, arch=arch, **extra))
    train(run_options(image_folder, tmp_path / "split", steps=6, checkpoint_every=3, arch=arch, **extra), resume=True)
    whole = run_summary(tmp_path / "whole" / "log.jsonl")
    split = run_summary(tmp_path / "split" / "log.jsonl")
    losses = lambda records: [(r["step"], r["d_loss"], r["g_loss"], r.get("r1"), r.get("pl")) for r in records]
    assert losses(split) == losses(whole)
    # Path-length regularisation runs lazily, every 4 steps (steps 1 and 5 here: the step count before them is 0 and 4).
    assert [r["step"] for r in whole if "pl" in r] == ([1, 5] if extra else [])
    a, b = (cips_deploy.load(tmp_path / name / "generator.safetensors") for name in ("whole", "split"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_patch_training_renders_only_the_patch(image_folder, tmp_path, monkeypatch):
    seen = []
    original = cips_deploy.Generator.synthesize

    def recording(self, coords, w, **kwargs):
        seen.append(coords.shape[1])
        return original(self, coords, w, **kwargs)

    monkeypatch.setattr(cips_deploy.Generator, "synthesize", recording)
    train(run_options(image_folder, tmp_path / "run", resolution=32, crop=8, steps=2, sample_every=10_000))
    assert set(seen) == {8 * 8}


def test_cylinder_training_gives_a_cylinder_model_with_panorama_samples(image_folder, tmp_path):
    path = train(run_options(image_folder, tmp_path / "run", topology="cylinder", fov=90, steps=2))
    generator = cips_deploy.load(path)
    assert generator.config.coordinate_space == "cylinder"
    sample = Image.open(tmp_path / "run" / "samples" / "step-0000002.png")
    assert sample.size == (16 * 4, 16 * 8)  # a whole turn is 4 views of 90 degrees; one panorama per row


@pytest.mark.parametrize("mode", [{}, {"crop": 8}, {"topology": "cylinder", "fov": 90}], ids=["full", "crop", "cylinder"])
def test_creps_trains_in_every_mode(image_folder, tmp_path, mode):
    path = train(run_options(image_folder, tmp_path / "run", arch="creps", steps=2, **mode))
    generator = cips_deploy.load(path)
    assert isinstance(generator, CrepsGenerator) and generator.provenance["step"] == 2
    initial = cips_deploy.create("tiny", arch="creps", size=16, coordinate_space=generator.config.coordinate_space)
    assert not torch.equal(initial.synthesis.b8.fc0.weight, generator.synthesis.b8.fc0.weight)
    assert all(np.isfinite(r["g_loss"]) for r in run_summary(tmp_path / "run" / "log.jsonl"))


def test_ddp_with_two_gloo_processes_keeps_the_replicas_identical(image_folder, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
               str(Path(sys.executable).parent / "cips-deploy"), "train", str(image_folder), "--out", str(out),
               "--resolution", "16", "--batch", "4", "--steps", "3", "--checkpoint-every", "3", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "event" in line]
    (checkpoint,) = [e for e in events if e["event"] == "checkpoint"]
    assert len(checkpoint["replica_fingerprints"]) == 2
    assert checkpoint["replica_fingerprints"][0] == checkpoint["replica_fingerprints"][1]
    assert cips_deploy.load(out / "generator.safetensors").provenance["step"] == 3


def test_sigint_saves_and_exits_130_then_resumes(image_folder, tmp_path):
    out = tmp_path / "run"
    command = [str(Path(sys.executable).parent / "cips-deploy"), "train", str(image_folder), "--out", str(out),
               "--resolution", "16", "--batch", "4", "--steps", "100000", "--checkpoint-every", "100000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr  # saved, but the run did not finish: 128 + SIGINT
    assert "Stopped at step" in stderr and "Traceback" not in stderr
    stopped = cips_deploy.load(out / "generator.safetensors").provenance["step"]
    assert stopped >= 2
    train(run_options(image_folder, out, steps=stopped + 1, checkpoint_every=100000), resume=True)
    assert run_summary(log)[-1]["step"] == stopped + 1


def test_unreadable_images_are_skipped_and_counted(image_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.png").write_bytes((image_folder / "scene-0.png").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = CliRunner().invoke(cli, ["train", str(folder), "--out", str(tmp_path / "run"), "--resolution", "16",
                                      "--batch", "2", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert "Skipped 1 unreadable file(s), e.g. broken.png." in result.output


def test_zip_data_sets_work(image_folder, tmp_path):
    import zipfile

    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in image_folder.glob("*.png"):
            handle.write(path, f"nested/{path.name}")
    path = train(run_options(archive, tmp_path / "run", steps=1))
    assert cips_deploy.load(path).provenance["images"] == 6


def test_nan_losses_stop_the_run_and_keep_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
    from cips_deploy.train import loop

    original = loop.Trainer.train_step

    def poisoned(self):
        record = original(self)
        if self.step == 3:
            record["g_loss"] = float("nan")
        return record

    monkeypatch.setattr(loop.Trainer, "train_step", poisoned)
    with pytest.raises(CipsError, match="NaN or infinite at step 3.*last good checkpoint \\(step 2\\)"):
        train(run_options(image_folder, tmp_path / "run", steps=6, checkpoint_every=2))
    assert cips_deploy.load(tmp_path / "run" / "generator.safetensors").provenance["step"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "holds no usable image"),
        (["{missing}"], "No such data set"),
        (["{images}", "--resolution", "48"], "powers of two from 8 to 1024"),
        (["{images}", "--crop", "12"], "--crop must be a power of two"),
        (["{images}", "--preset", "giant"], "Unknown preset"),
        (["{images}", "--batch", "0"], "--batch must be at least 1"),
        (["{images}", "--resume"], "Nothing to resume"),
    ],
)
def test_bad_training_input_is_one_sentence(image_folder, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.jpg").write_bytes(b"nope")
    replacements = {"{empty}": str(tmp_path / "empty"), "{missing}": str(tmp_path / "missing"), "{images}": str(image_folder)}
    args = [replacements.get(arg, arg) for arg in args]
    result = CliRunner().invoke(cli, ["train", *args, "--out", str(tmp_path / "run"), "--steps", "1"])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_an_existing_run_is_never_overwritten_and_resume_checks_options(image_folder, tmp_path):
    train(run_options(image_folder, tmp_path / "run", steps=2))
    with pytest.raises(CipsError, match="already holds a training run"):
        train(run_options(image_folder, tmp_path / "run", steps=2))
    with pytest.raises(CipsError, match="started with batch=4, not 8"):
        train(run_options(image_folder, tmp_path / "run", steps=3, batch=8), resume=True)
