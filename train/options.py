"""Training options: one dataclass, validated once, saved with every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cips_deploy.contracts.config import preset_config
from cips_deploy.contracts.families import family_of
from cips_deploy.errors import CipsError


@dataclass(frozen=True)
class TrainOptions:
    """Everything that defines a training run.

    resolution: side of a training view in pixels (a power of two, 8-1024); it is also
    the generator's ``size``, the side of its embedding grid. crop: patch side for
    patch-based training (None: whole views). topology: ``flat`` or ``cylinder`` (the
    model becomes cylinder-space and every view is a window of a 360-degree panorama of
    ``fov`` degrees). batch: total batch over all processes. steps: generator steps.
    ema_kimg: half-life of the generator EMA in thousands of images. pl_weight: path-length
    regularisation, lazily every ``pl_interval`` generator steps (0: off; the official CREPS
    and StyleGAN2 configs use 2 every 4).
    """

    data: str
    out: str
    preset: str = "tiny"
    arch: str = "skip"
    resolution: int | None = None
    batch: int = 16
    steps: int = 1000
    seed: int = 0
    crop: int | None = None
    topology: str = "flat"
    fov: float = 90.0
    lr: float = 0.002
    r1_gamma: float = 10.0
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    pl_weight: float = 0.0
    pl_interval: int = 4
    checkpoint_every: int = 500
    sample_every: int = 4000
    fid_every: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        family_of(self.arch)  # an unknown architecture: one sentence naming the installed ones
        preset = preset_config(self.preset, arch=self.arch)  # an unknown preset is one sentence
        if self.resolution is None:
            object.__setattr__(self, "resolution", preset.size)
        r = self.resolution
        if r < 8 or r > 1024 or r & (r - 1):
            raise CipsError(f"The {self.preset} preset trains at powers of two from 8 to 1024, not at resolution {r}.")
        if self.crop is not None and (self.crop < 8 or self.crop > r or self.crop & (self.crop - 1)):
            raise CipsError(f"--crop must be a power of two between 8 and the resolution ({r}), not {self.crop}.")
        if self.topology not in ("flat", "cylinder"):
            raise CipsError(f"Training topology must be flat or cylinder, not {self.topology!r}.")
        if not 0 < self.fov <= 360:
            raise CipsError(f"--fov must be between 0 and 360 degrees, not {self.fov}.")
        for name in ("batch", "steps", "r1_interval", "pl_interval", "checkpoint_every", "sample_every"):
            if getattr(self, name) < 1:
                raise CipsError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}.")
        if self.lr <= 0 or self.r1_gamma < 0 or self.ema_kimg < 0 or self.pl_weight < 0:
            raise CipsError("Learning rate must be positive and R1 gamma, EMA half-life and path-length weight non-negative.")

    @property
    def coordinate_space(self) -> str:
        return "cylinder" if self.topology == "cylinder" else "plane"

    @property
    def span(self) -> float:
        """Width of one view in u: a whole turn is 2."""
        return 2 * self.fov / 360

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Options that may change when a run is resumed; everything else must match.
    RESUMABLE = ("out", "steps", "checkpoint_every", "sample_every", "fid_every", "device", "data")

    def check_resumable_from(self, saved: dict[str, Any]) -> None:
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name, value in self.to_dict().items():  # runs saved before an option existed had its default
            if name not in self.RESUMABLE and saved.get(name, defaults[name]) != value:
                raise CipsError(
                    f"Cannot resume: the run was started with {name}={saved.get(name)!r}, not {value!r}."
                )
