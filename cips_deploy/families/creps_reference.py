"""The CREPS reference path: what the official code computes, computed the way it computes it.

The official generator works on image-shaped tensors: the input layer and the line blocks
on ``[B, C, N, 2r]`` (both axes side by side, rows in slots 0..r-1), every modulated layer as
``einsum('nihw,noi->nohw')`` with per-sample folded weights, the bi-line products as
``[B, bc, N, r] @ [B, bc, r, N]`` grids ``[B, bc, N, N]``, the decoders on ``[B * N * N, bc]``
and block0/block1 as einsums over ``[B, C, N, N]``. This module runs a
:class:`~cips_deploy.families.creps.CrepsGenerator`'s weights through exactly those operations, in
float32 (``force_fp32``). It exists so that tests prove the pixel-major paths equal it and
``cips-deploy bench --reference`` measures the fast path against it in the same run.
Square grids only, as the official code (one coordinate vector for both axes' lengths).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cips_deploy.families.creps_layers import ModulatedFC, _bias_act, to_unit
from cips_deploy.families.creps_spec import RANK

if TYPE_CHECKING:
    from cips_deploy.families.creps import CrepsGenerator
from cips_deploy.errors import CipsError


def _modulated(layer: ModulatedFC, x: Tensor, w: Tensor) -> Tensor:
    """Official modulated_fc + bias_act: x [B, in, H, W], w [B, S] -> [B, out, H, W]."""
    styles = layer.affine(w)
    if not layer.demodulate:
        styles = styles * (1 / np.sqrt(layer.weight.shape[1]))
    weight = layer.weight.unsqueeze(0) * styles.unsqueeze(1)  # [B, out, in]
    if layer.demodulate:
        weight = weight * (weight.square().sum(dim=[2]) + 1e-8).rsqrt().unsqueeze(2)
    y = torch.einsum("nihw,noi->nohw", x, weight)
    return _bias_act(y.permute(0, 2, 3, 1), layer.bias, layer.demodulate, layer.clamp).permute(0, 3, 1, 2)


def creps_reference(generator: CrepsGenerator, coords: Tensor, w: Tensor) -> Tensor:
    """coords [B, 2, N, N] (u, v) on a grid and w [B, S] -> rgb [B, 3, N, N], the official way."""
    batch, _, height, width = coords.shape
    if height != width:
        raise CipsError(f"The CREPS reference path is the official code, which renders squares only, not {height}x{width}.")
    s, c = generator.synthesis, generator.config
    ws = w[:, None].repeat(1, generator.num_ws, 1)
    t = torch.stack([to_unit(coords[0, 1, :, 0]), to_unit(coords[0, 0, 0, :])], dim=-1)  # [N, 2]: rows, columns
    channels = c.widths[0]
    x = t.reshape(1, -1, 2, 1).repeat(batch, 1, 1, 1) @ s.b4.input.freqs  # [B, N, 2, C/2 * r]
    x = x.reshape(batch, height, 2, channels // 2, RANK).permute(0, 3, 1, 2, 4) * (np.pi * 2)
    x = torch.sin(torch.cat([x.reshape(batch, channels // 2, height, -1), x.reshape(batch, channels // 2, height, -1) + np.pi / 2], dim=1))
    x = x * (s.b4.input.weight * s.b4.input.affine(ws[:, 0]).reshape(batch, channels, 1, -1)) / np.sqrt(channels)
    x = _modulated(s.b4.fc1, x, ws[:, 1])  # [B, C, N, 2r]
    res = feature = None
    for index, q in enumerate(s.resolutions[1:], start=1):
        block = getattr(s, f"b{q}")
        x = _modulated(block.fc1, _modulated(block.fc0, x, ws[:, 2 * index - 1]), ws[:, 2 * index])
        y = _modulated(block.tores, x, ws[:, 2 * index + 1])
        res = y if res is None else res.add(y)
        x_line, y_line = (res * np.sqrt(0.5)).chunk(2, dim=-1)
        new_f = x_line @ y_line.transpose(-2, -1)  # [B, bc, N, N]
        new_f = new_f.permute(0, 2, 3, 1).reshape(-1, c.biline_channels)
        feature = new_f if feature is None else getattr(s, f"decoder_{q}")(feature) + new_f
    feature = s.decoder_last(feature)
    img = s.decoder_img(feature).reshape(batch, height, width, -1).permute(0, 3, 1, 2)
    x = feature.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
    for block in (s.block0, s.block1):
        x = _modulated(block.fc1, _modulated(block.fc0, x, ws[:, -1]), ws[:, -1])
        img = img.add(_modulated(block.tores, x, ws[:, -1]))
    return img
