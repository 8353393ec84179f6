"""Turn raw generator output (about [-1, 1]) into 8-bit images, on numpy arrays."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image


def raw_psnr(mean_squared_error: float) -> float:
    """PSNR in dB of raw outputs (colours in [-1, 1], a range of 2) from their mean squared
    difference; infinite for equal outputs. One definition for export's quality gate,
    ``compare`` and ``project``."""
    return math.inf if mean_squared_error == 0.0 else 10.0 * math.log10(4.0 / mean_squared_error)


def decibels(psnr: float | None) -> str:
    """A PSNR as printed: ``31.42 dB``, ``inf dB`` for equal outputs (None: a JSON report's
    infinite PSNR, written as null)."""
    return "inf dB" if psnr is None or math.isinf(psnr) else f"{psnr:.2f} dB"


def host_float32(values: Any) -> np.ndarray:
    """numpy float32 of ``values``: a numpy array (cast only when not float32 already) or a
    torch tensor, duck-typed by ``.detach`` so that torch is never imported here (no copy
    for a CPU float32 tensor)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()  # .float(): bfloat16 has no numpy dtype
    return np.asarray(values, dtype=np.float32)


def rgb_to_uint8(rgb: Any) -> np.ndarray:
    """Raw colours ``[..., 3]`` in about [-1, 1] (numpy or torch) -> uint8 ``[..., 3]``.

    Maps -1 -> 0 and +1 -> 255 and rounds as torchvision's ``save_image`` does (the
    official code's), clamping whatever lies outside: ``floor(clamp((rgb + 1) * 127.5 + 0.5, 0, 255))``,
    each step rounded to float32 as torch computed it, then a truncating cast.
    """
    # Overflow to infinity clamps as torch's did; NaN (which renderers refuse earlier) casts silently.
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = host_float32(rgb) + np.float32(1.0)  # a new array: the caller's stays as it was
        scaled *= np.float32(127.5)
        scaled += np.float32(0.5)
        np.clip(scaled, np.float32(0.0), np.float32(255.0), out=scaled)
        return scaled.astype(np.uint8)


def to_pil(rgb: Any, height: int, width: int) -> list[Image.Image]:
    """rgb ``[B, height * width, 3]`` (row-major points, as from ``grid_coords``; numpy or torch) -> B PIL images."""
    pixels = rgb_to_uint8(rgb).reshape(-1, height, width, 3)
    return [Image.fromarray(image, mode="RGB") for image in pixels]
