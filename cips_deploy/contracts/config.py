"""Generator configurations, and presets by name.

A :class:`GeneratorConfig` says everything needed to build a generator's modules: the
architecture, the widths of every block, and the coordinate space. It travels inside every
checkpoint and engine as JSON, so it holds plain values only. Which architectures exist, and
their rules and recipes, is each family's to say (:mod:`cips_deploy.contracts.families`):
:func:`preset_config` asks the family of ``arch`` (CIPS's ``paper256`` is exactly the
published 256 configuration).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from cips_deploy.contracts.families import family_of
from cips_deploy.errors import CipsError

COORDINATE_SPACES = ("plane", "cylinder")


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a CIPS generator.

    arch:              an architecture an installed family builds: CIPS's ``skip``
                       (CIPSskip: a ToRGB after every block, summed), ``res`` (CIPSres:
                       residual blocks, one ToRGB at the end), ``ne`` (CIPSskip without the
                       coordinate-embedding grid, the paper's CIPS-NE); CREPS's ``creps``
                       (row and column "bi-line" features, :mod:`cips_deploy.families.creps`).
    size:              training resolution; the embedding grid is ``size x size``.
    hidden:            width of the Fourier features and of the embedding grid.
    style_dim:         width of w (and of z unless ``z_dim`` says otherwise).
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
    z_dim:             width of z where it differs from w's (official CREPS ``z_dim != w_dim``);
                       None: equal to ``style_dim`` (configs written before the field existed have none).
    c_dim:             classes of a class-conditional model (official ``c_dim``; the mapping
                       embeds a one-hot label ``c [B, c_dim]``); 0: unconditional.

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
    z_dim: int | None = None
    c_dim: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)  # whole numbers in range before anything multiplies them
        object.__setattr__(self, "widths", tuple(int(width) for width in self.widths))
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
        if self.z_dim == self.style_dim:
            object.__setattr__(self, "z_dim", None)  # one spelling of "z as wide as w": equal configs compare equal
        if self.line_rank < 1:
            raise CipsError(f"The bi-line rank must be a positive integer, not {self.line_rank}.")
        self.family.check_config(self)  # the family states its own rules (and refuses an unknown arch)

    @property
    def family(self):
        """The :class:`~cips_deploy.contracts.families.Family` that builds this config."""
        return family_of(self.arch)

    @property
    def arch_name(self) -> str:
        """The architecture's display name (``CIPSskip``, ``CREPS``)."""
        return self.family.archs[self.arch]

    @property
    def has_embedding(self) -> bool:
        """Whether the generator reads a learned coordinate-embedding grid (CIPS: all but CIPS-NE)."""
        return self.family.has_embedding(self)

    @property
    def channel_multiplier(self) -> int | None:
        """The official channel multiplier, where the family has one and the widths reveal it."""
        return self.family.facts(self).get("channel_multiplier")

    @property
    def n_blocks(self) -> int:
        return len(self.widths)

    @property
    def latent_dim(self) -> int:
        """Z, the width of the latent z the mapping takes (``z_dim``, or ``style_dim`` when None)."""
        return self.style_dim if self.z_dim is None else self.z_dim

    @property
    def conditional(self) -> bool:
        """Whether the mapping takes a class label ``c [B, c_dim]`` (``c_dim > 0``)."""
        return self.c_dim > 0

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON values; ``z_dim`` and ``c_dim`` only where they say something (not
        None, not 0), so an unconditional model's JSON, and every hash of it, is what it was before
        those fields existed, and older versions of the package still read it."""
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        if data["z_dim"] is None:
            del data["z_dim"]
        if data["c_dim"] == 0:
            del data["c_dim"]
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
    from cips_deploy.contracts.limits import CONFIG_LIMITS, MAX_BLOCKS, MAX_WIDTH, Z_DIM_LIMIT

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
    z_dim = config.z_dim
    if z_dim is not None and (not _is_whole(z_dim) or not 1 <= z_dim <= Z_DIM_LIMIT):
        raise CipsError(f"The generator's z_dim must be a whole number from 1 to {Z_DIM_LIMIT:,} or null, not {z_dim!r:.40}.")
    clamp = config.fc_clamp
    if clamp is not None and (isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not (math.isfinite(clamp) and clamp > 0)):
        raise CipsError(f"The generator's fc_clamp must be a finite number above 0 or null, not {clamp!r:.40}.")
    lr = config.lr_mlp
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and 0 < lr <= 1000):
        raise CipsError(f"The mapping network's lr_mlp must be a finite number in (0, 1000], not {lr!r:.40}.")


def _is_whole(value: Any) -> bool:
    """An int (not a bool, not a float, however integral: JSON configs write sizes as integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def preset_config(
    preset: str = "tiny", arch: str = "skip", coordinate_space: str = "plane", **overrides: Any
) -> GeneratorConfig:
    """A config from a named preset of the family that builds ``arch``; ``overrides`` change
    recipe fields (CIPS: ``size``, ``channel_multiplier``, ``channel_max``; CREPS:
    ``channel_base``) or config fields; ``widths=(...)`` sets them outright."""
    return family_of(arch).preset_config(preset, arch=arch, coordinate_space=coordinate_space, **overrides)
