"""Reading a saved style for ``render --w proj.npz``: the file ``cips-deploy project`` writes
(:mod:`cips_deploy.media.projection`), or any ``.npz`` of the same keys.

The format (numpy ``.npz``, read with ``allow_pickle=False``)::

    w            float32 [1, S]       one style for every layer, or
    ws           float32 [1, L, S]    one per style input (L = config.family.style_layers(config))
    config       0-d unicode          the generator's config as JSON (GeneratorConfig.to_dict)
    source_hash  0-d str, optional    SHA-256 of the checkpoint it was made with

Other arrays (the projector's trajectory, loss, target size) may be present and are not read.
The file is a regular file of at most :data:`MAX_STYLE_FILE_BYTES`, read through the bounded
reader; the zip's declared sizes are checked before anything is inflated. The style's shape
is checked against the model when the render starts (one sentence naming the file).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cips_deploy.contracts.limits import MAX_JSON_BYTES, parse_json
from cips_deploy.errors import CipsError
from cips_deploy.runtime.atomic import read_small_file

MAX_STYLE_FILE_BYTES = 256 << 20  # a projection with a long trajectory; its style is a few KB
MAX_STYLE_FLOATS = 1 << 24  # w or ws: 64 MB of float32, far beyond any model's L x S


@dataclass(frozen=True)
class SavedStyle:
    w: np.ndarray  # float32 [1, S] or [1, L, S]
    config: dict[str, Any]  # the generator config it was made for
    source_hash: str  # "" when the file does not say
    path: Path


def read_saved_style(path: str | Path) -> SavedStyle:
    """The style of ``path`` (format: the module text), or one sentence saying what is wrong."""
    path = Path(path)
    data = read_small_file(path, MAX_STYLE_FILE_BYTES, "style file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {member.filename: member for member in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise CipsError(f"The style file {path} is not an .npz file (numpy.savez's zip).") from None
    names = {name.removesuffix(".npy") for name in members}
    styles = [name for name in ("w", "ws") if name in names]
    if len(styles) != 1 or "config" not in names:
        raise CipsError(f"The style file {path} must hold exactly one of w [1, S] or ws [1, L, S], and config; it holds {', '.join(sorted(names))[:120] or 'nothing'}.")
    wanted = [styles[0], "config"] + (["source_hash"] if "source_hash" in names else [])
    if sum(members[f"{name}.npy"].file_size for name in wanted) > 4 * MAX_STYLE_FLOATS + 2 * MAX_JSON_BYTES:
        raise CipsError(f"The style file {path} declares arrays larger than a style and its config can be.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in wanted}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        reason = "it holds Python objects, which are never unpickled" if "allow_pickle" in str(error) else "its arrays are unreadable"
        raise CipsError(f"The style file {path} cannot be read: {reason}.") from None
    style = loaded[styles[0]]
    expected = "[1, S]" if styles[0] == "w" else "[1, L, S]"
    if style.dtype.kind != "f" or style.ndim != (2 if styles[0] == "w" else 3) or style.shape[0] != 1 or 0 in style.shape:
        raise CipsError(f"The style file {path} has {styles[0]} of type {style.dtype} and shape {list(style.shape)}, not float32 {expected}.")
    style = np.ascontiguousarray(style, dtype=np.float32)
    if not np.isfinite(style).all():
        raise CipsError(f"The style file {path} has NaN or infinite values in {styles[0]}.")
    config = _text(loaded["config"], path, "config")
    source_hash = _text(loaded["source_hash"], path, "source_hash") if "source_hash" in loaded else ""
    parsed = parse_json(config, f"The config in the style file {path}")
    if not isinstance(parsed, dict):
        raise CipsError(f"The config in the style file {path} is not a JSON object.")
    return SavedStyle(style, parsed, source_hash, path)


def _text(array: np.ndarray, path: Path, name: str) -> str:
    if array.ndim != 0 or array.dtype.kind not in "US":
        raise CipsError(f"The style file {path} has {name} of type {array.dtype} and shape {list(array.shape)}, not a 0-d string.")
    value = array.item()
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def check_against(saved: SavedStyle, config: Any) -> None:
    """One sentence when ``saved`` was made for a model of another style width or architecture than ``config``."""
    arch, width = saved.config.get("arch"), saved.config.get("style_dim")
    if arch is not None and arch != config.arch or width is not None and width != config.style_dim:
        raise CipsError(
            f"The style file {saved.path} was made for a {arch} model of style width {width}, "
            f"not this {config.arch} model of style width {config.style_dim}."
        )
