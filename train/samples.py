"""Sample grids written during training: fixed latents through the EMA generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cips_deploy.runtime.atomic import atomic_path
from cips_deploy.families.generator import Generator
from cips_deploy.runtime.images import rgb_to_uint8
from cips_deploy.train.views import ViewSampler

SAMPLE_SEED = 20210621  # fixed, so that grids of one run are comparable over time


def save_sample_grid(generator: Generator, views: ViewSampler, path: Path, count: int = 8) -> None:
    """Render ``count`` fixed latents (whole panoramas for cylinder runs) into one PNG, one per row
    for panoramas and in a square-ish grid otherwise."""
    coords, height, width = views.preview_coords()
    z = torch.randn(count, generator.config.style_dim, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    device = generator.device
    with torch.inference_mode():
        w = generator.map(z.to(device))
        rgb = torch.cat([generator.synthesize(coords.to(device), w[i : i + 1]) for i in range(count)])
    tiles = rgb_to_uint8(rgb).reshape(count, height, width, 3)
    columns = 1 if views.cylinder else int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        Image.fromarray(grid).save(temporary, format="PNG")
