"""Attack family: training and numbers (issue 26). An earlier run's files in --out, a hostile
log or training state, outputs in /proc, /sys or under a missing folder, numbers that are
huge, NaN or infinite, weights that turn NaN, a 2,000,000 x 1 image, a resume that must not
make the user repeat the run's options, and a seed list's count. Each ends in one sentence
(or simply works), nothing the user had is lost without --force, and nothing hangs."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cips_deploy
from cips_deploy.cli.common import parse_seeds
from cips_deploy.contracts.command_options import SEED, real, whole
from cips_deploy.errors import CipsError
from cips_deploy.train import TrainOptions, train
from cips_deploy.train import loop
from cips_deploy.train.data import load_images
from cips_deploy.train.loop import STATE_FILE, run_summary
from cips_deploy.runtime.atomic import write_marker
from cips_deploy.train.run_files import RUN_MARKER_TEXT, iter_log

from ..helpers.attack_tools import files_under, invoke, refused, run_cli


TRAIN = ["--resolution", "16", "--batch", "2", "--checkpoint-every", "2", "--sample-every", "1000"]
SMALL = dict(preset="tiny", resolution=16, batch=2, checkpoint_every=2, sample_every=1000)


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """A finished two-step run (resolution 16, batch 2: not the command's defaults), copied per test."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainOptions(data=str(images), out=str(out), steps=2, **SMALL))
    return out


def _copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def _contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(files_under(folder)) if (folder / name).is_file()}


# ------------------------------------------------------------------ an earlier run in --out


@pytest.mark.parametrize("name", ["generator.safetensors", "log.jsonl", "samples/step-0000002.png"])
def test_a_new_run_never_overwrites_an_earlier_runs_files(images, tmp_path, name):
    (tmp_path / "run" / "samples").mkdir(parents=True)
    (tmp_path / "run" / name).write_bytes(b"the user's earlier result")
    before = _contents(tmp_path)
    refused(["train", str(images), "--out", "run", "--steps", "1", *TRAIN],
            f"already holds {name} from an earlier training; pass --force", cwd=tmp_path)
    assert _contents(tmp_path) == before


