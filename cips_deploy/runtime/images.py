"""Turn raw generator output (about [-1, 1]) into 8-bit images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def rgb_to_uint8(rgb: Tensor) -> np.ndarray:
    """Raw colours [..., 3] in about [-1, 1] -> uint8 [..., 3].

    Maps -1 -> 0 and +1 -> 255 and rounds as torchvision's ``save_image`` does (the
    official code's), clamping whatever lies outside.
    """
    scaled = (rgb.detach().float().cpu() + 1) * 127.5 + 0.5
    return scaled.clamp(0, 255).to(torch.uint8).numpy()


def to_pil(rgb: Tensor, height: int, width: int) -> list[Image.Image]:
    """rgb [B, height * width, 3] (row-major points, as from ``grid_coords``) -> B PIL images."""
    pixels = rgb_to_uint8(rgb).reshape(rgb.shape[0], height, width, 3)
    return [Image.fromarray(image, mode="RGB") for image in pixels]
