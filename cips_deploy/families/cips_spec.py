"""The CIPS family as the runtime sees it (CIPSskip, CIPSres, CIPS-NE): presets, rules, memory.

Framework-free: registered through ``register_families`` like any family, so a torch-free
install checks and sizes CIPS engines. The PyTorch modules are :mod:`.generator`, imported
only by :meth:`CipsFamily.generator_class`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.families import Family
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.errors import CipsError

# Recipes in the official constructor's terms. ``paper256`` and ``paper1024`` are exactly
# the published configurations; ``small`` and ``tiny`` keep the structure at CPU-friendly widths.
PRESETS: dict[str, dict[str, int]] = {
    "paper256": dict(size=256, hidden=512, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),
    "paper1024": dict(size=1024, hidden=512, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),
    "small": dict(size=128, hidden=128, style_dim=256, n_mlp=4, channel_multiplier=1, channel_max=256),
    "tiny": dict(size=64, hidden=32, style_dim=64, n_mlp=2, channel_multiplier=1, channel_max=64),
}


def official_widths(arch: str, size: int, channel_multiplier: int = 2, channel_max: int = 512) -> tuple[int, ...]:
    """Block widths of the official code: one block per octave above 2, from its channel table.

    The official table is indexed by block (not by resolution): blocks 0-3 are 512 wide,
    then the width halves per block, scaled by the channel multiplier. CIPSres keeps the
    7th block as wide as the 6th. ``channel_max`` caps every width (for small presets).
    """
    if size < 4 or size & (size - 1):
        raise CipsError(f"The training size must be a power of two of at least 4, not {size}.")
    m = channel_multiplier
    table = [512, 512, 512, 512, 256 * m, 128 * m, 64 * m, 32 * m, 16 * m]
    if arch == "res":
        table[7], table[8] = 64 * m, 32 * m
    n_blocks = int(math.log2(size)) - 1
    if n_blocks > len(table):
        raise CipsError(f"The official channel table stops at size 1024; size {size} needs explicit widths.")
    return tuple(min(width, channel_max) for width in table[:n_blocks])


def activation_floats(config: GeneratorConfig, per_point_style: bool = False) -> int:
    """Peak float32 activations per point of a CIPS generator (:mod:`cips_deploy.contracts.footprint`).

    Input stage with the embedding grid: the Fourier features (h), the running sum of the
    four bilinear reads and the read being added (2h), and the concatenation (2h) minus what
    is already freed: ``4h``; without the grid: ``2h``. A styled layer ``in -> out``:
    ``in + 3 * out``; with one style per point: ``2 * in + 3 * out + 2 * S``. Plus 9 floats
    of summed colours.
    """
    h = config.hidden
    embedding = config.arch != "ne"
    input_stage = 4 * h + 16 if embedding else 2 * h + 8
    first_in = 2 * h if embedding else h
    layers = [(first_in, config.widths[0])]
    in_features = config.widths[0]
    for width in config.widths:
        layers += [(in_features, width), (width, width)]
        in_features = width
    if per_point_style:
        worst_layer = max(2 * i + 3 * o for i, o in layers) + 2 * config.style_dim
    else:
        worst_layer = max(i + 3 * o for i, o in layers)
    return max(input_stage, worst_layer) + 9


class CipsFamily(Family):
    name = "CIPS"
    description = "CIPS (Anokhin et al., CVPR 2021): a per-pixel MLP with weight modulation, Fourier features and an embedding grid"
    archs = {"skip": "CIPSskip", "res": "CIPSres", "ne": "CIPS-NE"}
    presets = tuple(PRESETS)
    generator = "cips_deploy.families.generator:CipsGenerator"

    def preset_config(self, preset: str, arch: str, coordinate_space: str, **overrides: Any) -> GeneratorConfig:
        """``overrides``: recipe fields (``size``, ``channel_multiplier``, ``channel_max``)
        recompute the widths; ``widths=(...)`` sets them outright; the rest are config fields."""
        if preset not in PRESETS:
            raise CipsError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        recipe = dict(PRESETS[preset])
        config_fields = {field.name for field in dataclasses.fields(GeneratorConfig)}
        unknown = sorted(set(overrides) - config_fields - set(recipe))
        if unknown:
            raise CipsError(f"Unknown generator option(s): {', '.join(unknown)}.")
        for key in list(overrides):
            if key in recipe:
                recipe[key] = overrides.pop(key)
        channel_multiplier = recipe.pop("channel_multiplier")
        channel_max = recipe.pop("channel_max")
        widths = overrides.pop("widths", None)
        if widths is None:
            widths = official_widths(arch, recipe["size"], channel_multiplier, channel_max)
        return GeneratorConfig(arch=arch, coordinate_space=coordinate_space, widths=widths, **recipe, **overrides)

    def check_config(self, config: GeneratorConfig) -> None:
        """The official CIPS mapping takes z as wide as w and no class label (it has no such
        options), so neither is invented here: a CIPS config with either is refused."""
        if config.latent_dim != config.style_dim:
            raise CipsError(
                f"A CIPS generator takes z as wide as w (the official code has no z_dim), not z_dim {config.latent_dim} "
                f"with style_dim {config.style_dim}."
            )
        if config.c_dim:
            raise CipsError(f"A CIPS generator is unconditional (the official code has no class labels), not c_dim {config.c_dim}.")

    def facts(self, config: GeneratorConfig) -> dict[str, Any]:
        # The official channel multiplier shows in block 4's width (blocks 0-3 are always 512).
        if config.n_blocks > 4 and config.widths[4] % 256 == 0:
            return {"channel_multiplier": config.widths[4] // 256}
        return {"channel_multiplier": None}

    def has_embedding(self, config: GeneratorConfig) -> bool:
        return config.arch != "ne"

    def style_layers(self, config: GeneratorConfig) -> int:
        """Every modulated layer in the order it runs: the first layer, then per block its two
        styled layers and (CIPSskip, CIPS-NE) its ToRGB; CIPSres ends with one ToRGB. The
        official CIPS feeds one w to all of them (it was trained so: see ``trained_with_layer_styles``)."""
        blocks = len(config.widths)
        return 1 + 2 * blocks + 1 if config.arch == "res" else 1 + 3 * blocks

    def activation_floats_per_point(self, config: GeneratorConfig, per_point_style: bool = False) -> int:
        return activation_floats(config, per_point_style)


@hookimpl
def register_families(register):
    register(CipsFamily())