def test_force_replaces_only_what_a_training_wrote(images, tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    write_marker(run, RUN_MARKER_TEXT)  # what the earlier training wrote with its first log line
    (run / "generator.safetensors").write_bytes(b"old generator")
    (run / "log.jsonl").write_text('{"step": 99, "d_loss": 1.0}\n')
    (run / "samples" / "step-0000099.png").write_bytes(b"old sample")
    (run / "samples" / "mine.png").write_bytes(b"the user's picture")
    (run / "notes.txt").write_text("the user's notes")
    result = invoke(["train", str(images), "--out", "run", "--steps", "2", "--force", *TRAIN[:-1], "4"], tmp_path)
    assert result.exit_code == 0, result.output
    assert cips_deploy.load(run / "generator.safetensors").provenance["step"] == 2
    assert [record["step"] for record in run_summary(run / "log.jsonl")] == [1, 2]
    assert sorted(files_under(run / "samples")) == ["mine.png", "step-0000002.png"]
    assert (run / "samples" / "mine.png").read_bytes() == b"the user's picture"
    assert (run / "notes.txt").read_text() == "the user's notes"


def test_a_refused_forced_run_leaves_the_earlier_run_as_it_was(trained, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    before = _contents(tmp_path)
    refused(["train", "missing-images", "--out", "run", "--force", *TRAIN], "No such data set", cwd=tmp_path)
    refused(["train", str(run), "--out", "run", "--force", "--resolution", "16"], "holds no usable image", cwd=tmp_path)
    assert _contents(tmp_path) == before


def test_an_earlier_state_needs_resume_or_force(images, trained, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    refused(["train", str(images), "--out", "run", *TRAIN], "pass --resume to continue it, --force to start it over",
            cwd=tmp_path)
    result = invoke(["train", str(images), "--out", "run", "--steps", "1", "--force", *TRAIN], tmp_path)
    assert result.exit_code == 0, result.output
    assert torch.load(run / STATE_FILE, weights_only=True)["step"] == 1  # a new run, not the old one continued


@pytest.mark.parametrize("name", ["generator.safetensors", "log.jsonl", "samples"])
def test_a_run_file_that_is_not_a_file_is_refused_even_with_force(images, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    if name == "samples":
        (run / name).write_bytes(b"a file where the samples folder goes")
    else:
        (run / name).mkdir()
    before = files_under(tmp_path)
    refused(["train", str(images), "--out", "run", "--force", "--steps", "1", *TRAIN],
            "so a training cannot write", cwd=tmp_path)
    assert files_under(tmp_path) == before


def test_a_samples_link_cannot_carry_writes_out_of_the_run(images, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples").symlink_to(tmp_path / "elsewhere")
    refused(["train", str(images), "--out", "run", "--steps", "1", *TRAIN], "is not a folder", cwd=tmp_path)
    assert not list((tmp_path / "elsewhere").iterdir())


# ------------------------------------------------------------------ the log


def test_a_fifo_log_does_not_hang_a_resume(trained, tmp_path, images):
    run = _copy_run(trained, tmp_path / "run")
    (run / "log.jsonl").unlink()
    os.mkfifo(run / "log.jsonl")
    result = run_cli("train", str(images), "--out", "run", "--resume", "--steps", "3", cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "log.jsonl is not a regular file" in result.stderr
    with pytest.raises(CipsError, match="is a FIFO, not a regular training log"):  # the reader itself, directly
        list(iter_log(run / "log.jsonl"))


def test_a_log_that_is_a_folder_is_one_sentence(trained, tmp_path, images):
    run = _copy_run(trained, tmp_path / "run")
    (run / "log.jsonl").unlink()
    (run / "log.jsonl").mkdir()
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "3"], "log.jsonl is not a regular file",
            cwd=tmp_path)
    with pytest.raises(CipsError, match="is a directory, not a training log"):
        list(iter_log(run / "log.jsonl"))


HOSTILE_LINES = {
    "step as text": '{"step": "x", "d_loss": 1}',
    "step null": '{"step": null}',
    "step a list": '{"step": [1]}',
    "step a bool": '{"step": true}',
    "step infinite": '{"step": 1e400}',
    "200,000 deep": "[" * 200_000 + "]" * 200_000,
    "deep object": '{"a":' * 50_000 + "1" + "}" * 50_000,
    "an overlong line": '{"note": "' + "x" * 300_000 + '"}',
    "not utf-8": '{"step": 9, "note": "\udcff"}',
}


@pytest.mark.parametrize("line", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_hostile_log_lines_are_skipped_on_resume(trained, tmp_path, images, line):
    run = _copy_run(trained, tmp_path / "run")
    with open(run / "log.jsonl", "a", errors="surrogateescape") as log:
        log.write(line + "\n")
    result = invoke(["train", str(images), "--out", "run", "--resume", "--steps", "3"], tmp_path)
    assert result.exit_code == 0, result.output
    assert [record["step"] for record in run_summary(run / "log.jsonl")] == [1, 2, 3]
    assert all(isinstance(json.loads(text), dict) for text in (run / "log.jsonl").read_text().splitlines())


def test_a_huge_log_is_refused_without_being_read(trained, tmp_path, images):
    run = _copy_run(trained, tmp_path / "run")
    with open(run / "log.jsonl", "r+b") as log:
        log.truncate(3 << 30)  # 3 GiB, sparse: costs no disk
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "3"],
            "is 3.0 GiB, more than the 1 GiB a training log may be", cwd=tmp_path)
    assert (run / "log.jsonl").stat().st_size == 3 << 30
    with pytest.raises(CipsError, match="more than the 1 GiB"):
        run_summary(run / "log.jsonl")


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize("out", ["/proc/runs", "/sys/runs", "/proc/self/runs", "/sys/kernel/runs/a"])
def test_an_output_in_proc_or_sys_is_one_sentence(images, tmp_path, out):
    refused(["train", str(images), "--out", out, "--steps", "1", *TRAIN], "is a view of the kernel", cwd=tmp_path)


def test_a_link_into_proc_is_seen_through(images, tmp_path):
    (tmp_path / "innocent").symlink_to("/proc/self")
    refused(["train", str(images), "--out", "innocent/runs", "--steps", "1", *TRAIN], "/proc is a view of the kernel",
            cwd=tmp_path)


@pytest.mark.parametrize("out", ["/nonexistent-cips-deploy/a/b", "missing/run"])
def test_an_output_whose_folder_is_missing_is_refused_and_nothing_is_created(images, tmp_path, out):
    refused(["train", str(images), "--out", out, "--steps", "1", *TRAIN], "does not exist", cwd=tmp_path)
    assert not Path("/nonexistent-cips-deploy").exists()


def test_data_in_proc_is_refused(tmp_path):
    refused(["train", "/proc", "--out", "run", "--steps", "1", *TRAIN], "a view of the kernel", cwd=tmp_path)
    refused(["train", "/sys/kernel", "--out", "run", "--steps", "1", *TRAIN], "a view of the kernel", cwd=tmp_path)


def test_a_path_with_a_nul_byte_is_one_sentence(images, tmp_path):
    with pytest.raises(CipsError, match="is not a usable path"):
        train(TrainOptions(data=str(images), out=str(tmp_path / "a\0b"), steps=1, **SMALL))
    with pytest.raises(CipsError, match="is not a usable path"):
        train(TrainOptions(data=str(images) + "\0", out=str(tmp_path / "run"), steps=1, **SMALL))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", str(2**70)], "--seed must be at most 4,294,967,295, not 1,180,591,620,717,411,303,424."),
        (["--seed", "-1"], "--seed must be at least 0, not -1."),
        (["--batch", str(2**40)], "--batch must be at most 4,096, not 1,099,511,627,776."),
        (["--steps", "9" * 500], "--steps must be at most 1,000,000,000"),
        (["--lr", "nan"], "--lr must be a finite number, not nan."),
        (["--lr", "1e308"], "--lr must be at most 1.0, not 1e308."),
        (["--lr", "-inf"], "--lr must be greater than 0.0, not -inf."),
        (["--ema-kimg", "nan"], "--ema-kimg must be a finite number, not nan."),
        (["--pl-weight", "inf"], "--pl-weight must be at most 1000.0, not inf."),
        (["--r1-gamma", "1e999"], "--r1-gamma must be at most 100000.0"),
        (["--fov", "0"], "--fov must be greater than 0.0, not 0."),
        (["--resolution", "4096"], "--resolution must be at most 1,024, not 4,096."),
        (["--crop", "0"], "--crop must be at least 8, not 0."),
        (["--fid-every", "-3"], "--fid-every must be at least 0, not -3."),
    ],
)
def test_train_numbers_out_of_range_are_one_sentence(images, tmp_path, args, message):
    refused(["train", str(images), "--out", "run", *args], message, cwd=tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-seed", str(2**70)], "--model-seed must be at most 4,294,967,295"),
        (["--truncation", "nan"], "--truncation must be a finite number, not nan."),
        (["--truncation", "1e300"], "--truncation must be at most 100.0"),
        (["--chunk-size", "0"], "--chunk-size must be at least 1, not 0."),
        (["--memory-budget", "inf"], "--memory-budget must be at most 1048576.0, not inf."),
        (["--memory-budget", "0"], "--memory-budget must be greater than 0.0, not 0."),
    ],
)
def test_shared_render_numbers_out_of_range_are_one_sentence(tmp_path, args, message):
    refused(["render", "--preset", "tiny", "--height", "8", "-q", *args, "-o", "x.png"], message, cwd=tmp_path)


