"""Generator configurations and named presets.

A :class:`GeneratorConfig` says everything needed to build a generator's modules: the
architecture, the widths of every block, and the coordinate space. It travels inside every
checkpoint and engine as JSON, so it holds plain values only.

Presets are recipes in the official code's terms (training size, hidden width, style width,
mapping depth, channel multiplier); :func:`preset_config` turns one into a config with the
official channel table, so ``paper256`` is exactly the published 256 configuration.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cips_deploy.errors import CipsError

ARCHITECTURES = ("skip", "res", "ne", "creps")
ARCHITECTURE_NAMES = {"skip": "CIPSskip", "res": "CIPSres", "ne": "CIPS-NE", "creps": "CREPS"}
COORDINATE_SPACES = ("plane", "cylinder")


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a CIPS generator.

    arch:              ``skip`` (CIPSskip: a ToRGB after every block, summed), ``res``
                       (CIPSres: residual blocks, one ToRGB at the end), ``ne`` (CIPSskip
                       without the coordinate-embedding grid, the paper's CIPS-NE) or
                       ``creps`` (CREPS: row and column "bi-line" features, see
                       :mod:`cips_deploy.families.creps`).
    size:              training resolution; the embedding grid is ``size x size``.
    hidden:            width of the Fourier features and of the embedding grid.
    style_dim:         width of z and w.
    n_mlp:             number of equalized-lr layers in the mapping network.
    widths:            output width of every block (block i has two modulated layers);
                       the first layer maps the input features to ``widths[0]``.
    coordinate_space:  ``plane`` or ``cylinder`` (u is an angle and wraps at +-1).
    lr_mlp:            learning-rate multiplier of the mapping network.
    line_rank:         CREPS only: slots per axis of the bi-line representation (the
                       official rank, always 8).
    biline_channels:   CREPS only: width bc of the bi-line features and decoders (official 32).
    num_fp16_res:      CREPS only: line blocks in float16 under mixed precision (official 0).
    fc_clamp:          CREPS only: clamp of the line blocks' outputs (official 256; None: off).

    For CREPS, ``widths`` are the official channels of blocks 4, 8, ..., size
    (min(channel_base // q, channel_max)) and ``hidden`` is the input layer's width, widths[0].
    """

    arch: str = "skip"
    size: int = 256
    hidden: int = 512
    style_dim: int = 512
    n_mlp: int = 8
    widths: tuple[int, ...] = (512, 512, 512, 512, 512, 256, 128)
    coordinate_space: str = "plane"
    lr_mlp: float = 0.01
    line_rank: int = 8
    biline_channels: int = 32
    num_fp16_res: int = 0
    fc_clamp: float | None = 256.0

    def __post_init__(self) -> None:
        check_field_types(self)  # whole numbers in range before anything multiplies them
        object.__setattr__(self, "widths", tuple(int(width) for width in self.widths))
        if self.arch not in ARCHITECTURES:
            raise CipsError(f"Unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
        if self.coordinate_space not in COORDINATE_SPACES:
            raise CipsError(
                f"Unknown coordinate space {self.coordinate_space!r}; choose one of {', '.join(COORDINATE_SPACES)}."
            )
        for name in ("size", "hidden", "style_dim"):
            if int(getattr(self, name)) < 1:
                raise CipsError(f"The generator's {name} must be a positive integer, not {getattr(self, name)}.")
        if self.n_mlp < 0:
            raise CipsError(f"The mapping network needs zero or more layers, not {self.n_mlp}.")
        if not self.widths or min(self.widths) < 1:
            raise CipsError(f"A generator needs at least one block of positive width, not widths={self.widths}.")
        if self.line_rank < 1:
            raise CipsError(f"The bi-line rank must be a positive integer, not {self.line_rank}.")
        from cips_deploy.families.generator import family_class  # the family states its own rules (imported late: it imports this module)

        family_class(self.arch).check_config(self)

    @property
    def has_embedding(self) -> bool:
        """Whether the generator reads a learned coordinate-embedding grid (all but CIPS-NE)."""
        return self.arch in ("skip", "res")

    @property
    def n_blocks(self) -> int:
        return len(self.widths)

    @property
    def channel_multiplier(self) -> int | None:
        """The official CIPS channel multiplier, where the widths reveal it (blocks 0-3 never do;
        other families have none)."""
        if self.arch not in FAMILY_CONFIGS and self.n_blocks > 4 and self.widths[4] % 256 == 0:
            return self.widths[4] // 256
        return None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        if not isinstance(data, dict):
            raise CipsError(f"A generator config is a JSON object, not {type(data).__name__}.")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CipsError(f"The checkpoint's config has fields this version does not know: {', '.join(unknown)}.")
        return cls(**data)


def check_field_types(config: GeneratorConfig) -> None:
    """One sentence for a field of the wrong type or out of range (limits: :mod:`.limits`).

    Configs arrive as JSON from files: NaN, infinities, strings, fractions, booleans and
    2**40 must all be refused here, before a module or a tensor is sized by them.
    """
    from cips_deploy.contracts.limits import CONFIG_LIMITS, MAX_BLOCKS, MAX_WIDTH

    for name in ("arch", "coordinate_space"):
        if not isinstance(getattr(config, name), str):
            raise CipsError(f"The generator's {name} must be a string, not {getattr(config, name)!r:.40}.")
    for name, (low, high) in CONFIG_LIMITS.items():
        value = getattr(config, name, None)
        if not _is_whole(value) or not low <= value <= high:
            raise CipsError(f"The generator's {name} must be a whole number from {low} to {high:,}, not {value!r:.40}.")
    widths = config.widths
    if not isinstance(widths, (list, tuple)) or not 1 <= len(widths) <= MAX_BLOCKS:
        count = len(widths) if isinstance(widths, (list, tuple)) else widths
        raise CipsError(f"A generator has 1 to {MAX_BLOCKS} blocks, not {count!r:.40}.")
    for width in widths:
        if not _is_whole(width) or not 1 <= width <= MAX_WIDTH:
            raise CipsError(f"Every block width must be a whole number from 1 to {MAX_WIDTH:,}, not {width!r:.40}.")
    lr = config.lr_mlp
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and 0 < lr <= 1000):
        raise CipsError(f"The mapping network's lr_mlp must be a finite number in (0, 1000], not {lr!r:.40}.")


