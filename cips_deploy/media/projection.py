"""The files of ``cips-deploy project``: the target photograph it reads and the ``.npz`` it writes.

Torch-free (numpy and Pillow), so a reader of projections (``render --w``) and the tests of
the format need no framework. The optimisation itself is :mod:`cips_deploy.families.projector`.

**The target.** A photograph is read through the same limits as training images
(``train/data.py``): at most :data:`MAX_TARGET_BYTES` on disk, each side at most
:data:`MAX_TARGET_SIDE` and at most :data:`MAX_TARGET_PIXELS` in all, checked from the header
before anything is decoded, and its decoded copy within the memory available. A model's view
is square in pixels (a plane model's training image; a cylinder model's ``fov``-degree
window), so the target is made square before it is resized to ``size x size`` (LANCZOS):

- ``crop`` (default): its centre square (the longer side is cut, the aspect kept);
- ``stretch``: the whole image, squeezed to a square (nothing is cut, the aspect is lost).

**The projection file** (``.npz``, read with ``allow_pickle=False``; S = style width, L = the
family's per-layer styles, T = saved steps)::

    w            float32 [1, S]          the final style (or ws float32 [1, L, S] with --per-layer)
    trajectory   float32 [T, 1, S]       the style every --save-every steps, the last one final
                                         (or [T, 1, L, S])
    loss         float32 [T]             the loss of the step each was saved at
    config       0-d unicode             the generator's config as JSON (GeneratorConfig.to_dict)
    source_hash  0-d unicode             SHA-256 of the checkpoint file ("" if unknown)
    target_size  int64 [2]               (height, width) the target was matched at
    view         float32 [4]             the matched view's u_min, u_max, v_min, v_max (the flat
                                         topology's parameters that render it again)
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cips_deploy.contracts.limits import check_memory
from cips_deploy.errors import CipsError
from cips_deploy.runtime.atomic import atomic_path, read_small_file

MAX_TARGET_BYTES = 256 << 20  # one image file, as a training image
MAX_TARGET_SIDE = 1 << 16  # pixels on either side
MAX_TARGET_PIXELS = 1 << 26  # 8192 x 8192; a 50-megapixel photograph fits
RESIZE_MODES = ("crop", "stretch")
PROJECTION_KEYS = ("trajectory", "loss", "config", "source_hash", "target_size", "view")  # and w or ws


def read_target(path: str | Path, size: int, resize: str = "crop") -> np.ndarray:
    """The photograph at ``path`` as float32 ``[size, size, 3]`` in [-1, 1] (the generator's range).

    ``resize``: ``crop`` (centre square) or ``stretch`` (the whole image); see the module text.
    A file that is not an image, or over the limits, is one sentence.
    """
    if resize not in RESIZE_MODES:
        raise CipsError(f"--resize is {' or '.join(RESIZE_MODES)}, not {resize!r:.40}.")
    path = Path(path)
    data = read_small_file(_followed(path), MAX_TARGET_BYTES, "target image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: nothing is decoded yet
            if not (0 < width <= MAX_TARGET_SIDE and 0 < height <= MAX_TARGET_SIDE and width * height <= MAX_TARGET_PIXELS):
                raise CipsError(
                    f"The target image {path} is {width:,} x {height:,} pixels; a target may have at most "
                    f"{MAX_TARGET_SIDE:,} on a side and {MAX_TARGET_PIXELS:,} in all."
                )
            check_memory(16 * width * height, f"Reading the target image {path}")  # decoded, converted, resized
            image.load()
            square = _squared(_to_rgb(image), resize)
            resized = square.resize((size, size), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise CipsError(f"The target {path} is not an image this install can read ({type(error).__name__}).") from None
    return np.asarray(resized, dtype=np.float32) / 127.5 - 1.0


def _followed(path: Path) -> Path:
    """``path`` with its links resolved: a target may be a link; the bounded reader opens the file itself."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError) as error:  # a loop of links
        raise CipsError(f"Cannot read the target image {path}: {error}.") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16- and 32-bit grey images are scaled, not clipped (as training images are)."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        full = 1.0 if image.mode == "F" else 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / full * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _squared(image: Image.Image, resize: str) -> Image.Image:
    """The centre square of ``image`` (``crop``), or ``image`` itself (``stretch``: resized as a whole)."""
    width, height = image.size
    if resize == "stretch" or width == height:
        return image
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def write_projection(
    path: str | Path,
    *,
    styles: np.ndarray,
    trajectory: np.ndarray,
    loss: np.ndarray,
    config: dict[str, Any],
    source_hash: str,
    target_size: tuple[int, int],
    view: tuple[float, float, float, float] = (-1.0, 1.0, -1.0, 1.0),
    overwrite: bool,
) -> None:
    """Write the projection file (format: the module text) atomically; never replaces a file without ``overwrite``.

    styles: float32 [1, S] (saved as ``w``) or [1, L, S] (saved as ``ws``);
    trajectory: [T, *styles.shape]; loss: [T].
    """
    styles = np.asarray(styles, dtype=np.float32)
    trajectory = np.asarray(trajectory, dtype=np.float32)
    loss = np.asarray(loss, dtype=np.float32)
    if styles.ndim not in (2, 3) or styles.shape[0] != 1:
        raise CipsError(f"A projection's style is [1, S] or [1, L, S], not {list(styles.shape)}.")
    if trajectory.shape[1:] != styles.shape or loss.shape != trajectory.shape[:1]:
        raise CipsError(f"A projection's trajectory {list(trajectory.shape)} and loss {list(loss.shape)} do not match its style {list(styles.shape)}.")
    arrays = {
        "w" if styles.ndim == 2 else "ws": styles,
        "trajectory": trajectory,
        "loss": loss,
        "config": np.array(json.dumps(config, sort_keys=True)),
        "source_hash": np.array(str(source_hash)),
        "target_size": np.array(target_size, dtype=np.int64),
        "view": np.array(view, dtype=np.float32),
    }
    with atomic_path(Path(path), overwrite=overwrite) as temporary:
        with open(temporary, "wb") as handle:  # a file object: np.savez would add .npz to a name
            np.savez(handle, **arrays)