@pytest.mark.parametrize("args", [["--batch", "abc"], ["--seed", "1.5"], ["--lr", "0x10"], ["--steps", "1e3"], ["--lr", ""]])
def test_text_that_is_no_number_is_a_usage_error(images, tmp_path, args):
    result = invoke(["train", str(images), "--out", "run", *args], tmp_path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Invalid value for" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", float("nan"), "--lr must be a finite number, not nan."),
        ("ema_kimg", float("nan"), "--ema-kimg must be a finite number"),
        ("pl_weight", float("inf"), "--pl-weight must be at most"),
        ("seed", 2**70, "--seed must be at most 4,294,967,295"),
        pytest.param("seed", 10**5000, "--seed must be at most 4,294,967,295, not a 16610-bit number.", id="seed-10**5000"),
        ("batch", True, "--batch must be a whole number, not True."),
        ("batch", 16.0, "--batch must be a whole number, not 16.0."),
        ("steps", "10", "--steps must be a whole number, not '10'."),
        ("r1_interval", 0, "--r1-interval must be at least 1"),
        ("preset", None, "--preset must be text"),
    ],
)
def test_the_python_api_holds_numbers_to_the_same_rule(images, tmp_path, field, value, message):
    with pytest.raises(CipsError) as caught:
        TrainOptions(data=str(images), out=str(tmp_path / "run"), **{**SMALL, field: value})
    assert message in str(caught.value)


