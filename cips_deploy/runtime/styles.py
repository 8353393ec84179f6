"""Styles of a render: the seed's latent, and per-point blending of two styles.

Spatially varying styles (``blend_seed``): each point gets its own
``w = lerp(w_seed, w_blend, (1 - cos(pi * u)) / 2)``: the seed's style at u = 0, the blend
seed's at u = +-1, smooth in between and periodic in u with period 2, so a cylinder
panorama stays seamless.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def latent(seed: int, config: Any) -> Tensor:
    """z [1, S] for ``seed`` by the family's convention (``Generator.seed_latent``): the same
    numbers on every machine and every backend."""
    from cips_deploy.families.generator import family_class

    return family_class(config.arch).seed_latent(seed, config.style_dim)


def blend_styles(w: Tensor, w_blend: Tensor, coords: Tensor) -> Tensor:
    """Per-point styles [1, n, S] from w, w_blend [1, S] and coords [1, n, 2]: periodic in u."""
    t = (1.0 - torch.cos(math.pi * coords[..., 0:1])) / 2.0  # [1, n, 1]: 0 at u = 0, 1 at u = +-1
    return w[:, None, :] + t * (w_blend - w)[:, None, :]
