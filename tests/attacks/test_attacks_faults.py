"""Attack family: faults and odd requests. A full disk (export, training checkpoint, log),
a damaged or foreign resume state, a torn log line, a second training into the same folder,
options given twice: each ends in one sentence (or, for the torn line, simply works), and
no partial file stays behind."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import cips_deploy
from cips_deploy.train import TrainOptions, train
from cips_deploy.runtime.atomic import MARKER as OUTPUT_MARKER
from cips_deploy.train.loop import LOCK_FILE, STATE_FILE, lock_run, run_summary

from ..helpers.attack_tools import files_under, refused

TRAIN = ["--resolution", "16", "--batch", "2", "--checkpoint-every", "2", "--sample-every", "1000"]


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """A finished two-step run to resume from (copied per test)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainOptions(data=str(images), out=str(out), preset="tiny", resolution=16, batch=2, steps=2,
                       checkpoint_every=2, sample_every=1000))
    return out


def _copy_run(source, destination):
    destination.mkdir()
    for file in source.iterdir():
        if file.is_file():
            (destination / file.name).write_bytes(file.read_bytes())
    return destination


def _disk_full(monkeypatch):
    """The file system reports no space left (statvfs), as it does when a write has just failed."""
    real = os.statvfs

    class Full:
        def __init__(self, path):
            facts = real(path)
            self.f_frsize, self.f_bavail = facts.f_frsize, 0

    monkeypatch.setattr(os, "statvfs", Full)


def test_a_backend_option_named_device_is_one_sentence(tmp_path):
    refused(["render", "--preset", "tiny", "--height", "8", "--backend-option", "device=cpu", "-o", "x.png"],
            "The device is not a backend option", cwd=tmp_path)


def test_bench_refuses_negative_threads(tmp_path):
    refused(["bench", "--preset", "tiny", "--threads", "-1"], "--threads must be at least 0, not -1.", cwd=tmp_path)


@pytest.mark.parametrize("how", ["ENOSPC from the writer", "RuntimeError from the exporter on a full disk"])
def test_a_full_disk_during_export_is_one_sentence_and_leaves_nothing(tmp_path, monkeypatch, how):
    cips_deploy.create("tiny").save(tmp_path / "model.safetensors")
    if how.startswith("ENOSPC"):
        import onnx

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(onnx, "save_model", no_space)
    else:
        def export_fails(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 0")

        monkeypatch.setattr(torch.onnx, "export", export_fails)
        _disk_full(monkeypatch)
    refused(["export", "model.safetensors", "--engine", "onnx", "-o", "model.onnx"],
            "Cannot write model.onnx: the disk is full.", cwd=tmp_path)


def test_a_full_disk_during_a_training_checkpoint_is_one_sentence(images, tmp_path, monkeypatch):
    def save_fails(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/3")

    monkeypatch.setattr(torch, "save", save_fails)
    _disk_full(monkeypatch)
    line = refused(["train", str(images), "--out", "run", "--steps", "2", *TRAIN], "the disk is full", cwd=tmp_path,
                   expect_written={"run", "run/log.jsonl", f"run/{LOCK_FILE}", f"run/{OUTPUT_MARKER}"}, progress=True)
    assert STATE_FILE in line
    assert not [name for name in files_under(tmp_path) if name.endswith(".partial")]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda state: {}, "it holds no 'step', so it is not a training state"),
        (lambda state: {**state, "options": "{not json"}, "is not valid JSON"),
        (lambda state: {**state, "options": "[" * 5000 + "]" * 5000}, "nests deeper than 32 levels"),
        (lambda state: {**state, "step": "two"}, "its step 'two' is not a whole number"),
        (lambda state: {**state, "step": 10**6}, "is not a whole number from 0 to --steps"),
        (
            lambda state: {**state, "generator": {k: v[..., :1] for k, v in state["generator"].items()}},
            "its saved weights do not fit this run",
        ),
        (lambda state: {**state, "d_optim": {"state": 5}}, "its saved weights do not fit this run"),
    ],
)
def test_a_bad_resume_state_is_one_sentence(images, trained, tmp_path, damage, message):
    run = _copy_run(trained, tmp_path / "run")
    state = torch.load(run / STATE_FILE, weights_only=True)
    torch.save(damage(state), run / STATE_FILE)
    before = {name: (run / name).read_bytes() for name in ("generator.safetensors", "log.jsonl")}
    refused(["train", str(images), "--out", "run", "--steps", "4", "--resume", *TRAIN], message, cwd=tmp_path)
    assert {name: (run / name).read_bytes() for name in before} == before


def test_a_torn_last_log_line_does_not_stop_a_resume(images, trained, tmp_path):
    run = _copy_run(trained, tmp_path / "run")
    with open(run / "log.jsonl", "a") as log:
        log.write('{"step": 3, "d_loss": 0.6')  # a crash (or a full disk) in the middle of an append
    train(TrainOptions(data=str(images), out=str(run), preset="tiny", resolution=16, batch=2, steps=3,
                       checkpoint_every=2, sample_every=1000), resume=True)
    assert [record["step"] for record in run_summary(run / "log.jsonl")] == [1, 2, 3]
    assert all(json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())


def test_a_second_training_into_the_same_folder_is_refused(images, tmp_path):
    (tmp_path / "run").mkdir()
    holder = lock_run(tmp_path / "run")  # as a running training holds it
    try:
        refused(["train", str(images), "--out", "run", "--steps", "2", *TRAIN],
                "Another training is running in run; wait for it to finish or choose another --out.", cwd=tmp_path)
        refused(["train", str(images), "--out", "run", "--steps", "2", "--resume", *TRAIN],
                "Another training is running in run", cwd=tmp_path)
    finally:
        holder.close()
    assert sorted(files_under(tmp_path)) == ["run", f"run/{LOCK_FILE}"]