def test_the_number_types_accept_their_whole_range():
    assert SEED.check(0, "--seed") == 0 and SEED.check(2**32 - 1, "--seed") == 2**32 - 1
    assert SEED.check(np.uint32(7), "--seed") == 7 and whole(1, 3).check(np.int64(3), "--n") == 3
    assert real(0.0, 1.0, open_low=True).check(1, "--lr") == 1.0 and isinstance(real(0, 1).check(1, "--x"), float)
    with pytest.raises(CipsError, match="--lr must be greater than 0.0, not 0.0"):
        real(0.0, 1.0, open_low=True).check(0.0, "--lr")


def test_a_batch_beyond_memory_is_refused_before_anything_of_its_size_is_allocated(images, tmp_path, monkeypatch):
    import cips_deploy.contracts.limits as limits

    refused(["train", str(images), "--out", "run", "--resolution", "256", "--batch", "4096"],
            "A batch of 4,096 views of 256 x 256 pixels needs about", cwd=tmp_path)
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 30)  # a smaller machine: a smaller batch is refused
    refused(["train", str(images), "--out", "run", "--resolution", "256", "--batch", "64"],
            "use a smaller --batch, --crop or --resolution", cwd=tmp_path)


def test_running_out_of_memory_in_a_step_is_one_sentence(images, tmp_path, monkeypatch):
    def no_memory(self):
        raise MemoryError

    monkeypatch.setattr(loop.Trainer, "train_step", no_memory)
    with pytest.raises(CipsError, match="ran out of memory at step 1; no checkpoint of this run was written before it"):
        train(TrainOptions(data=str(images), out=str(tmp_path / "run"), steps=2, **SMALL))


# ------------------------------------------------------------------ NaN and infinite numbers


def _poison_after(step: int, poison):
    """Trainer.train_step, with ``poison(trainer)`` applied once the trainer reaches ``step``."""
    original = loop.Trainer.train_step

    def poisoned(self):
        record = original(self)
        if self.step == step:
            poison(self)
        return record

    return poisoned


POISONS = {
    "generator": lambda trainer: trainer.generator.first.linear.weight.data.fill_(float("nan")),
    "generator_ema": lambda trainer: trainer.generator_ema.first.linear.weight.data.fill_(float("inf")),
    "g_optim": lambda trainer: next(iter(trainer.g_optim.state.values()))["exp_avg"].fill_(float("nan")),
}


@pytest.mark.parametrize("part", POISONS, ids=POISONS.keys())
def test_weights_that_turn_nan_are_never_saved_as_a_good_checkpoint(images, tmp_path, monkeypatch, part):
    monkeypatch.setattr(loop.Trainer, "train_step", _poison_after(4, POISONS[part]))
    with pytest.raises(CipsError, match=rf"numbers in '{part}' became NaN or infinite at step 4; .*last good checkpoint \(step 2\)"):
        train(TrainOptions(data=str(images), out=str(tmp_path / "run"), steps=6, **SMALL))
    saved = cips_deploy.load(tmp_path / "run" / "generator.safetensors")  # refuses NaN weights itself
    assert saved.provenance["step"] == 2
    assert torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)["step"] == 2


