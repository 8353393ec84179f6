"""What several commands share: choosing the model, parsing seeds and NAME=VALUE lists,
checking an output before rendering, tiling a grid of seeds, the progress bar."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from cips_deploy.contracts.command_options import MAX_SEED, SEED, output_location, usable_path
from cips_deploy.errors import CipsError, printable
from cips_deploy.models import DEMO_ENGINE, DEMO_MODEL
from cips_deploy.runtime.coords import CoordinateTransform
from cips_deploy.runtime.render import Rendering
from cips_deploy.runtime.render_setup import Controls

MAX_SEEDS = 256
_SEED_TEXT = re.compile(r"[0-9]+")  # a seed as --seeds writes it
BACKEND_HELP = (
    "Synthesis backend (see `cips-deploy plugins`); default: the one the model file names "
    "(onnxruntime for .onnx, tensorrt for .plan), else torch."
)


def backend_from_the_model(command: click.Command) -> click.Command:
    """``--backend`` defaults to None: the backend is chosen from the model (an engine says what it is)."""
    for param in command.params:
        if param.name == "backend":
            param.default, param.show_default, param.help = None, False, BACKEND_HELP
    return command


def choose_model(
    checkpoint: Path | None, preset: str | None, arch: str, coordinate_space: str, model_seed: int, backend: str | None = None
) -> Any:
    """A model file (a checkpoint or an exported engine: the backend reads it) or a
    random-weight Generator of a preset.

    Without either, the bundled demo: its ONNX engine (the torch-free runtime renders it),
    or its checkpoint when the torch backend is named."""
    if checkpoint is not None and preset is not None:
        raise CipsError("Give either --checkpoint or --preset, not both.")
    if checkpoint is not None:
        return checkpoint
    if preset is None:
        demo = DEMO_MODEL if backend == "torch" else DEMO_ENGINE
        if not demo.exists():
            raise CipsError(f"No --checkpoint given and the bundled demo model {demo} is missing; reinstall cips-deploy.")
        return demo
    from cips_deploy._compat import require_build_extra

    require_build_extra("--preset (a random-weight PyTorch model)")
    from cips_deploy import create

    return create(preset, arch=arch, coordinate_space=coordinate_space, seed=model_seed)


def parse_seeds(seed: int | None, seeds: str | None, limit: int = MAX_SEEDS, what: str = "a grid") -> list[int]:
    """[seed] or the seeds of a list such as ``0-3,7`` (at most ``limit``, for ``what``).

    Every seed is one :data:`SEED` (0 to 2**32 - 1). The count is added up from the ranges
    before any is expanded, so ``0-4294967295`` costs nothing and is reported as it is.
    """
    if seed is not None and seeds is not None:
        raise CipsError("Give either --seed or --seeds, not both.")
    if seeds is None:
        return [0 if seed is None else SEED.check(seed, "--seed")]
    ranges = [_seed_range(part, seeds) for part in seeds.replace(" ", "").split(",")]
    count = sum(last - first + 1 for first, last in ranges)
    if count > limit:
        raise CipsError(f"--seeds lists {count:,} seeds; {what} takes at most {limit:,}.")
    return [each for first, last in ranges for each in range(first, last + 1)]


def _seed_range(part: str, seeds: str) -> tuple[int, int]:
    """(first, last) of one item of a --seeds list: ``7`` or ``0-3``."""
    first, dash, last = part.partition("-")
    texts = (first, last) if dash else (first, first)
    if not all(_SEED_TEXT.fullmatch(text) for text in texts):
        raise CipsError(f"--seeds takes seeds and ranges such as 0-3 or 1,5,9, not {seeds!r:.80}.")
    for text in texts:  # compared as text first: int() of a long run of digits is slow
        if len(text) > 12 or int(text) > MAX_SEED:
            raise CipsError(f"--seeds names seed {text:.20}, but seeds go from 0 to 2**32 - 1.")
    low, high = int(texts[0]), int(texts[1])
    if high < low:
        raise CipsError(f"--seeds takes seeds and ranges such as 0-3 or 1,5,9, not {part!r:.40} (its end comes before its start).")
    return low, high


def make_controls(
    translate: tuple[float, float] | None = None, rotate: float | None = None, scale: float | None = None,
    mix_seed: int | None = None, mix_from: int | None = None, class_index: int | None = None, w_file: Path | None = None,
) -> Controls:
    """The render controls of the shared options (transform, style mixing, class) and ``--w``:
    the saved style read (and checked as a file) here, before any model is built."""
    transform = None
    if translate is not None or rotate is not None or scale is not None:
        transform = CoordinateTransform(translate or (0.0, 0.0), rotate or 0.0, 1.0 if scale is None else scale)
    w = None
    if w_file is not None:
        from cips_deploy.media.saved_style import read_saved_style

        w = read_saved_style(w_file).w
    return Controls.make(transform, mix_seed, mix_from, class_index, w, None if w_file is None else f"The style file {w_file}")


def parse_assignments(items: tuple[str, ...], what: str) -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; values stay strings for the plugin to convert."""
    parsed: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise CipsError(f"A {what} is written NAME=VALUE, not {item!r}.")
        parsed[name.strip()] = value.strip()
    return parsed


