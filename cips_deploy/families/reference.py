"""The reference path: what the official CIPS code computes, computed the way it computes it.

The official generator works on image-shaped tensors ``[B, C, H, W]``: Fourier features by
a 1x1 convolution, the embedding grid read with ``F.grid_sample``, and every modulated
layer as a *grouped* 1x1 convolution with one weight group per sample. This module runs a
:class:`~cips_deploy.families.generator.Generator`'s weights through exactly those operations. It is
kept for two reasons: tests prove that the fast pixel-major path equals it, and
``cips-deploy bench --reference`` measures every speed-up against it in the same run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from cips_deploy.errors import CipsError
if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator

from cips_deploy.families.layers import SQRT2, ModulatedLinear, ResidualBlock, StyledLayer, ToRGB


def _modulated_conv(layer: ModulatedLinear, x: Tensor, w: Tensor) -> Tensor:
    """Official ModulatedConv2d (1x1): x [B, in, H, W] -> [B, out, H, W] via a grouped conv."""
    batch, in_channels, height, width = x.shape
    out_channels = layer.weight.shape[0]
    style = layer.affine(w).view(batch, 1, in_channels, 1, 1)
    weight = layer.scale * layer.weight.view(1, out_channels, in_channels, 1, 1) * style
    if layer.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
        weight = weight * demod.view(batch, out_channels, 1, 1, 1)
    weight = weight.view(batch * out_channels, in_channels, 1, 1)
    out = F.conv2d(x.reshape(1, batch * in_channels, height, width), weight, groups=batch)
    return out.view(batch, out_channels, height, width)


def _styled_conv(layer: StyledLayer, x: Tensor, w: Tensor) -> Tensor:
    out = _modulated_conv(layer.linear, x, w)
    return F.leaky_relu(out + layer.bias.view(1, -1, 1, 1), 0.2) * SQRT2


def _to_rgb(layer: ToRGB, x: Tensor, w: Tensor) -> Tensor:
    return _modulated_conv(layer.linear, x, w) + layer.bias.view(1, 3, 1, 1)


def reference_synthesize(generator: Generator, coords: Tensor, w: Tensor) -> Tensor:
    """Official-style synthesis: coords [B, 2, H, W] (x, y) and w [B, S] -> rgb [B, 3, H, W]."""
    if generator.config.coordinate_space != "plane":
        raise CipsError("The reference path is the official code, which has no cylinder coordinate space.")
    batch = coords.shape[0]
    fourier = generator.fourier
    x = torch.sin(F.conv2d(coords, fourier.weight[:, :, None, None], fourier.bias))
    if generator.embedding is not None:
        grid = generator.embedding.grid.permute(2, 0, 1).unsqueeze(0)  # [1, hidden, size, size], as stored officially
        embedding = F.grid_sample(
            grid.expand(batch, -1, -1, -1), coords.permute(0, 2, 3, 1).contiguous(),
            mode="bilinear", padding_mode="border", align_corners=False,
        )
        x = torch.cat([x, embedding], dim=1)
    x = _styled_conv(generator.first, x, w)
    if generator.to_rgb is not None:
        for block in generator.blocks:
            assert isinstance(block, ResidualBlock)
            out = _styled_conv(block.layer2, _styled_conv(block.layer1, x, w), w)
            skip = x if block.skip is None else F.conv2d(x, (block.skip.weight * block.skip.scale)[:, :, None, None])
            x = (out + skip) / SQRT2
        return _to_rgb(generator.to_rgb, x, w)
    rgb = None
    for block in generator.blocks:
        x = _styled_conv(block.layer2, _styled_conv(block.layer1, x, w), w)
        block_rgb = _to_rgb(block.to_rgb, x, w)
        rgb = block_rgb if rgb is None else block_rgb + rgb
    return rgb
