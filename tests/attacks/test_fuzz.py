"""Fuzz tests of the checkpoint reader and the config parser (hypothesis, bounded for CI).

The property: any input gives either a generator (a config) or a CipsError, never another
exception; and no single load raises the process's peak resident memory more than
MEMORY_BOUND above where it started. Time is bounded per example by hypothesis's deadline and
per run by max_examples. derandomize=True: CI explores the same inputs on every run.
"""

from __future__ import annotations

import json
import os
import resource
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cips_deploy
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.model_size import check_model_size

MEMORY_BOUND = 512 << 20  # bytes one load may add to the process's resident memory
FUZZ = settings(
    # CIPS_FUZZ_EXAMPLES=5000 CIPS_FUZZ_RANDOM=1 explores deeper and differently on a workstation.
    max_examples=int(os.environ.get("CIPS_FUZZ_EXAMPLES", "60")),
    deadline=10_000,  # ms per example: far above the few ms a refusal takes, far below a hang
    derandomize=not os.environ.get("CIPS_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# Values a hostile JSON config may hold: every JSON type, the special floats, huge integers, nesting.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2, 4, 8, 16, 64, 2**31, 2**40])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["skip", "res", "ne", "creps", "plane", "cylinder"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
FIELDS = ["arch", "size", "hidden", "style_dim", "n_mlp", "widths", "coordinate_space", "lr_mlp", "line_rank"]
configs = st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), json_values, max_size=9)
small_valid_configs = st.fixed_dictionaries(
    {
        "arch": st.sampled_from(["skip", "res", "ne", "creps"]),
        "size": st.sampled_from([4, 8, 16]),
        "hidden": st.sampled_from([4, 8]),
        "style_dim": st.sampled_from([4, 8]),
        "n_mlp": st.integers(0, 3),
        "widths": st.lists(st.sampled_from([4, 8]), min_size=1, max_size=3),
        "coordinate_space": st.sampled_from(["plane", "cylinder"]),
    }
)


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _parse(config: dict) -> None:
    try:
        parsed = GeneratorConfig.from_dict(config)
    except CipsError:
        return
    count = check_model_size(parsed)  # from the meta device: allocates nothing
    if count < 200_000:
        cips_deploy.Generator(parsed)  # small enough to build for real: it must build


@FUZZ
@given(config=configs | small_valid_configs)
def test_config_parser_gives_a_config_or_a_cips_error(config):
    try:
        _parse(config)
    except CipsError:
        pass


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory, official_dir):
    """Valid inputs to mutate: our safetensors format and an official torch zip."""
    folder = tmp_path_factory.mktemp("seeds")
    ours = folder / "ours.safetensors"
    cips_deploy.create("tiny", size=8, seed=0).save(ours)
    official = folder / "official.pt"  # the g_ema alone: a third of the training checkpoint's bytes
    g_ema = torch.load(official_dir / "cipsskip_s8.pt", weights_only=True)["g_ema"]
    torch.save(g_ema, official)
    legacy = folder / "legacy.pt"  # torch's pre-zip stream: storage sizes are declared inline
    torch.save(g_ema, legacy, _use_new_zipfile_serialization=False)
    return {"safetensors": ours.read_bytes(), "official": official.read_bytes(), "legacy": legacy.read_bytes()}


@st.composite
def mutations(draw, seeds):
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "header length", "splice", "config"]))
        if kind == "flip" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "header length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        elif kind == "splice":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(max_size=64))
        elif kind == "config":
            data = bytearray(_with_config(bytes(data), draw(configs)))
    return bytes(data)


