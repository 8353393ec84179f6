"""cips-deploy: deploy coordinate-based image generators (CIPS and its family).

The Python API in five calls::

    import cips_deploy
    generator = cips_deploy.load("churches_g_ema.pt")          # or create("tiny", seed=0)
    w = generator.map(torch.randn(1, generator.config.style_dim), truncation=0.7)
    rgb = generator.synthesize(cips_deploy.grid_coords(256, 256), w)    # [1, 65536, 3]
    image = cips_deploy.to_pil(rgb, 256, 256)[0]

Any topology, any size, chunk by chunk (uint8 [H, W, 3])::

    panorama = cips_deploy.render(generator, "cylinder", height=256, width=1024, seed=3)
"""

from __future__ import annotations

import torch

from ._version import __version__
from .checkpoint import load
from .config import PRESETS, GeneratorConfig, preset_config
from .coords import grid_coords
from .errors import CipsError
from .generator import Generator
from .hookspecs import hookimpl, hookspec
from .limits import check_model_size
from .images import rgb_to_uint8, to_pil
from .render import render, render_pil

__all__ = [
    "CipsError",
    "Generator",
    "GeneratorConfig",
    "PRESETS",
    "__version__",
    "create",
    "grid_coords",
    "hookimpl",
    "hookspec",
    "load",
    "render",
    "render_pil",
    "rgb_to_uint8",
    "to_pil",
]


def create(
    preset: str = "tiny",
    arch: str = "skip",
    coordinate_space: str = "plane",
    seed: int = 0,
    device: str | torch.device = "cpu",
    **overrides,
) -> Generator:
    """A generator with random weights, initialised as the official code does.

    ``overrides`` change the preset's recipe (``size``, ``hidden``, ``style_dim``,
    ``n_mlp``, ``channel_multiplier``, ``channel_max``) or set ``widths`` outright.
    The same seed gives the same weights.
    """
    config = preset_config(preset, arch=arch, coordinate_space=coordinate_space, **overrides)
    check_model_size(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(config)
    generator.w_avg.copy_(generator.mean_w())
    generator.provenance = {"source": "random initialisation", "preset": preset, "seed": seed}
    return generator.to(device).eval()
