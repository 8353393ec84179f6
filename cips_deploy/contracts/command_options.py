"""Option groups that several commands share, declared once: which model, and how to synthesize;
the one parser for numbers and the one rule for output paths.

``render`` and ``video`` (and any plugin command that renders) stack them as decorators;
the option names, defaults and help are the same everywhere, so a flag learnt on one
command works on the other. A contract, not part of ``cips_deploy.cli``: plugin modules
import it while the command-line package is still loading them. Architectures and presets
are the installed families' (:class:`Installed` looks them up when a command runs).

Every numeric option is a :class:`Number` (:func:`whole`, :func:`real`, :data:`SEED`): text
that is no number is a usage error (exit 2, click's); a number that is not finite or is
outside the option's declared range is one sentence (:class:`~cips_deploy.errors.CipsError`,
exit 1). :meth:`Number.check` applies the same rule to values that come from Python or from
a saved file. :func:`output_location` is the rule for a path a command writes.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from cips_deploy.contracts.config import COORDINATE_SPACES
from cips_deploy.contracts.families import all_presets, known_archs
from cips_deploy.errors import CipsError


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

# ------------------------------------------------------------------------------ numbers

MAX_SEED = 2**32 - 1  # the largest seed numpy's RandomState takes (cips_deploy.runtime.seeds)
_MAX_TEXT = 100  # characters of a number on the command line; longer text is no number we take
_WHOLE_TEXT = re.compile(r"[+-]?[0-9]+")


class Number(click.ParamType):
    """A finite number from ``low`` to ``high`` (``None``: unbounded on that side; ``open_low``:
    ``low`` itself excluded), whole if ``whole``. One parser for every numeric option.

    ``convert`` (click) reads the command line: text that is no number fails as click's own
    types do (a usage error, exit 2); ``check`` judges a number, from the command line, from
    Python or from a saved file, and says what is wrong in one sentence (CipsError, exit 1).
    """

    def __init__(self, low: float | None = None, high: float | None = None, *, whole: bool = False, open_low: bool = False) -> None:
        self.low, self.high, self.whole, self.open_low = low, high, whole, open_low
        self.name = "integer" if whole else "float"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "INTEGER" if self.whole else "FLOAT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        option = _option_name(param)
        if not isinstance(value, str):  # a default, or a value given from Python
            return self.check(value, option)
        text = value.strip()
        if self.whole:
            if not _WHOLE_TEXT.fullmatch(text):
                self.fail(f"{value[:_MAX_TEXT]!r} is not a whole number.", param, ctx)
            if len(text) > _MAX_TEXT:  # int() of thousands of digits is slow, and out of any range
                return self.check(math.copysign(math.inf, -1 if text.startswith("-") else 1), option, shown=text[:40] + "...")
            return self.check(int(text), option)
        try:
            number = float(text) if len(text) <= _MAX_TEXT else None
        except ValueError:
            number = None
        if number is None:
            self.fail(f"{value[:_MAX_TEXT]!r} is not a number.", param, ctx)
        return self.check(number, option, shown=text)

    def check(self, value: Any, option: str, *, shown: str | None = None) -> int | float:
        """``value`` if it is a number this option takes, else one sentence naming ``option``."""
        shown = shown if shown is not None else _shown_number(value)
        kind = "whole number" if self.whole else "number"
        if isinstance(value, bool) or not isinstance(value, Real):
            raise CipsError(f"{option} must be a {kind}, not {shown}.")
        exact = isinstance(value, Integral)  # ints of any size: math.isnan(10**400) would overflow
        if not exact and math.isnan(value):
            raise CipsError(f"{option} must be a finite {kind}, not {shown}.")
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            bound = "greater than" if self.open_low else "at least"
            raise CipsError(f"{option} must be {bound} {_shown_number(self.low)}, not {shown}.")
        if self.high is not None and value > self.high:
            raise CipsError(f"{option} must be at most {_shown_number(self.high)}, not {shown}.")
        if not exact and not math.isfinite(value):
            raise CipsError(f"{option} must be a finite {kind}, not {shown}.")
        if self.whole and not exact:
            raise CipsError(f"{option} must be a whole number, not {shown}.")
        return int(value) if self.whole else float(value)


def whole(low: int | None = None, high: int | None = None) -> Number:
    """A whole number from ``low`` to ``high``."""
    return Number(low, high, whole=True)


def real(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> Number:
    """A finite number from ``low`` (excluded with ``open_low``) to ``high``."""
    return Number(low, high, open_low=open_low)


SEED = whole(0, MAX_SEED)
"""A seed: a whole number from 0 to 2**32 - 1, what numpy's RandomState (the seed rule) takes."""


