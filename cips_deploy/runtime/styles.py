"""Styles of a render: the seed's latent, the class label of a conditional model, and per-point
blending of two styles.

Spatially varying styles (``blend_seed``): each point gets its own
``w = lerp(w_seed, w_blend, (1 - cos(pi * u)) / 2)``: the seed's style at u = 0, the blend
seed's at u = +-1, smooth in between and periodic in u with period 2, so a cylinder
panorama stays seamless.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cips_deploy.errors import CipsError
from cips_deploy.runtime.seeds import seed_latent


def latent(seed: int, config: Any) -> np.ndarray:
    """z float32 ``[1, Z]`` for ``seed`` (:func:`cips_deploy.runtime.seeds.seed_latent`): the same
    numbers on every machine, for every family and every backend."""
    return seed_latent(seed, config)


def class_label(config: Any, class_index: Any = None) -> np.ndarray | None:
    """The label c a class-conditional model's mapping takes: float32 ``[1, C]``, one-hot at
    ``class_index`` (as the official ``gen_images.py`` builds it); None for an unconditional
    model given no class. One sentence for a conditional model without a class, a class out of
    range, and a class given to an unconditional model."""
    classes = getattr(config, "c_dim", 0) or 0
    if class_index is None:
        if classes:
            raise CipsError(f"This model is class-conditional ({classes} classes): give --class N (0 to {classes - 1}).")
        return None
    if not classes:
        raise CipsError(f"This model is unconditional: it takes no class (--class {class_index!r:.20}).")
    if not isinstance(class_index, (int, np.integer)) or isinstance(class_index, (bool, np.bool_)) or not 0 <= class_index < classes:
        raise CipsError(f"The class must be a whole number from 0 to {classes - 1} for this model, not {class_index!r:.20}.")
    label = np.zeros((1, classes), dtype=np.float32)
    label[0, int(class_index)] = 1.0
    return label


def blend_styles(w: np.ndarray, w_blend: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Per-point styles float32 ``[1, n, S]`` from w, w_blend float32 ``[1, S]`` and coords ``[1, n, 2]``: periodic in u.

    Every operation is elementwise in float32, so a point's style depends on its own u
    alone, whichever chunk it falls in.
    """
    u = np.ascontiguousarray(coords[..., 0:1], dtype=np.float32)  # [1, n, 1]; one memory layout for every chunk
    t = (np.float32(1.0) - np.cos(np.float32(np.pi) * u)) / np.float32(2.0)  # 0 at u = 0, 1 at u = +-1
    return w[:, None, :] + t * (w_blend - w)[:, None, :]
