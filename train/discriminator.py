"""StyleGAN2's residual discriminator: images [B, 3, P, P] -> realness logits [B].

Convolutions are fine here: only the generator must be pixel-independent. Layers use
equalized learning rate like the generator. Downsampling is a 2x2 average pool (StyleGAN2
blurs first; for CIPS-sized models the difference is immaterial and this keeps D small).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cips_deploy.families.layers import EqualLinear, scaled_leaky_relu


class EqualConv2d(nn.Module):
    """3x3 or 1x1 convolution with equalized learning rate: [B, in, H, W] -> [B, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class DiscriminatorBlock(nn.Module):
    """conv, conv, halve; plus a 1x1 skip; (out + skip) / sqrt(2): [B, in, H, W] -> [B, out, H/2, W/2]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = scaled_leaky_relu(self.conv1(x))
        out = F.avg_pool2d(scaled_leaky_relu(self.conv2(out)), 2)
        skip = self.skip(F.avg_pool2d(x, 2))
        return (out + skip) / math.sqrt(2)


class Discriminator(nn.Module):
    """Residual discriminator for square images of side ``resolution`` (a power of two >= 8).

    Width at side r: min(channel_max, 64 * channel_max / r), StyleGAN2's schedule scaled
    so that ``channel_max = 512`` gives the paper's discriminator at 256.
    """

    def __init__(self, resolution: int, channel_max: int = 512, mbstd_group: int = 4) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"discriminator resolution must be a power of two >= 8, not {resolution}")

        def width(side: int) -> int:
            return max(1, min(channel_max, 64 * channel_max // side))

        self.from_rgb = EqualConv2d(3, width(resolution), 1)
        blocks, side = [], resolution
        while side > 4:
            blocks.append(DiscriminatorBlock(width(side), width(side // 2)))
            side //= 2
        self.blocks = nn.Sequential(*blocks)
        channels = width(4)
        self.mbstd_group = mbstd_group
        self.final_conv = EqualConv2d(channels + 1, channels, 3)
        self.final_linear = EqualLinear(channels * 4 * 4, channels, activate=True)
        self.output = EqualLinear(channels, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = scaled_leaky_relu(self.from_rgb(images))
        x = self.blocks(x)
        x = self._minibatch_stddev(x)
        x = scaled_leaky_relu(self.final_conv(x))
        return self.output(self.final_linear(x.flatten(1))).squeeze(1)

    def _minibatch_stddev(self, x: Tensor) -> Tensor:
        """Append the mean standard deviation over groups of samples: a cue against mode collapse."""
        batch, channels, height, width = x.shape
        group = min(self.mbstd_group, batch)
        while batch % group:
            group -= 1
        y = x.reshape(group, -1, channels, height, width)
        y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # [B / group]
        y = y.reshape(-1, 1, 1, 1).repeat(group, 1, height, width)
        return torch.cat([x, y], dim=1)