def test_divergence_before_the_first_checkpoint_names_no_checkpoint(images, tmp_path, monkeypatch):
    monkeypatch.setattr(loop.Trainer, "train_step", _poison_after(1, POISONS["generator"]))  # as --lr 1e20 did
    with pytest.raises(CipsError) as caught:
        train(TrainOptions(data=str(images), out=str(tmp_path / "run"), steps=4, **{**SMALL, "checkpoint_every": 100}))
    message = str(caught.value)
    assert "no checkpoint of this run was written before it" in message and "last good" not in message
    assert not (tmp_path / "run" / STATE_FILE).exists() and not (tmp_path / "run" / "generator.safetensors").exists()


def test_divergence_after_a_resume_names_the_resumed_checkpoint(trained, images, tmp_path, monkeypatch):
    run = _copy_run(trained, tmp_path / "run")
    monkeypatch.setattr(loop.Trainer, "train_step", _poison_after(3, POISONS["generator"]))
    with pytest.raises(CipsError, match=r"at step 4; training stopped and the last good checkpoint \(step 2\)"):
        train(TrainOptions(data=str(images), out=str(run), steps=4, **SMALL), resume=True)


NAN_STATES = {
    "generator": lambda state: state["generator"][next(iter(state["generator"]))].fill_(float("nan")),
    "g_optim": lambda state: next(iter(state["g_optim"]["state"].values()))["exp_avg_sq"].fill_(float("inf")),
    "d_optim": lambda state: state["d_optim"]["param_groups"][0].update(lr=float("nan")),
    "pl_mean": lambda state: state.update(pl_mean=torch.tensor(float("nan"))),
}


@pytest.mark.parametrize("part", NAN_STATES, ids=NAN_STATES.keys())
def test_a_training_state_holding_nan_is_refused_at_resume(trained, images, tmp_path, part):
    run = _copy_run(trained, tmp_path / "run")
    state = torch.load(run / STATE_FILE, weights_only=True)
    NAN_STATES[part](state)
    torch.save(state, run / STATE_FILE)
    before = _contents(run)
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "4"],
            f"its '{part}' holds NaN or infinite numbers, so it is damaged", cwd=tmp_path)
    assert _contents(run) == before


def test_a_deeply_nested_training_state_is_one_sentence(trained, images, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    state = torch.load(run / STATE_FILE, weights_only=True)
    nested: list = []
    for _ in range(100):
        nested = [nested]
    state["g_optim"]["nested"] = nested
    torch.save(state, run / STATE_FILE)
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "4"],
            "it nests containers deeper than 100 levels", cwd=tmp_path)  # the pickle check, before torch unpickles


# ------------------------------------------------------------------ images


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


@pytest.mark.parametrize("shape", [(1, 2_000_000), (2_000_000, 1)], ids=["wide", "tall"])
@pytest.mark.parametrize("resolution, keep_aspect", [(16, False), (64, False), (64, True)], ids=["16", "64", "cylinder-64"])
def test_an_extreme_aspect_ratio_is_refused_from_the_header(tmp_path, shape, resolution, keep_aspect):
    Image.fromarray(np.zeros((*shape, 3), dtype=np.uint8)).save(tmp_path / "extreme.png")  # a few KB
    Image.fromarray(np.full((20, 20, 3), 99, dtype=np.uint8)).save(tmp_path / "good.png")
    current, peak = _current_rss(), _peak_rss()
    dataset = load_images(tmp_path, resolution, keep_aspect=keep_aspect)
    assert dataset.skipped == ["extreme.png"] and len(dataset) == 1
    assert _peak_rss() <= max(peak, current + (64 << 20))


def test_a_strip_too_long_for_cylinder_training_is_skipped_but_a_square_crop_of_it_is_fine(tmp_path):
    Image.fromarray(np.zeros((1, 60_000, 3), dtype=np.uint8)).save(tmp_path / "strip.png")  # within the side limit
    Image.fromarray(np.full((20, 90, 3), 99, dtype=np.uint8)).save(tmp_path / "good.png")
    cylinder = load_images(tmp_path, 64, keep_aspect=True)
    assert cylinder.skipped == ["strip.png"] and cylinder.images[0].shape == (3, 64, 288)  # 64 x 3.84 million: too many
    square = load_images(tmp_path, 64)  # the square mode resamples only the centre box of it
    assert square.skipped == [] and [image.shape for image in square.images] == [(3, 64, 64)] * 2


