"""Option groups that several commands share, declared once: which model, and how to synthesize.

``render`` and ``video`` (and any plugin command that renders) stack them as decorators;
the option names, defaults and help are the same everywhere, so a flag learnt on one
command works on the other. A contract, not part of ``cips_deploy.cli``: plugin modules
import it while the command-line package is still loading them. Architectures and presets
are the installed families' (:class:`Installed` looks them up when a command runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import click

from cips_deploy.contracts.config import COORDINATE_SPACES
from cips_deploy.contracts.families import all_presets, known_archs


class Installed(click.Choice):
    """A choice among names the installed plugins provide (architectures, presets), looked up
    when a command parses its arguments or shows its help, not when its module is imported
    (plugins are still loading then)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names
        super().__init__([])

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value) -> None:
        pass  # click.Choice.__init__ sets it; the names come from the plugins


ARCHITECTURE = Installed(known_archs)
PRESET = Installed(all_presets)


def _stack(options: list[Callable]) -> Callable:
    """A decorator applying ``options`` so that they are listed in this order."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def model_options(verb: str = "Render", presets: click.Choice = PRESET) -> Callable:
    """--checkpoint, or --preset with --arch, --coordinate-space and --model-seed."""
    return _stack([
        click.option("--checkpoint", type=click.Path(path_type=Path), help="Model file (a cips-deploy or official checkpoint); default: the bundled demo panorama model."),
        click.option("--preset", type=presets, help=f"{verb} a random-weight model of this preset instead."),
        click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="With --preset: architecture."),
        click.option("--coordinate-space", type=click.Choice(COORDINATE_SPACES), default="plane", show_default=True, help="With --preset."),
        click.option("--model-seed", type=int, default=0, show_default=True, help="With --preset: seed of the random weights."),
    ])


synthesis_options = _stack([
    click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi (1 = none)."),
    click.option("--chunker", default=None, help="fixed, rows or memory (default: fixed with --chunk-size, else memory)."),
    click.option("--chunk-size", type=int, default=None, help="Points (fixed) or image rows (rows) per chunk."),
    click.option("--memory-budget", type=float, default=None, help="MB of working memory per chunk (memory chunker; default: the backend's choice, 32 for torch on a CPU)."),
    click.option("--backend", default=None, help="Synthesis backend (see `cips-deploy plugins`); default: the one the model file names (onnxruntime for .onnx, tensorrt for .plan), else torch."),
    click.option("--device", default="cpu", show_default=True, help="Device for the backend: cpu, cuda, cuda:1, ..."),
    click.option("--backend-option", "backend_options", multiple=True, metavar="NAME=VALUE", help="A backend option; repeatable."),
])
"""--truncation, the chunking (--chunker, --chunk-size, --memory-budget) and the backend
(--backend, --device, --backend-option); backend options' own flags come from
:mod:`.backend_flags`."""
