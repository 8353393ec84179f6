"""``cips_deploy.create``: a generator with random weights, initialised as the official code does."""

from __future__ import annotations

import torch

from cips_deploy.contracts.config import preset_config
from cips_deploy.families.generator import Generator
from cips_deploy.families.model_size import check_model_size


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
