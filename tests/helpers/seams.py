"""The seam statistic of cylinder panoramas, shared by the topology and render tests."""

from __future__ import annotations

import numpy as np


def pooled_seam_ratio(images: list[np.ndarray]) -> float:
    """The issue's seam statistic over several panoramas: mean seam difference over the median
    of the mean adjacent-column differences."""
    pixels = [image.astype(np.float64) for image in images]
    seam = np.mean([np.abs(p[:, -1] - p[:, 0]).mean() for p in pixels])
    adjacent = np.mean([np.abs(np.diff(p, axis=1)).mean(axis=(0, 2)) for p in pixels], axis=0)  # [W - 1]
    return seam / np.median(adjacent)
