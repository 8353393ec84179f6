"""What one training sample shows: a real crop and the generator coordinates that match it.

Three modes, combinable:
- full image: the real image at the training resolution; the generator renders the
  whole ``[-1, 1]^2`` grid;
- patches (``crop``): a random ``crop x crop`` window of both, so the generator computes
  only the patch's points (the paper's memory-constrained training);
- cylinder: real images are strips of a panorama; every sample is a window at a random
  angle, and the generator renders ``u = angle + grid_u * span / 2``, with u an angle that
  wraps, so the model learns one seamless 360-degree scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cips_deploy.runtime.coords import grid_coords, grid_from_axes, linspace, panorama_u


@dataclass(frozen=True)
class ViewSampler:
    """Samples (real crops [B, 3, P, P], coordinates [B, P*P, 2]) for one step.

    resolution: the side of a full training view (pixels); crop: the patch side P
    (None: P = resolution); cylinder: views are windows of a panorama; span: the width
    of one full view in u (a whole turn is 2, so span 0.5 is a 90-degree field of view).
    """

    resolution: int
    crop: int | None = None
    cylinder: bool = False
    span: float = 0.5

    @property
    def patch(self) -> int:
        return self.crop or self.resolution

    def sample(self, images: list[Tensor], batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        R, P = self.resolution, self.patch
        full = torch.from_numpy(grid_coords(R, R)[0].reshape(R, R, 2))  # [R, R, 2], u in [-1, 1]
        reals, coords = [], []
        for index in torch.randint(len(images), (batch,), generator=generator).tolist():
            image = images[index]  # [3, R, W >= R]
            left = int(torch.randint(image.shape[2] - R + 1, (1,), generator=generator))
            view = image[:, :, left : left + R]
            points = full.clone()
            if self.cylinder:
                angle = float(torch.rand((), generator=generator)) * 2 - 1
                points[..., 0] = angle + points[..., 0] * (self.span / 2)
            if torch.rand((), generator=generator) < 0.5:  # horizontal flip of the real view
                view = view.flip(2)
            top, left = (int(torch.randint(R - P + 1, (1,), generator=generator)) for _ in range(2))
            reals.append(view[:, top : top + P, left : left + P])
            coords.append(points[top : top + P, left : left + P].reshape(P * P, 2))
        return torch.stack(reals), torch.stack(coords)

    def preview_coords(self) -> tuple[Tensor, int, int]:
        """Coordinates of a preview: the full view, or for a cylinder the whole panorama.

        Returns (coords [1, H*W, 2], H, W).
        """
        R = self.resolution
        if not self.cylinder:
            return torch.from_numpy(grid_coords(R, R)), R, R
        width = round(R * 2 / self.span)  # pixels in a whole turn at the training density
        coords = torch.from_numpy(grid_from_axes(panorama_u(width), linspace(-1.0, 1.0, R)))  # the cylinder topology's columns
        return coords, R, width
