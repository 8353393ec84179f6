"""The files of a run folder, read with limits and replaced only when the user says so.

A run folder holds what a training writes (:data:`RUN_FILES`, ``samples/step-*.png``) and
perhaps the user's own files. This module is the one place that reads the log and the
training state back, and that decides what an earlier run's files mean for a new one:

- the log and the state are read only from regular files (a FIFO would block the reader
  forever, a device may never end, a folder is a mistake), checked from the descriptor's
  ``fstat`` after an ``O_NONBLOCK`` open, so a file swapped after the check is caught too;
- the log is streamed line by line (at most :data:`MAX_LOG_BYTES` in all and
  :data:`MAX_LOG_LINE` a line; JSON nested deeper than ``MAX_JSON_DEPTH`` is skipped like a
  torn line), never read whole;
- the state is a torch zip checked for its declared size, loaded with ``weights_only``,
  walked with a depth and size cap, and refused if any number in it is NaN or infinite;
- a new run refuses a folder that holds an earlier run's files unless ``--force``, which
  removes exactly those files and keeps everything else, and only in a folder a training
  marked as its own (:data:`RUN_MARKER_TEXT`, through the one output guard of
  :mod:`cips_deploy.runtime.atomic`): files of those names that the user put in a folder of
  their own are never removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

from cips_deploy.contracts.limits import (
    PickleRefused,
    check_torch_stream,
    check_zip_declared_size,
    json_depth_ok,
    parse_json,
    regular_file,
)
from cips_deploy.errors import CipsError
from cips_deploy.families.official import check_tensors
from cips_deploy.runtime.atomic import MARKER, guard_owned, marker_problem, write_marker

STATE_FILE = "training-state.pt"
GENERATOR_FILE = "generator.safetensors"
LOG_FILE = "log.jsonl"
LOCK_FILE = ".train.lock"
SAMPLES = "samples"
RUN_FILES = (STATE_FILE, GENERATOR_FILE, LOG_FILE)  # what a training writes at the top of its folder
SAMPLE_NAME = re.compile(r"step-[0-9]{7,}\.png")  # what it writes under samples/
RESUME_KEYS = ("step", "options", "generator", "generator_ema", "discriminator", "g_optim", "d_optim")
WEIGHT_KEYS = ("generator", "generator_ema", "discriminator", "g_optim", "d_optim", "pl_mean")

MAX_LOG_BYTES = 1 << 30  # a log line is about 200 bytes: five million steps
MAX_LOG_LINE = 1 << 16  # our lines are a few hundred bytes; a longer one is not ours
MAX_STATE_DEPTH = 8  # an optimizer's state is three levels deep
MAX_STATE_ITEMS = 1 << 22  # containers and values walked in one state
# The run folder's owner marker (atomic.MARKER): written with the first log line of a run, so
# that a later --force knows a training wrote the run files it finds there.
RUN_MARKER_TEXT = "This folder holds a cips-deploy training run; train --force replaces the files a training writes here, and only those.\n"


# ------------------------------------------------------------------------------ reading


@contextlib.contextmanager
def open_regular(path: Path, what: str, max_bytes: int | None = None) -> Iterator[BinaryIO]:
    """``path`` open for binary reading if it is a regular file of at most ``max_bytes``.

    ``stat`` first (a device is never opened), then an ``O_NONBLOCK`` open (a FIFO put in its
    place meanwhile does not block) whose ``fstat`` is checked again.
    """
    regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise CipsError(f"Cannot read {what} {path}: {error.strerror or error}.") from None
    handle = os.fdopen(fd, "rb")
    with handle:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode):
            raise CipsError(f"{path} is not a regular file, so it is no {what}.")
        if max_bytes is not None and facts.st_size > max_bytes:
            raise CipsError(
                f"{path} is {facts.st_size / 2**30:,.1f} GiB, more than the {max_bytes / 2**30:,.0f} GiB a {what} may be; "
                "move it away to go on."
            )
        yield handle


def iter_log(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(line, record) for every line of a log.jsonl that is a JSON object, streamed.

    A line that does not decode (the last one torn by a crash or a full disk during an
    append), is longer than MAX_LOG_LINE or nests too deeply is skipped: the records before
    it are intact, and a resume runs its step again.
    """
    with open_regular(path, "training log", MAX_LOG_BYTES) as handle:
        while True:
            line = handle.readline(MAX_LOG_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LOG_LINE:  # skip the rest of an overlong line, a piece at a time
                while line and not line.endswith(b"\n"):
                    line = handle.readline(MAX_LOG_LINE + 1)
                continue
            text = line.decode("utf-8", errors="replace").rstrip("\r\n")
            record = _record(text)
            if record is not None:
                yield text, record


def check_log(path: Path) -> None:
    """Refuse, before a resume does any work, a log it could not read (see :func:`iter_log`)."""
    if os.path.lexists(path):
        with open_regular(path, "training log", MAX_LOG_BYTES):
            pass


def _record(text: str) -> dict[str, Any] | None:
    if not json_depth_ok(text):
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def whole_step(record: dict[str, Any]) -> int | None:
    """A record's step if it is a whole number (never a string, null, a list or a bool)."""
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def read_training_state(path: Path) -> dict[str, Any]:
    """The training state at ``path``, checked: a regular file, a zip whose declared content
    fits, tensors and plain containers only, every key a resume needs, a whole-number step,
    options that are a JSON object, and no NaN or infinite number anywhere."""
    if not path.exists():
        raise CipsError(f"Nothing to resume: {path} does not exist.")
    regular_file(path, "training state")
    check_zip_declared_size(path, "training state")
    with open_regular(path, "training state") as handle:
        try:  # the official-pickle guards: deep or shared structures, bombs, before torch unpickles
            check_torch_stream(handle)
        except PickleRefused as refused:
            raise CipsError(refused.sentence(path)) from None
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged state file is user input, not a bug
            raise CipsError(f"Cannot resume from {path}: it is damaged ({type(error).__name__}).") from None
    check_tensors(state, str(path))  # no stride-0 views standing for billions of values
    missing = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CipsError(f"Cannot resume from {path}: it holds no {missing[0]!r}, so it is not a training state.")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CipsError(f"Cannot resume from {path}: its step {step!r:.40} is not a whole number from 0 to --steps.")
    saved = parse_json(state["options"], f"The options saved in {path}")
    if not isinstance(saved, dict):
        raise CipsError(f"Cannot resume from {path}: its saved options are not a JSON object.")
    bad = non_finite_part(state, f"Cannot resume from {path}")
    if bad is not None:
        raise CipsError(f"Cannot resume from {path}: its {bad!r} holds NaN or infinite numbers, so it is damaged.")
    return {**state, "options": saved}


def non_finite_part(state: dict[str, Any], context: str) -> str | None:
    """The first of :data:`WEIGHT_KEYS` in ``state`` that holds a NaN or infinite number
    (tensor or float), else None. Walked without recursion, with a depth and a size cap."""
    for key in WEIGHT_KEYS:
        pending, seen = [(state.get(key), 0)], 0
        while pending:
            value, depth = pending.pop()
            seen += 1
            if depth > MAX_STATE_DEPTH or seen > MAX_STATE_ITEMS:
                raise CipsError(f"{context}: its {key!r} is nested deeper or holds more than a training state does.")
            if isinstance(value, torch.Tensor):
                if not _finite_tensor(value):
                    return key
            elif isinstance(value, float):
                if not math.isfinite(value):
                    return key
            elif isinstance(value, dict):
                pending.extend((item, depth + 1) for item in value.values())
            elif isinstance(value, (list, tuple)):
                pending.extend((item, depth + 1) for item in value)
    return None


def _finite_tensor(tensor: torch.Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    try:
        return bool(torch.isfinite(tensor).all())
    except (RuntimeError, TypeError, NotImplementedError):  # a layout isfinite cannot read: not ours
        return False


# ------------------------------------------------------------------------------ writing


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a full disk reads as one sentence (the line may be torn: readers skip it).

    Opened ``O_NONBLOCK`` and checked from ``fstat``: a FIFO or a device put in the log's
    place is refused instead of blocking the run or writing into the device."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ENXIO:  # O_NONBLOCK on a FIFO that nobody reads
            raise CipsError(f"Cannot write {path}: it is a FIFO, not a regular file.") from None
        if error.errno == errno.ELOOP:  # O_NOFOLLOW: a link would carry the log out of the run folder
            raise CipsError(f"Cannot write {path}: it is a symbolic link, not a regular file.") from None
        raise _write_error(path, error) from None
    with os.fdopen(fd, "a") as log:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CipsError(f"Cannot write {path}: it is not a regular file.")
        try:
            log.write(json.dumps(record) + "\n")
            log.flush()
        except OSError as error:
            raise _write_error(path, error) from None
    mark_run_folder(Path(path).parent)


def mark_run_folder(out: Path) -> None:
    """Write the run folder's owner marker unless one is there: a training now wrote files in it.

    A marker that is there but not ours (another text, a link, a folder) is left as it is, so
    a later ``--force`` still refuses: only the user can say what that folder holds."""
    if os.path.lexists(out / MARKER):
        return
    try:
        write_marker(out, RUN_MARKER_TEXT)
    except OSError as error:
        raise _write_error(out / MARKER, error) from None


def _write_error(path: Path, error: OSError) -> CipsError:
    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return CipsError(f"Cannot write {path}: {reason}.")


# ------------------------------------------------------------------------------ an earlier run


def earlier_run_files(out: Path) -> list[Path]:
    """What an earlier training left in ``out``: its state, generator, log and sample grids."""
    found = [out / name for name in RUN_FILES if os.path.lexists(out / name)]
    samples = out / SAMPLES
    if samples.is_dir() and not samples.is_symlink():
        found += sorted(path for path in samples.iterdir() if SAMPLE_NAME.fullmatch(path.name))
    return found


def check_run_folder(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse, before any work, a run folder this training must not or cannot write.

    A new run (no ``resume``) into a folder holding an earlier run's files needs ``force``;
    whatever a training writes must be a regular file (or, for ``samples``, a folder) so
    that writing it never fails half way or writes through a FIFO, a device or a folder.
    """
    if not out.is_dir():
        return
    for path in [out / name for name in RUN_FILES] + [out / SAMPLES]:
        if not os.path.lexists(path):
            continue
        if path.name == SAMPLES:  # never a link: the sample grids would be written wherever it points
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise CipsError(f"{path} is not a folder, so a training cannot write its samples there; move it away or choose another --out.")
            continue
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0  # a dangling link
        if not stat.S_ISREG(mode):
            raise CipsError(f"{path} is not a regular file, so a training cannot write it; move it away or choose another --out.")
    if resume:
        return
    if force:
        check_run_owned(out)
        return
    found = earlier_run_files(out)
    if any(path.name == STATE_FILE for path in found):
        raise CipsError(
            f"{out} already holds a training run; pass --resume to continue it, --force to start it over, "
            "or choose another --out."
        )
    if found:
        raise CipsError(
            f"{out} already holds {found[0].relative_to(out)} from an earlier training; pass --force to replace the "
            "files a training writes, or choose another --out."
        )


def check_run_owned(out: Path) -> None:
    """With ``--force``, refuse a folder holding run files that no training marked as its own:
    the one output guard (:func:`~cips_deploy.runtime.atomic.guard_owned`), whose owner for a
    run file is the run folder's marker."""
    if out.is_dir():
        guard_owned(earlier_run_files(out), overwrite=True, owner=lambda path: _run_owner(out),
                    advice="move those files away or choose another --out")


def _run_owner(out: Path) -> str | None:
    problem = marker_problem(out, RUN_MARKER_TEXT)
    if problem is None:
        return None
    if "holds no" in problem:
        return f"{out} holds no {MARKER} marker of a training run"
    return f"the {MARKER} in {out} is not a training run's marker"


def clear_earlier_run(out: Path) -> list[Path]:
    """Remove what an earlier training wrote in ``out`` (``--force``), nothing else; returns it.

    Called once the new run has checked its options and read its data, just before its first
    step: a refused run leaves the earlier one as it was."""
    removed = earlier_run_files(out)
    for path in removed:
        try:
            path.unlink(missing_ok=True)  # a link is removed, never what it points to
        except OSError as error:
            raise CipsError(f"Cannot replace {path}: {error.strerror or error}.") from None
    with contextlib.suppress(OSError):
        (out / SAMPLES).rmdir()  # only if it is empty now: the user's own files stay
    return removed