def test_ordinary_images_keep_the_pixels_of_resize_then_crop(tmp_path):
    rng = np.random.default_rng(1)
    for index, (height, width) in enumerate([(24, 40), (40, 24), (31, 97), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    for resolution in (16, 32):
        for index, tensor in enumerate(load_images(tmp_path, resolution).images):
            with Image.open(tmp_path / f"{index}.png") as image:
                scale = resolution / min(image.size)
                size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
                resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
                left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
                old = np.asarray(resized.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
            new = (tensor.permute(1, 2, 0).numpy() + 1.0) * 127.5
            assert np.abs(new - old).max() <= 1e-3  # the same pixels as before the size checks


# ------------------------------------------------------------------ resume reads the run's options


def test_resume_takes_resolution_and_batch_from_the_run(trained, images, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    result = invoke(["train", str(images), "--out", "run", "--resume", "--steps", "3"], tmp_path)
    assert result.exit_code == 0, result.output
    generator = cips_deploy.load(run / "generator.safetensors")
    assert generator.provenance["step"] == 3 and generator.config.size == 16
    assert generator.provenance["options"]["batch"] == 2 and generator.provenance["options"]["resolution"] == 16


def test_resume_without_steps_continues_to_the_runs_own_target(trained, images, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    result = invoke(["train", str(images), "--out", "run", "--resume"], tmp_path)
    assert result.exit_code == 0, result.output
    assert torch.load(run / STATE_FILE, weights_only=True)["step"] == 2  # it had finished: nothing to do


@pytest.mark.parametrize("args, message", [(["--batch", "4"], "started with batch=2, not 4"),
                                            (["--resolution", "32"], "started with resolution=16, not 32")])
def test_resume_with_an_option_that_contradicts_the_run_is_refused(trained, images, tmp_path, args, message):
    _copy_run(trained, tmp_path / "run")
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "3", *args], message, cwd=tmp_path)


def test_resume_refuses_unusable_saved_options(trained, images, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    state = torch.load(run / STATE_FILE, weights_only=True)
    options = json.loads(state["options"])
    state["options"] = json.dumps({**options, "batch": 2**40})
    torch.save(state, run / STATE_FILE)
    refused(["train", str(images), "--out", "run", "--resume", "--steps", "3"],
            "the options saved in the run are unusable (--batch must be at most 4,096", cwd=tmp_path)


# ------------------------------------------------------------------ seed lists


@pytest.mark.parametrize(
    "seeds, limit, message",
    [
        ("0-99999", 256, "--seeds lists 100,000 seeds; a grid takes at most 256."),
        ("0-255,300-301", 256, "--seeds lists 258 seeds"),
        ("0-4294967295", 100_000, "--seeds lists 4,294,967,296 seeds; a grid takes at most 100,000."),
        ("4294967296", 256, "--seeds names seed 4294967296, but seeds go from 0 to 2**32 - 1."),
        ("0-" + "9" * 5000, 256, "--seeds names seed 99999999999999999999"),
        ("-1", 256, "--seeds takes seeds and ranges"),
        ("3-1", 256, "its end comes before its start"),
    ],
)
def test_seed_lists_are_counted_before_they_are_expanded(seeds, limit, message):
    with pytest.raises(CipsError) as caught:
        parse_seeds(None, seeds, limit)
    assert message in str(caught.value)


def test_seed_lists_within_the_limits_and_the_render_command(tmp_path):
    assert parse_seeds(None, "4294967294-4294967295,0") == [4294967294, 4294967295, 0]
    assert len(parse_seeds(None, "0-255")) == 256
    with pytest.raises(CipsError, match="--seed must be at most"):
        parse_seeds(2**32, None)
    refused(["render", "--preset", "tiny", "--height", "8", "--seeds", "0-99999", "-o", "grid.png"],
            "--seeds lists 100,000 seeds; a grid takes at most 256.", cwd=tmp_path)
