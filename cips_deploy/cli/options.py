"""Option groups that several commands share, declared once: which model, and how to synthesize.

``render`` and ``video`` (and any plugin command that renders) stack them as decorators;
the option names, defaults and help are the same everywhere, so a flag learnt on one
command works on the other. A core module, not part of ``cips_deploy.cli``: plugin modules
import it while the command-line package is still loading them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import click

from cips_deploy.contracts.config import ARCHITECTURES, COORDINATE_SPACES, PRESET_NAMES


def _stack(options: list[Callable]) -> Callable:
    """A decorator applying ``options`` so that they are listed in this order."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def model_options(verb: str = "Render", presets: Iterable[str] = PRESET_NAMES) -> Callable:
    """--checkpoint, or --preset with --arch, --coordinate-space and --model-seed."""
    return _stack([
        click.option("--checkpoint", type=click.Path(path_type=Path), help="Model file (a cips-deploy or official checkpoint); default: the bundled demo panorama model."),
        click.option("--preset", type=click.Choice(list(presets)), help=f"{verb} a random-weight model of this preset instead."),
        click.option("--arch", type=click.Choice(ARCHITECTURES), default="skip", show_default=True, help="With --preset: architecture."),
        click.option("--coordinate-space", type=click.Choice(COORDINATE_SPACES), default="plane", show_default=True, help="With --preset."),
        click.option("--model-seed", type=int, default=0, show_default=True, help="With --preset: seed of the random weights."),
    ])


synthesis_options = _stack([
    click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi (1 = none)."),
    click.option("--chunker", default=None, help="fixed, rows or memory (default: fixed with --chunk-size, else memory)."),
    click.option("--chunk-size", type=int, default=None, help="Points (fixed) or image rows (rows) per chunk."),
    click.option("--memory-budget", type=float, default=None, help="MB of working memory per chunk (memory chunker; default: the backend's choice, 32 for torch on a CPU)."),
    click.option("--backend", default="torch", show_default=True, help="Synthesis backend (see `cips-deploy plugins`)."),
    click.option("--device", default="cpu", show_default=True, help="Device for the backend: cpu, cuda, cuda:1, ..."),
    click.option("--backend-option", "backend_options", multiple=True, metavar="NAME=VALUE", help="A backend option; repeatable."),
])
"""--truncation, the chunking (--chunker, --chunk-size, --memory-budget) and the backend
(--backend, --device, --backend-option); backend options' own flags come from
:mod:`.backend_flags`."""
