"""Coordinate helpers shared by the core, the topologies and the tests.

A sample point is ``(u, v)``: u grows to the right, v grows downwards, and the training
image spans [-1, 1] in both (docs/architecture.md, section 2.1). Batches are pixel-major ``[B, N, 2]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grid_coords(
    height: int,
    width: int,
    *,
    u_range: tuple[float, float] = (-1.0, 1.0),
    v_range: tuple[float, float] = (-1.0, 1.0),
    device: str | torch.device = "cpu",
) -> Tensor:
    """The official sampling grid: u = linspace(u_range, width), v = linspace(v_range, height).

    Returns [1, height * width, 2] in row-major order (point ``r * width + c`` is row r,
    column c), so ``rgb.reshape(B, height, width, 3)`` is the image.
    """
    u = torch.linspace(u_range[0], u_range[1], width, device=device)
    v = torch.linspace(v_range[0], v_range[1], height, device=device)
    return grid_from_axes(u, v)


def grid_from_axes(u: Tensor, v: Tensor) -> Tensor:
    """Column positions u [W] and row positions v [H] -> row-major points [1, H * W, 2]."""
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1).reshape(1, -1, 2)


def panorama_u(width: int, heading_degrees: float = 0.0) -> Tensor:
    """u of the columns of a seamless 360-degree panorama: [width] float32 in [-1, 1).

    Column c samples the centre of the c-th of ``width`` equal sectors, u = -1 + (2c + 1) / W,
    not linspace(-1, 1, W), which would put the same meridian (u = -1 = +1) in the first and
    the last column. Computed in float64 so that every column gets its correctly rounded angle.
    """
    column = torch.arange(width, dtype=torch.float64)
    u = -1.0 + (2.0 * column + 1.0) / width + heading_degrees / 180.0
    return (torch.remainder(u + 1.0, 2.0) - 1.0).float()  # back into [-1, 1): the model wraps anyway


def planar_to_points(maps: Tensor) -> Tensor:
    """Image-shaped maps [B, C, H, W] -> pixel-major points [B, H*W, C].

    For the official coordinate maps (C = 2: channel 0 = x, 1 = y) this gives (u, v) points;
    for official colour output (C = 3) the matching rgb rows.
    """
    batch, channels = maps.shape[:2]
    return maps.permute(0, 2, 3, 1).reshape(batch, -1, channels)
