"""Checks of a render request and of what plugins hand back, each a one-sentence CipsError.

The renderers (:mod:`cips_deploy.runtime.render`, :mod:`cips_deploy.runtime.gigapixel`) and the commands
call these before allocating anything: sizes, seeds, a caller's style, chunk settings; and
after a topology answers: its point count and its assembled image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cips_deploy.errors import CipsError
from cips_deploy.runtime.images import host_float32
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.seeds import MAX_SEED, check_seed

__all__ = ["MAX_SEED", "MAX_SIDE", "check_chunk_settings", "check_seed", "check_size", "check_style",
           "check_truncation", "checked_count", "checked_image"]

MAX_SIDE = 1 << 20


def check_size(height: Any, width: Any) -> None:
    """Positive integer sides no longer than MAX_SIDE."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise CipsError(f"The image {name} must be a positive whole number of pixels, not {value!r}.")
        if value > MAX_SIDE:
            raise CipsError(f"The image {name} of {value:,} pixels exceeds the limit of {MAX_SIDE:,}.")


def check_truncation(truncation: Any) -> None:
    if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not math.isfinite(truncation):
        raise CipsError(f"The truncation must be a finite number, not {truncation!r}.")


def check_style(style: Any, style_dim: int, layers: int | None = None) -> np.ndarray:
    """A caller's style (numpy, or a torch tensor) as host float32 ``[1, style_dim]`` or, when
    the model takes ``layers`` per-layer styles, ``[1, layers, style_dim]``; or a CipsError."""
    floating = hasattr(style, "detach") and style.is_floating_point() or (
        isinstance(style, np.ndarray) and np.issubdtype(style.dtype, np.floating)
    )
    shapes = [(1, style_dim)] + ([(1, layers, style_dim)] if layers else [])
    if not floating or tuple(style.shape) not in shapes:
        shape = list(style.shape) if hasattr(style, "shape") else type(style).__name__
        layered = f" (or [1, {layers}, {style_dim}], one per style input)" if layers else ""
        raise CipsError(f"A style must be a float array or tensor of shape [1, {style_dim}], not {shape}{layered}.")
    style = host_float32(style)
    if not np.isfinite(style).all():
        raise CipsError("A style has NaN or infinite values.")
    return style


def check_chunk_settings(chunker: Registered, chunk_size: Any, memory_budget: Any) -> None:
    """The chunk settings are valid numbers and are ones the chosen chunker reads."""
    settings = chunker.attribute("settings", (), tuple)  # plugin code: a failure names the chunker
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise CipsError(f"The chunk size must be a positive whole number, not {chunk_size!r}.")
        if "chunk_size" not in settings:
            raise CipsError(f"The {chunker.name} chunker takes no chunk size; use --chunker fixed or rows with --chunk-size.")
    if memory_budget is not None:
        if not isinstance(memory_budget, (int, float)) or isinstance(memory_budget, bool) or not (
            math.isfinite(memory_budget) and memory_budget > 0
        ):
            raise CipsError(f"The memory budget must be a positive number of MB, not {memory_budget!r}.")
        if "memory_budget" not in settings:
            raise CipsError(f"The {chunker.name} chunker takes no memory budget; use --chunker memory with --memory-budget.")


def checked_count(layout: Any, entry: Registered) -> int:
    """The layout's ``n_points``, a non-negative whole number, or a CipsError naming the topology."""
    count = getattr(layout, "n_points", None)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        raise CipsError(f"{entry.label} returned a layout without a valid n_points (got {count!r}).")
    return int(count)


def checked_image(image: Any, height: int, width: int, entry: Registered) -> np.ndarray:
    """The assembled image as uint8 [height, width, 3], or a CipsError naming the topology."""
    if hasattr(image, "detach"):  # a torch tensor, from a topology written for the torch runtime
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (height, width, 3):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise CipsError(
            f"{entry.label} assembled an image of shape {list(shape) if shape is not None else None} and type {dtype}; "
            f"expected uint8 [{height}, {width}, 3]."
        )
    return image
