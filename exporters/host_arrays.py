"""Host arrays at the engine runtimes' boundary: float32, C-contiguous, padded like the torch backend.

The backend contract (:mod:`cips_deploy.contracts.backend`) hands runtimes numpy arrays;
engines take float32 C-contiguous buffers. :func:`host_float32` makes one from whatever a
caller gives (a numpy array, or a torch tensor from code written against the old contract:
only its own ``.detach().cpu().numpy()`` is called, torch is never imported here).

Chunk invariance, as in the torch backend (``cips_deploy.plugins.torch_backend``): CPU matrix
products take another kernel for very short batches, which moved a pixel by one level at
chunk size 1. So every batch of points is padded to a multiple of :data:`PAD_POINTS` by
repeating its last point (:func:`pad_rows`) and the padding is dropped after.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Points per batch are padded to a multiple of this (the torch backend's PAD_POINTS).
PAD_POINTS = 64
# MB of cached lines of line-factored models (the torch backend's LINE_CACHE_MB): the bound
# of the grid renderer's tables, beside the chunk budget.
LINE_CACHE_MB = {"cpu": 32.0, "cuda": 512.0}


def host_float32(array: Any) -> np.ndarray:
    """``array`` as a C-contiguous float32 numpy array on the host (no copy when it already is one)."""
    if hasattr(array, "detach") and not isinstance(array, np.ndarray):  # a torch tensor from an old caller
        array = array.detach().cpu().numpy()
    return np.ascontiguousarray(array, dtype=np.float32)


def pad_rows(array: np.ndarray, multiple: int) -> np.ndarray:
    """[B, N, ...] -> [B, N', ...] with N' the next multiple of ``multiple``, repeating row N - 1."""
    missing = -array.shape[1] % multiple
    if missing == 0:
        return array
    return np.concatenate([array, np.repeat(array[:, -1:], missing, axis=1)], axis=1)


def same_points(coords: np.ndarray) -> bool:
    """Whether every sample of coords [B, N, 2] has the same points (always so for B = 1)."""
    return coords.shape[0] == 1 or bool((coords == coords[:1]).all())


def is_torch_cuda(value: Any) -> bool:
    """Whether ``value`` is a torch tensor on a CUDA device (without importing torch)."""
    return bool(getattr(value, "is_cuda", False)) and hasattr(value, "data_ptr")