def check_output(output: Path, force: bool = False, extensions: tuple[str, ...] = (".png",)) -> None:
    """Refuse an output we cannot write (or must not replace) before spending time on the render.

    The path rule is :func:`~cips_deploy.contracts.command_options.output_location`'s (a
    usable name outside /proc and /sys, an existing and writable folder); here come the
    output's own rules: not a folder, not replaced without --force, a known suffix."""
    usable_path(output)
    try:
        if output.is_dir():
            raise CipsError(f"Cannot write {output}: it is a directory.")
        if output.exists() and not force:
            raise CipsError(f"{output} already exists; pass --force to replace it.")
    except OSError as error:  # a name too long for the file system, a loop of links
        raise CipsError(f"Cannot write {output}: {error.strerror or error}.") from None
    if output.suffix.lower() not in extensions:
        raise CipsError(f"The output {output} must be a {' or '.join(extensions)} file.")
    output_location(output)


def tile(images: list[np.ndarray]) -> np.ndarray:
    """One image, or several uint8 [H, W, 3] as a near-square grid, row by row."""
    if len(images) == 1:
        return images[0]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    height, width, _ = images[0].shape
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return grid


def summary(output: Path, renderings: list[Rendering], height: int, width: int, controls: Any = None) -> str:
    """The closing sentence of a render: what was drawn (seeds, or the saved style of --w, with
    the class and the mix seed), and how many points in how many chunks."""
    first = renderings[0]
    seeds = ", ".join(str(rendering.seed) for rendering in renderings)
    points = sum(rendering.points_evaluated for rendering in renderings)
    chunks = sum(rendering.chunks for rendering in renderings)
    if getattr(controls, "w", None) is not None:
        source = controls.w_source or "a given style"  # a sentence's subject ("The style file proj.npz")
        drawn = source[:1].lower() + source[1:]
    else:
        drawn = f"seed{'s' if len(renderings) > 1 else ''} {seeds}"
        if getattr(controls, "class_index", None) is not None:
            drawn += f", class {controls.class_index}"
        if getattr(controls, "mix_seed", None) is not None:
            drawn += f", mixed with seed {controls.mix_seed} from style input {controls.mix_from}"
    text = (
        f"Wrote {printable(str(output))}: {height}x{width} {first.topology} render of {drawn}; "
        f"evaluated {points:,} points in {chunks:,} chunk{'s' if chunks != 1 else ''}"
    )
    pixels = height * width * len(renderings)
    if points != pixels:
        text += f" ({points / pixels:.1%} of {pixels:,} pixels)"
    return text + "."


class ChunkProgress:
    """``render_detailed``'s progress callback as a click progress bar on stderr."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.bar = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
