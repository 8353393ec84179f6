"""Training options: one dataclass, validated once, saved with every checkpoint.

Every number is checked by the one parser of numeric options
(:class:`~cips_deploy.contracts.command_options.Number`): :data:`NUMBERS` declares each
field's range once, and the ``train`` command's options use the same types, so the command
line, the Python API and the options saved in a run are held to the same rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

from cips_deploy.contracts.command_options import SEED, Number, real, whole
from cips_deploy.contracts.config import preset_config
from cips_deploy.contracts.families import family_of
from cips_deploy.errors import CipsError

MAX_BATCH = 4096  # views per step over all processes; large runs of StyleGAN use up to 2048
MAX_STEPS = 10**9

# Each numeric field's range; the command's options take the same types.
NUMBERS: dict[str, Number] = {
    "resolution": whole(8, 1024),  # and a power of two: checked below, naming the preset
    "batch": whole(1, MAX_BATCH),
    "steps": whole(1, MAX_STEPS),
    "seed": SEED,
    "crop": whole(8, 1024),  # and a power of two up to the resolution
    "fov": real(0.0, 360.0, open_low=True),
    "lr": real(0.0, 1.0, open_low=True),  # Adam's step; beyond 1 the weights only explode
    "r1_gamma": real(0.0, 1e5),
    "r1_interval": whole(1, 10**6),
    "ema_kimg": real(0.0, 1e6),
    "ema_rampup": real(0.0, 1e3),
    "pl_weight": real(0.0, 1e3),
    "pl_interval": whole(1, 10**6),
    "checkpoint_every": whole(1, MAX_STEPS),
    "sample_every": whole(1, MAX_STEPS * MAX_BATCH),  # counted in images
    "fid_every": whole(0, MAX_STEPS),
}
TEXTS = ("data", "out", "preset", "arch", "topology", "device")


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
        for name in TEXTS:  # options read from a saved run may hold anything
            if not isinstance(getattr(self, name), str):
                raise CipsError(f"--{name} must be text, not {getattr(self, name)!r:.40}.")
        if not self.out.strip():  # Path("") is the current folder: a run would land there unasked
            raise CipsError(f"--out {self.out!r:.40} names no folder; give the run's folder, e.g. --out runs/first.")
        for name, kind in NUMBERS.items():
            value = getattr(self, name)
            if value is not None or name not in ("resolution", "crop"):
                object.__setattr__(self, name, kind.check(value, "--" + name.replace("_", "-")))
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
            raise CipsError(f"Training topology must be flat or cylinder, not {self.topology!r:.40}.")

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
    # Options that belong to this machine and this command, never taken from a saved run.
    LOCAL = ("out", "data", "device")

    def check_resumable_from(self, saved: dict[str, Any]) -> None:
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        for name, value in self.to_dict().items():  # runs saved before an option existed had its default
            if name not in self.RESUMABLE and saved.get(name, defaults[name]) != value:
                raise CipsError(
                    f"Cannot resume: the run was started with {name}={saved.get(name)!r:.40}, not {value!r:.40}."
                )

    def resumed(self, saved: dict[str, Any], given: Iterable[str] | None = None) -> "TrainOptions":
        """These options for continuing the run whose options were ``saved``: every option not
        in ``given`` (the ones the user named; None: all) is the run's own, so that
        ``train --resume`` need not repeat --resolution or --batch; the given ones must match."""
        names = {field.name for field in dataclasses.fields(self)}
        given = names if given is None else set(given)
        taken = {name: saved[name] for name in names - given - set(self.LOCAL) if name in saved}
        try:
            options = dataclasses.replace(self, **taken)
        except CipsError as error:
            raise CipsError(f"Cannot resume: the options saved in the run are unusable ({str(error).rstrip('.')}).") from None
        options.check_resumable_from(saved)
        return options