def _with_config(data: bytes, config: dict) -> bytes:
    """``data`` with its safetensors metadata config replaced (unchanged if it is no safetensors file)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        header["__metadata__"]["config"] = json.dumps(config, allow_nan=True)
    except Exception:
        return data
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def test_checkpoint_reader_gives_a_generator_or_a_cips_error(seed_files, tmp_path):
    counter = iter(range(10**9))

    @FUZZ
    @given(data=mutations(seed_files))
    def check(data):
        for suffix in (".safetensors", ".pt"):  # the suffix must not change what a file is taken for
            path = tmp_path / f"fuzz-{next(counter)}{suffix}"
            path.write_bytes(data)
            current, peak = _current_rss(), _peak_rss()
            try:
                generator = cips_deploy.load(path)
            except CipsError:
                pass
            else:
                assert isinstance(generator, cips_deploy.Generator)
            finally:
                path.unlink()
            # A new peak more than MEMORY_BOUND above where this load started: this load took it.
            assert _peak_rss() <= max(peak, current + MEMORY_BOUND), f"{data[:16]!r} took too much memory"

    check()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the command line (issue 26)
#
# The property, for any numbers and paths on the command line, mutated checkpoints and mutated
# training states: exit status 0, 1 or 2 (click's usage errors) only; never a traceback; nothing
# written outside the destination; no existing file changed without --force. Training itself is
# replaced by a stub (its numbers, paths, data and state are checked before it starts; the loop
# has its own tests), so each example costs a parse and a model build, not a training.

CLI_FUZZ = settings(
    max_examples=int(os.environ.get("CIPS_FUZZ_CLI_EXAMPLES", "25")),
    deadline=None,  # a model build can take a second on a loaded CI machine; the run is bounded by max_examples
    derandomize=not os.environ.get("CIPS_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
TRAIN_ARGS = ["--resolution", "16", "--batch", "2", "--steps", "2", "--checkpoint-every", "2", "--sample-every", "1000"]
TRAIN_NUMBERS = ["--resolution", "--batch", "--steps", "--seed", "--crop", "--fov", "--lr", "--r1-gamma", "--pl-weight",
                 "--ema-kimg", "--checkpoint-every", "--sample-every", "--fid-every"]
RENDER_NUMBERS = ["--model-seed", "--truncation", "--chunk-size", "--memory-budget"]
number_texts = (
    st.integers(-(2**80), 2**80).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["nan", "-nan", "inf", "-inf", "1e308", "1e-320", "-0", "0", "1", "2", "8", "16", "0.5", "abc", "",
                       " ", "0x10", "1e3", "1_000", "9" * 400, "4294967295", "4294967296", "-1", "2**70"])
)
OUT_PATHS = ["fresh", "old-run", "missing/run", "/proc/runs", "/sys/runs", "/nonexistent-cips-fuzz/a/b", "file.txt",
             "link-to-proc/runs", "x" * 300, "", "fifo"]
DATA_PATHS = ["images", "/proc", "/sys/kernel", "/dev/zero", "fifo", "missing", "file.txt", "bad.zip", "extreme", "old-run"]


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Everything under ``folder``, without following links: a file's bytes, else its kind."""
    found: dict[str, bytes | str] = {}
    for path in folder.rglob("*"):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = "link:" + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "folder" if path.is_dir() else "special"
    return found


def _run_in(folder: Path, args: list[str]):
    from click.testing import CliRunner

    from cips_deploy.cli import cli

    previous = os.getcwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(previous)


def _assert_clean_exit(result, args) -> None:
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)