def _is_whole(value: Any) -> bool:
    """An int (not a bool, not a float, however integral: JSON configs write sizes as integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


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


# Recipes in the official constructor's terms. ``paper256`` and ``paper1024`` are exactly
# the published configurations; ``small`` and ``tiny`` keep the structure at CPU-friendly widths.
PRESETS: dict[str, dict[str, int]] = {
    "paper256": dict(size=256, hidden=512, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),
    "paper1024": dict(size=1024, hidden=512, style_dim=512, n_mlp=8, channel_multiplier=2, channel_max=512),
    "small": dict(size=128, hidden=128, style_dim=256, n_mlp=4, channel_multiplier=1, channel_max=256),
    "tiny": dict(size=64, hidden=32, style_dim=64, n_mlp=2, channel_multiplier=1, channel_max=64),
}


def creps_widths(size: int, channel_base: int, channel_max: int) -> tuple[int, ...]:
    """Official CREPS channels: min(channel_base // q, channel_max) for blocks q = 4, 8, ..., size."""
    if size < 8 or size & (size - 1):
        raise CipsError(f"A CREPS generator's size must be a power of two of at least 8, not {size}.")
    return tuple(min(channel_base // 2**k, channel_max) for k in range(2, int(math.log2(size)) + 1))


# CREPS recipes in the official constructor's terms. paper256/512/1024 are ``train.py --cfg=creps``
# (cbase 32768 and cmax 512, doubled for the generator: 65536 / 1024; map depth 8; z = w = 512).
CREPS_PRESETS: dict[str, dict[str, int]] = {
    "paper256": dict(size=256, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "paper512": dict(size=512, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "paper1024": dict(size=1024, style_dim=512, n_mlp=8, channel_base=65536, channel_max=1024, biline_channels=32),
    "small": dict(size=128, style_dim=256, n_mlp=4, channel_base=8192, channel_max=256, biline_channels=32),
    "tiny": dict(size=32, style_dim=64, n_mlp=2, channel_base=512, channel_max=32, biline_channels=16),
}


def creps_config(preset: str = "tiny", coordinate_space: str = "plane", **overrides: Any) -> GeneratorConfig:
    """A CREPS config from a preset; ``overrides`` change recipe fields (``size``,
    ``channel_base``, ``channel_max``, ...) or config fields; ``widths=(...)`` sets them outright."""
    if preset not in CREPS_PRESETS:
        raise CipsError(f"Unknown CREPS preset {preset!r}; choose one of {', '.join(CREPS_PRESETS)}.")
    recipe = {**CREPS_PRESETS[preset], **overrides}
    config_fields = {field.name for field in dataclasses.fields(GeneratorConfig)}
    unknown = sorted(set(recipe) - config_fields - {"channel_base", "channel_max"})
    if unknown:
        raise CipsError(f"Unknown generator option(s): {', '.join(unknown)}.")
    base, cap = recipe.pop("channel_base"), recipe.pop("channel_max")
    widths = tuple(recipe.pop("widths", None) or creps_widths(int(recipe["size"]), int(base), int(cap)))
    recipe.setdefault("hidden", widths[0])
    return GeneratorConfig(arch="creps", coordinate_space=coordinate_space, widths=widths, **recipe)


# Families whose recipes are not CIPS's: their config builder.
FAMILY_CONFIGS = {"creps": creps_config}
# Every preset name of any family (for command-line choices).
PRESET_NAMES = sorted(set(PRESETS) | set(CREPS_PRESETS))


def preset_config(
    preset: str = "tiny", arch: str = "skip", coordinate_space: str = "plane", **overrides: Any
) -> GeneratorConfig:
    """Build a config from a named preset; ``overrides`` change recipe or config fields.

    Recipe fields (``size``, ``channel_multiplier``, ``channel_max``) recompute the widths;
    ``widths=(...)`` sets them outright.
    """
    if arch in FAMILY_CONFIGS:
        return FAMILY_CONFIGS[arch](preset, coordinate_space=coordinate_space, **overrides)
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
