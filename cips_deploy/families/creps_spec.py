"""The CREPS family as the runtime sees it: presets, the official rules, line and pixel memory.

Framework-free: registered through ``register_families`` like any family, so a torch-free
install checks, sizes and renders CREPS engines (the line + compose grid engines need the
shapes of a line: :meth:`CrepsFamily.line_floats_per_value`). The PyTorch modules are
:mod:`.creps`, imported only by :meth:`CrepsFamily.generator_class`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.families import Family
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.errors import CipsError

RANK = 8  # slots per axis of the bi-line representation (the official rank)

# CREPS recipes in the official constructor's terms. paper256/512/1024 are ``train.py --cfg=creps``
# (cbase 32768 and cmax 512, doubled for the generator: 65536 / 1024; map depth 8; z = w = 512).
PRESETS: dict[str, dict[str, int]] = {
    "paper256": dict(size=256, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "paper512": dict(size=512, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "paper1024": dict(size=1024, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "small": dict(size=128, style_dim=256, n_mlp=4, channel_base=8192, channel_max=256, biline_channels=32),
    "tiny": dict(size=32, style_dim=64, n_mlp=2, channel_base=512, channel_max=32, biline_channels=16),
}


def creps_widths(size: int, channel_base: int, channel_max: int) -> tuple[int, ...]:
    """Official CREPS channels: min(channel_base // q, channel_max) for blocks q = 4, 8, ..., size."""
    if size < 8 or size & (size - 1):
        raise CipsError(f"A CREPS generator's size must be a power of two of at least 8, not {size}.")
    return tuple(min(channel_base // 2**k, channel_max) for k in range(2, int(math.log2(size)) + 1))


def creps_config(preset: str = "tiny", coordinate_space: str = "plane", **overrides: Any) -> GeneratorConfig:
    """A CREPS config from a preset; ``overrides`` change recipe fields (``size``,
    ``channel_base``, ``channel_max``, ...) or config fields; ``widths=(...)`` sets them outright."""
    if preset not in PRESETS:
        raise CipsError(f"Unknown CREPS preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    recipe = {**PRESETS[preset], **overrides}
    config_fields = {field.name for field in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(recipe) - config_fields - {"channel_base", "channel_max"})
    if unknown:
        raise CipsError(f"Unknown generator option(s): {', '.join(unknown)}.")
    base, cap = recipe.pop("channel_base"), recipe.pop("channel_max")
    widths = tuple(recipe.pop("widths", None) or creps_widths(int(recipe["size"]), int(base), int(cap)))
    recipe.setdefault("hidden", widths[0])
    return GeneratorConfig(arch="creps", coordinate_space=coordinate_space, widths=widths, **recipe)


class CrepsFamily(Family):
    name = "CREPS"
    description = "CREPS (Nguyen et al., CVPR 2023): deep layers on row and column lines, composed per pixel by a bi-line product"
    archs = {"creps": "CREPS"}
    presets = tuple(PRESETS)
    generator = "cips_deploy.families.creps:CrepsGenerator"
    line_factored = True

    def preset_config(self, preset: str, arch: str, coordinate_space: str, **overrides: Any) -> GeneratorConfig:
        return creps_config(preset, coordinate_space=coordinate_space, **overrides)

    def check_config(self, c: GeneratorConfig) -> None:
        """The official architecture's constraints: power-of-two size, one width per block, rank 8."""
        if c.size < 8 or c.size & (c.size - 1):
            raise CipsError(f"A CREPS generator's size must be a power of two of at least 8, not {c.size}.")
        blocks = int(math.log2(c.size)) - 1
        if len(c.widths) != blocks:
            raise CipsError(f"A CREPS generator of size {c.size} has {blocks} block widths (4 .. {c.size}), not {len(c.widths)}.")
        if c.widths[0] % 2:
            raise CipsError(f"A CREPS input layer needs an even width, not {c.widths[0]}.")
        if c.line_rank != RANK:
            raise CipsError(f"The official CREPS rank is {RANK} slots per axis, not {c.line_rank}.")
        if c.biline_channels < 4 or c.num_fp16_res < 0 or c.n_mlp < 1:
            raise CipsError("A CREPS generator needs biline_channels >= 4, num_fp16_res >= 0 and at least one mapping layer.")

    def activation_floats_per_point(self, config: GeneratorConfig, per_point_style: bool = False) -> int:
        """Peak floats per point of the per-point path (counted from the code, not measured).

        The input layer holds about 4 r C (phases, both halves, sines, modulated); a line
        layer in -> out holds r (in + 3 out) (input, product, biased and activated copies);
        both axes' finished lines 2 (K - 1) r bc; the pixel part at most 16 bc. Per-point
        styles add the input layer's per-point modulation 2 r C, a layer's style and
        modulated input r in + in, and 2 S.
        """
        widths, bc = config.widths, config.biline_channels
        layers = [(widths[0], widths[0])] + [(a, b) for a, b in zip(widths, widths[1:])] + [(b, b) for b in widths[1:]]
        worst = max(RANK * (i + 3 * o) + (RANK * i + i if per_point_style else 0) for i, o in layers)
        first = 4 * RANK * widths[0] + (2 * RANK * widths[0] if per_point_style else 0)
        lines = 2 * (len(widths) - 1) * RANK * bc
        return max(worst, first) + lines + 16 * bc + (2 * config.style_dim if per_point_style else 0) + 9

    # The official CREPS trains with StyleGAN2's style mixing: num_ws per-layer styles.
    trained_with_layer_styles = True

    def style_layers(self, config: GeneratorConfig) -> int:
        """The official ``num_ws``, 2 (log2 R - 1) + 1: the input layer, b4's layer, then per
        block of 8 .. R its two line layers and its bi-line projection (the last style also
        drives the per-pixel blocks)."""
        return 2 * len(config.widths) + 1

    def line_slots(self, config: GeneratorConfig) -> int:
        return RANK

    def line_floats_per_value(self, config: GeneratorConfig) -> int:
        """Floats a cached line value holds per sample: (blocks - 1) x r x bc."""
        return (len(config.widths) - 1) * RANK * config.biline_channels

    def compose_floats_per_point(self, config: GeneratorConfig) -> int:
        """Peak floats per point of composing from cached lines (counted from the code, not measured).

        Point by point, a point gathers its row's and column's lines, 2 (K - 1) r bc; a block
        gathers h + w lines for h w points (negligible). Then the composed levels (K - 1) bc,
        a decoder's input and output (at most 4 bc + 2 bc), block0's 4 bc input and output
        and the colours.
        """
        levels, bc = len(config.widths) - 1, config.biline_channels
        return 2 * levels * RANK * bc + levels * bc + 8 * bc + 9


@hookimpl
def register_families(register):
    register(CrepsFamily())