def _option_name(param: click.Parameter | None) -> str:
    if param is None:
        return "The value"
    names = [name for name in getattr(param, "opts", ()) if name.startswith("--")]
    return names[0] if names else (param.human_readable_name or "The value")


def _shown_number(value: Any) -> str:
    """A number as a message shows it: 4,096; 1e+308; nan; anything else short."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return f"{value!r:.40}"
    if isinstance(value, Integral):
        if int(value).bit_length() > 128:  # str() of a huge int is slow, and refused past 4300 digits
            return f"a {int(value).bit_length()}-bit number"
        text = f"{int(value):,}"
        return text if len(text) <= 40 else f"{text[:40]}..."
    return repr(float(value))


# ------------------------------------------------------------------------ output paths

KERNEL_TREES = ("/proc", "/sys")  # the kernel's views of itself: never a place for files


def kernel_tree(path: str | os.PathLike) -> str | None:
    """``/proc`` or ``/sys`` when ``path`` (links resolved) lies in one, else None."""
    real_path = os.path.realpath(os.fspath(path))
    for tree in KERNEL_TREES:
        if real_path == tree or real_path.startswith(tree + "/"):
            return tree
    return None


def usable_path(path: str | os.PathLike, what: str = "output") -> Path:
    """``path`` if it can name an output at all: not empty, no NUL byte (the kernel cannot
    take it), not in /proc or /sys. Checked before anything looks at the path."""
    text = os.fspath(path)
    if not text.strip() or "\0" in text:
        raise CipsError(f"{text!r:.60} is not a usable path for the {what}.")
    tree = kernel_tree(text)
    if tree is not None:
        raise CipsError(f"Cannot write {text}: {tree} is a view of the kernel, not a place for files.")
    return Path(text)


def output_location(path: str | os.PathLike, what: str = "output") -> Path:
    """The one rule for a path a command writes, checked before any work: a usable name
    (:func:`usable_path`), its parent folder present (a command creates at most the last
    name itself, never a tree above it), and writable there. Returns the path.

    Writability is probed by creating and removing a temporary file, the only reliable test
    (permission bits say nothing for root, read-only mounts or kernel file systems).
    """
    path = usable_path(path, what)
    folder = path.parent
    try:
        if not folder.is_dir():
            # Name the part that is wrong: a file where a folder should be, or a missing folder.
            existing = next((part for part in (folder, *folder.parents) if part.exists()), None)
            if existing is not None and not existing.is_dir():
                raise CipsError(f"Cannot write {path}: {existing} is not a folder.")
            raise CipsError(f"Cannot write {path}: the folder {folder} does not exist.")
        probe = path if path.is_dir() else folder
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:  # a name too long, a loop of links, a read-only or full file system
        raise CipsError(f"Cannot write {path}: {error.strerror or error}.") from None
    return path


# ------------------------------------------------------------------------ option groups


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
        click.option("--model-seed", type=SEED, default=0, show_default=True, help="With --preset: seed of the random weights (0 to 2**32 - 1)."),
    ])


TRUNCATION = real(-100.0, 100.0)  # psi: 1 is none, 0 the average style; far beyond either only overflows
CHUNK_SIZE = whole(1, 2**31 - 1)  # points or rows per chunk; above it an index overflows
MEMORY_BUDGET = real(0.0, float(1 << 20), open_low=True)  # MB per chunk: up to a terabyte

synthesis_options = _stack([
    click.option("--truncation", "--trunc", "truncation", type=TRUNCATION, default=1.0, show_default=True, help="Truncation psi (1 = none; -100 to 100)."),
    click.option("--chunker", default=None, help="fixed, rows or memory (default: fixed with --chunk-size, else memory)."),
    click.option("--chunk-size", type=CHUNK_SIZE, default=None, help="Points (fixed) or image rows (rows) per chunk."),
    click.option("--memory-budget", type=MEMORY_BUDGET, default=None, help="MB of working memory per chunk (memory chunker; default: the backend's choice, 32 for torch on a CPU)."),
    click.option("--backend", default=None, help="Synthesis backend (see `cips-deploy plugins`); default: the one the model file names (onnxruntime for .onnx, tensorrt for .plan), else torch."),
    click.option("--device", default="cpu", show_default=True, help="Device for the backend: cpu, cuda, cuda:1, ..."),
    click.option("--backend-option", "backend_options", multiple=True, metavar="NAME=VALUE", help="A backend option; repeatable."),
])
"""--truncation (or --trunc, StyleGAN's spelling), the chunking (--chunker, --chunk-size, --memory-budget) and the backend
(--backend, --device, --backend-option); backend options' own flags come from
:mod:`.backend_flags`."""


class NumberPair(click.ParamType):
    """Two numbers written ``A,B`` (``--translate 0.5,-0.25``), each a :class:`Number` of ``number``'s range."""

    name = "pair"

    def __init__(self, number: Number) -> None:
        self.number = number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "X,Y"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if not isinstance(value, str):  # a default, or a tuple from Python
            try:
                first, second = value
            except (TypeError, ValueError):
                raise CipsError(f"{_option_name(param)} takes two numbers, not {value!r:.40}.") from None
            return self.number.check(first, _option_name(param)), self.number.check(second, _option_name(param))
        parts = value.split(",")
        if len(parts) != 2:
            self.fail(f"{value[:_MAX_TEXT]!r} is not two numbers written X,Y.", param, ctx)
        first, second = (self.number.convert(part, param, ctx) for part in parts)
        return first, second


OFFSET = real(-1e6, 1e6)  # coordinates: the training image spans [-1, 1]; far beyond only overflows
ANGLE = real(-1e6, 1e6)  # degrees
VIEW_SCALE = real(0.0, 1e6, open_low=True)
STYLE_INPUT = whole(0, 1 << 16)  # the first style input a mix seed drives; the model's own range is checked later
CLASS = whole(0, 2**31 - 1)  # a class label; the model's own count is checked later

transform_options = _stack([
    click.option("--translate", type=NumberPair(OFFSET), default=None, metavar="TX,TY", help="Move the camera by TX,TY in model coordinates (the training image spans -1 to 1): 0.5,0 shows what lay a quarter of the training image's width to the right."),
    click.option("--rotate", type=ANGLE, default=None, metavar="DEG", help="Turn the camera clockwise by DEG degrees: the content turns counter-clockwise."),
    click.option("--scale", type=VIEW_SCALE, default=None, metavar="S", help="Extent of the view: 2 shows twice as much (zooms out), 0.5 zooms in."),
])
"""gen_images' coordinate transform, composed with any topology: --translate, --rotate, --scale
(:class:`cips_deploy.runtime.coords.CoordinateTransform` states the convention)."""

style_options = _stack([
    click.option("--mix-seed", type=SEED, default=None, help="Style mixing: this seed's style drives the style inputs from --mix-from on."),
    click.option("--mix-from", type=STYLE_INPUT, default=None, help="With --mix-seed: the first style input (0 = the first layer) that takes the mix seed's style."),
    click.option("--class", "class_index", type=CLASS, default=None, help="Class label of a class-conditional model (0 to its number of classes - 1)."),
])
"""Style mixing (--mix-seed, --mix-from) and the class of a conditional model (--class)."""
