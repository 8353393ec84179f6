"""Calibration data of static int8 engines, as the user chooses it.

``export --quantize int8-static`` calibrates every activation's scale on batches of
``coords [B, N, 2]`` and ``w [B, S]`` (``[B, N, S]`` for a per-point style engine). They come
from one of

- ``--calibration-seeds LIST`` (``1000-1007`` by default; seeds and ranges like ``--seeds``)
  and ``--calibration-points N`` (4096 by default): one batch per seed, w = mapping(z of the
  seed), N points drawn from the model's training grid and between its pixels;
- ``--calibration-data FOLDER``: the ``.npz`` files in it (sorted by name), each one batch
  with exactly the arrays ``coords`` and ``w`` (``numpy.savez(path, coords=..., w=...)``),
  for example coordinates of the layouts and styles a deployment will serve.

The folder is untrusted input: read with ``allow_pickle=False`` (an object array is refused,
never unpickled), every file a regular file of at most :data:`MAX_FILE_BYTES` whose zip
members declare at most that much, at most :data:`MAX_FILES` files and :data:`MAX_POINTS`
points a batch, float arrays of the engine's shapes with finite values. Anything else is
one sentence naming the file.

Torch-free (numpy only): the folder is checked before the export does any work.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cips_deploy.contracts.command_options import MAX_SEED
from cips_deploy.contracts.limits import regular_file
from cips_deploy.errors import CipsError

DEFAULT_SEEDS = tuple(range(1000, 1008))  # disjoint from the quality report's seeds (0-3)
DEFAULT_POINTS = 4096
MAX_SEEDS = 256
MAX_POINTS = 1 << 20  # points of one batch (B x N): calibration runs the fp32 engine on it
MAX_FILES = 256
MAX_FILE_BYTES = 256 << 20  # a file, and what its members declare inflated
ARRAYS = ("coords", "w")
_SEED_TEXT = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True)
class Calibration:
    """Where the calibration batches come from: ``seeds`` and ``points``, or ``folder``."""

    seeds: tuple[int, ...] = DEFAULT_SEEDS
    points: int = DEFAULT_POINTS
    folder: Path | None = None


def parse_seed_list(text: str, flag: str = "--calibration-seeds") -> tuple[int, ...]:
    """``"0-3,7"`` -> ``(0, 1, 2, 3, 7)``: seeds from 0 to 2**32 - 1, at most :data:`MAX_SEEDS`."""
    if not isinstance(text, str) or not text.strip():
        raise CipsError(f"{flag} takes seeds and ranges such as 0-7 or 1,5,9, not an empty value.")
    ranges = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        texts = (first, last) if dash else (first, first)
        if not all(_SEED_TEXT.fullmatch(piece) for piece in texts):
            raise CipsError(f"{flag} takes seeds and ranges such as 0-7 or 1,5,9, not {text!r:.60}.")
        low, high = int(texts[0]), int(texts[1])
        if high > MAX_SEED:
            raise CipsError(f"{flag} names seed {high:,}, but seeds go from 0 to 2**32 - 1.")
        if high < low:
            raise CipsError(f"{flag} has the range {part!r:.40}, whose end comes before its start.")
        ranges.append((low, high))
    count = sum(high - low + 1 for low, high in ranges)  # counted before any range is expanded
    if count > MAX_SEEDS:
        raise CipsError(f"{flag} lists {count:,} seeds; calibration takes at most {MAX_SEEDS}.")
    return tuple(seed for low, high in ranges for seed in range(low, high + 1))


def calibration_request(quantize: str | None, seeds=None, points: int | None = None,
                        folder: str | os.PathLike | None = None) -> Calibration | None:
    """The calibration an export asked for (None: no static int8); refuses what cannot apply."""
    given = [flag for flag, value in (("--calibration-seeds", seeds), ("--calibration-points", points),
                                      ("--calibration-data", folder)) if value is not None]
    if quantize != "int8-static":
        if given:
            raise CipsError(f"{given[0]} calibrates static int8 engines; add --quantize int8-static.")
        return None
    if folder is not None and (seeds is not None or points is not None):
        raise CipsError("--calibration-data gives the batches themselves; leave out --calibration-seeds and --calibration-points.")
    if folder is not None:
        folder = Path(folder)
        calibration_files(folder)  # an empty or unreadable folder is refused before any work
        return Calibration(folder=folder)
    if isinstance(seeds, str):
        seeds = parse_seed_list(seeds)
    elif seeds is not None:
        seeds = tuple(seeds)
        if not seeds or len(seeds) > MAX_SEEDS:
            raise CipsError(f"--calibration-seeds takes 1 to {MAX_SEEDS} seeds, not {len(seeds)}.")
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
                raise CipsError(f"--calibration-seeds takes seeds from 0 to 2**32 - 1, not {seed!r:.40}.")
    if points is not None and (isinstance(points, bool) or not isinstance(points, (int, np.integer))
                               or not 1 <= points <= MAX_POINTS):
        raise CipsError(f"--calibration-points must be a whole number from 1 to {MAX_POINTS:,}, not {points!r:.40}.")
    return Calibration(seeds=tuple(int(s) for s in seeds) if seeds is not None else DEFAULT_SEEDS,
                       points=int(points) if points is not None else DEFAULT_POINTS)


def calibration_files(folder: Path) -> list[Path]:
    """The ``.npz`` files of ``folder``, sorted; one sentence if there are none or too many."""
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        raise CipsError(f"No such calibration folder: {folder}.") from None
    except OSError as error:
        raise CipsError(f"Cannot read the calibration folder {folder}: {error.strerror or error}.") from None
    if not stat.S_ISDIR(mode):
        raise CipsError(f"--calibration-data takes a folder of .npz batches; {folder} is not a folder.")
    try:
        with os.scandir(folder) as entries:
            files = []
            for entry in entries:
                if entry.name.endswith(".npz"):
                    files.append(Path(entry.path))
                    if len(files) > MAX_FILES:
                        raise CipsError(f"The calibration folder {folder} holds more than {MAX_FILES} .npz files.")
    except OSError as error:
        raise CipsError(f"Cannot read the calibration folder {folder}: {error.strerror or error}.") from None
    if not files:
        raise CipsError(f"The calibration folder {folder} holds no .npz batches (numpy.savez(path, coords=..., w=...)).")
    return sorted(files)


def read_batch(path: Path, style_dim: int, spatial_style: bool = False) -> dict[str, np.ndarray]:
    """One saved batch as the engine's feed: coords float32 [B, N, 2], w float32 [B, S] (or
    [B, N, S] for a per-point style engine; a saved [B, S] is repeated per point)."""
    path = regular_file(path, "calibration batch")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CipsError(f"The calibration batch {path} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} it can be.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CipsError(f"The calibration batch {path} is not an .npz file (numpy.savez's zip).") from None
    names = sorted(member.filename for member in members)
    if names != sorted(f"{name}.npy" for name in ARRAYS):
        shown = ", ".join(name.removesuffix(".npy") for name in names[:6]) or "nothing"
        raise CipsError(f"The calibration batch {path} must hold exactly the arrays coords and w, not {shown}.")
    if sum(member.file_size for member in members) > MAX_FILE_BYTES:  # a zip bomb declares its size
        raise CipsError(f"The calibration batch {path} inflates to more than {MAX_FILE_BYTES:,} bytes.")
    try:
        with np.load(path, allow_pickle=False) as data:
            coords, w = data["coords"], data["w"]
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        reason = "it holds Python objects, which are never unpickled" if "allow_pickle" in str(error) else "unreadable arrays"
        raise CipsError(f"The calibration batch {path} cannot be read: {reason}.") from None
    return _checked(path, coords, w, style_dim, spatial_style)


def _checked(path: Path, coords: np.ndarray, w: np.ndarray, style_dim: int, spatial_style: bool) -> dict[str, np.ndarray]:
    for name, array in (("coords", coords), ("w", w)):
        if array.dtype.kind != "f":
            raise CipsError(f"The calibration batch {path} has {name} of type {array.dtype}, not floating point.")
    if coords.ndim != 3 or coords.shape[2] != 2 or 0 in coords.shape:
        raise CipsError(f"The calibration batch {path} has coords {list(coords.shape)}, not [B, N, 2].")
    batch, points = coords.shape[:2]
    expected = ([batch, style_dim], [batch, points, style_dim]) if spatial_style else ([batch, style_dim],)
    if list(w.shape) not in [list(shape) for shape in expected]:
        wanted = " or ".join(str(shape) for shape in expected)
        raise CipsError(f"The calibration batch {path} has w {list(w.shape)}, but this engine takes {wanted} "
                        f"with its coords {list(coords.shape)}.")
    if batch * points > MAX_POINTS:
        raise CipsError(f"The calibration batch {path} has {batch * points:,} points; a batch takes at most {MAX_POINTS:,}.")
    coords, w = coords.astype(np.float32), w.astype(np.float32)
    if not (np.isfinite(coords).all() and np.isfinite(w).all()):
        raise CipsError(f"The calibration batch {path} holds values that are not finite (NaN or infinity).")
    if spatial_style and w.ndim == 2:
        w = np.repeat(w[:, None, :], points, axis=1)
    return {"coords": np.ascontiguousarray(coords), "w": np.ascontiguousarray(w)}


def read_folder(folder: Path, style_dim: int, spatial_style: bool = False) -> list[dict[str, np.ndarray]]:
    """Every batch of the calibration folder, checked (:func:`read_batch`)."""
    return [read_batch(path, style_dim, spatial_style) for path in calibration_files(folder)]