def _assert_only_destination_changed(before: dict, after: dict, destinations: set[str], force: bool) -> None:
    """Nothing outside ``destinations`` (paths relative to the working folder, and what is under
    them) was created, removed or changed; inside them, without ``force``, nothing that
    existed before changed or went away (new files may appear)."""
    def outside(name: str) -> bool:
        return not any(name == each or name.startswith(each + "/") for each in destinations)

    assert {k: v for k, v in after.items() if outside(k)} == {k: v for k, v in before.items() if outside(k)}
    if not force:
        changed = [name for name, value in before.items() if not outside(name) and after.get(name) != value]
        assert not changed, changed


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """A working folder with training images, an earlier run, a FIFO, odd data sets and a link into /proc."""
    import numpy as np
    from PIL import Image

    from cips_deploy.train import TrainOptions, train

    world = tmp_path_factory.mktemp("cli-world")
    (world / "images").mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(world / "images" / f"{index}.png")
    (world / "extreme").mkdir()
    Image.fromarray(np.zeros((1, 2_000_000, 3), dtype=np.uint8)).save(world / "extreme" / "wide.png")
    train(TrainOptions(data=str(world / "images"), out=str(world / "old-run"), preset="tiny", resolution=16, batch=2,
                       steps=2, checkpoint_every=2, sample_every=4))
    (world / "file.txt").write_text("the user's file")
    (world / "bad.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an end-of-archive record and nothing else
    os.mkfifo(world / "fifo")
    (world / "link-to-proc").symlink_to("/proc/self")
    return world


@pytest.fixture()
def no_training(monkeypatch):
    """Trainer.run does nothing: every check before the first step still runs for real."""
    from cips_deploy.train import loop

    monkeypatch.setattr(loop.Trainer, "run", lambda self: None)


def test_cli_numbers_and_paths_of_train_end_in_one_sentence(cli_world, no_training):
    counter = iter(range(10**9))

    @CLI_FUZZ
    @given(
        option=st.sampled_from(TRAIN_NUMBERS), value=number_texts, out=st.sampled_from(OUT_PATHS),
        data=st.sampled_from(DATA_PATHS), resume=st.booleans(), force=st.booleans(),
    )
    def check(option, value, out, data, resume, force):
        import shutil

        number = next(counter)
        if out == "fresh":
            out = f"fresh-{number}"
        elif out == "old-run":  # a copy: --force may replace what the earlier run wrote
            out = f"old-run-{number}"
            shutil.copytree(cli_world / "old-run", cli_world / out)
        args = ["train", data, "--out", out, *TRAIN_ARGS, option, value] + ["--resume"] * resume + ["--force"] * force
        before = _snapshot(cli_world)
        result = _run_in(cli_world, args)
        _assert_clean_exit(result, args)
        _assert_only_destination_changed(before, _snapshot(cli_world), {out}, force and not resume)
        for path in ("/nonexistent-cips-fuzz", "/proc/runs", "/sys/runs"):
            assert not os.path.lexists(path)

    check()


def test_cli_numbers_of_render_end_in_one_sentence(tmp_path):
    counter = iter(range(10**9))
    (tmp_path / "keep.png").write_bytes(b"the user's picture")

    @CLI_FUZZ
    @given(option=st.sampled_from(RENDER_NUMBERS), value=number_texts, existing=st.booleans())
    def check(option, value, existing):
        output = "keep.png" if existing else f"out-{next(counter)}.png"
        args = ["render", "--preset", "tiny", "--height", "8", "-q", option, value, "-o", output]
        before = _snapshot(tmp_path)
        result = _run_in(tmp_path, args)
        _assert_clean_exit(result, args)
        _assert_only_destination_changed(before, _snapshot(tmp_path), {output}, force=False)

    check()


def test_cli_render_of_mutated_checkpoints_ends_in_one_sentence(seed_files, tmp_path):
    counter = iter(range(10**9))

    @CLI_FUZZ
    @given(data=mutations(seed_files), suffix=st.sampled_from([".safetensors", ".pt"]))
    def check(data, suffix):
        model = tmp_path / f"model{suffix}"
        model.write_bytes(data)
        output = f"out-{next(counter)}.png"
        args = ["render", "--checkpoint", model.name, "--height", "8", "-q", "-o", output]
        before = _snapshot(tmp_path)
        result = _run_in(tmp_path, args)
        _assert_clean_exit(result, args)
        _assert_only_destination_changed(before, _snapshot(tmp_path), {output}, force=False)
        model.unlink()

    check()


@st.composite
def state_mutations(draw, state: dict):
    """A training state with its options, step or bytes damaged."""
    import io

    state = dict(state)
    kind = draw(st.sampled_from(["options", "option field", "step", "bytes"]))
    if kind == "options":
        state["options"] = draw(st.text(max_size=40) | json_values.map(lambda value: json.dumps(value, allow_nan=True)))
    elif kind == "option field":
        options = json.loads(state["options"])
        options[draw(st.sampled_from(sorted(options)))] = draw(json_values)
        state["options"] = json.dumps(options, allow_nan=True)
    elif kind == "step":
        state["step"] = draw(json_values)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = bytearray(buffer.getvalue())
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                data = data[: draw(st.integers(0, len(data)))]
            elif data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def test_cli_resume_of_mutated_training_states_ends_in_one_sentence(cli_world, no_training, tmp_path):
    import shutil

    state = torch.load(cli_world / "old-run" / "training-state.pt", weights_only=True)

    @CLI_FUZZ
    @given(data=state_mutations(state), explicit=st.booleans())
    def check(data, explicit):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(cli_world / "old-run", run)
        (run / "training-state.pt").write_bytes(data)
        args = ["train", str(cli_world / "images"), "--out", "run", "--resume"] + (TRAIN_ARGS if explicit else [])
        before = _snapshot(tmp_path)
        result = _run_in(tmp_path, args)
        _assert_clean_exit(result, args)
        if result.exit_code != 0:  # a refused resume changes nothing; an accepted one rewrites its log
            assert _snapshot(tmp_path) == before

    check()
