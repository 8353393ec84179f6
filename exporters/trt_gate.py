"""The PSNR gate of TensorRT int8 plans: the plan rendered on the GPU against the checkpoint in torch.

Kept apart from :mod:`.trt_calibration` (which :mod:`.tensorrt` imports while building) because
it runs a built plan through :class:`.tensorrt.TensorRTEngine`. Needs tensorrt and a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def trt_quality(plan: Path, generator: Any, *, min_psnr: float, seeds=None):
    """The quality report of an int8 plan against the checkpoint in torch (rendered on the GPU)."""
    from .quality import DEFAULT_SEEDS, QualityReport, psnr_and_max_error, quality_inputs
    from .tensorrt import TensorRTEngine

    seeds = DEFAULT_SEEDS if seeds is None else seeds
    engine = TensorRTEngine(plan)
    coords, ws = quality_inputs(generator, seeds)
    psnrs, errors = [], []
    for w in ws:
        expected = _torch_render(generator, coords, w)
        w_in = w[:, None, :].expand(-1, coords.shape[1], -1) if engine.spatial_style else w
        got = engine.synthesize(coords.cuda(), w_in.contiguous().cuda()).cpu().numpy()
        psnr, error = psnr_and_max_error(expected, got)
        psnrs.append(psnr)
        errors.append(error)
    side = int(round(math.sqrt(coords.shape[1])))
    return QualityReport("int8-static", [int(s) for s in seeds], psnrs, errors, side, min_psnr)


def _torch_render(generator: Any, coords, w) -> np.ndarray:
    """rgb [1, N, 3] of the checkpoint in torch (float32, on its device), chunk by chunk."""
    import torch

    from .quality import CHUNK_POINTS

    parts = []
    with torch.no_grad():
        for start in range(0, coords.shape[1], CHUNK_POINTS):
            piece = coords[:, start : start + CHUNK_POINTS].to(generator.device)
            parts.append(generator.synthesize(piece, w.to(generator.device)).float().cpu().numpy())
    return np.concatenate(parts, axis=1)
