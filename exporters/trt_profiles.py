"""TensorRT optimization profiles from ``--min-shapes/--opt-shapes/--max-shapes`` (trtexec's spelling).

Plain Python (no tensorrt, no torch), so every rule here is tested on any machine; the
builder (:func:`.tensorrt.build_engine`) only copies the result into
``IOptimizationProfile.set_shape(name, min, opt, max)``, one profile after another.

The text is trtexec's: ``coords:1x1024x2,w:1x512``: comma-separated ``name:DIMSxDIMS``
items, the name being an input of the engine. Several profiles: each flag is repeated, and
the k-th ``--min-shapes``, ``--opt-shapes`` and ``--max-shapes`` make profile k (trtexec's
convention). ``--max-shapes`` is required for every profile; a profile without
``--min-shapes`` starts every dynamic axis at 1, and one without ``--opt-shapes`` is tuned
for its maximum (a renderer sends full chunks but the last).

Names are the synthesis engine's (``coords``, ``w``); a line-factored model's grid engines
are named with their role first, ``lines.v``, ``lines.u``, ``lines.w``,
``compose.row_lines``, ``compose.column_lines``, ``compose.w`` (``synthesis.coords`` is
``coords``). An input left out is completed from the axes the given ones fix: ``w [B, S]``
takes B from ``coords``, so ``--max-shapes coords:4x65536x2`` is a whole profile. A grid
engine with no shapes of its own gets the profile the exporter derives from the synthesis
profile's largest batch and chunk (:class:`.trt_grid.GridProfile`).

Checked against the engine's declaration (:mod:`.spec`): every name is an input, every rank
and fixed size (the 2 of ``coords``, the S of ``w``, the F of the grid engines' lines) is
the declared one, an axis shared by several inputs (B; N of a per-point style ``w [B, N, S]``)
has one size in each of min, opt and max, and min <= opt <= max on every axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from cips_deploy.errors import CipsError, did_you_mean

from .spec import COMPOSE, LINES, SYNTHESIS, EngineSpec

# The builder log's levels (trt.Logger's severities), as --builder-verbosity takes them.
VERBOSITIES = ("error", "warning", "info", "verbose")
SELECTORS = ("min", "opt", "max")
FLAGS = {"min": "--min-shapes", "opt": "--opt-shapes", "max": "--max-shapes"}
ROLES = (SYNTHESIS, LINES, COMPOSE)
MAX_DIM = 2**31 - 1  # TensorRT's dimensions are 32-bit on the way in
MAX_PROFILES = 32  # far beyond any deployment; each profile is timed separately
MAX_TEXT = 4096  # characters of one flag's value
_DIMS = re.compile(r"[0-9]+(x[0-9]+)*")

Shape = tuple[int, ...]
Shapes = dict[str, tuple[Shape, Shape, Shape]]  # {input name: (min, opt, max)}: one profile of one engine


def parse_shapes(text: str, flag: str = "--max-shapes") -> dict[str, Shape]:
    """``"coords:1x1024x2,w:1x512"`` -> ``{"coords": (1, 1024, 2), "w": (1, 512)}``; one sentence if malformed.

    A name may be quoted (``'coords':1x1024x2``, as trtexec allows); the dims follow the last colon.
    """
    if not isinstance(text, str) or not text.strip():
        raise CipsError(f"{flag} takes shapes such as coords:1x1024x2,w:1x512, not an empty value.")
    if len(text) > MAX_TEXT:
        raise CipsError(f"{flag} is {len(text):,} characters long; shapes take at most {MAX_TEXT:,}.")
    shapes: dict[str, Shape] = {}
    for item in text.replace(" ", "").split(","):
        name, colon, dims = item.rpartition(":")
        name = name.strip("'\"")
        if not colon or not name or not _DIMS.fullmatch(dims):
            raise CipsError(
                f"{flag} takes NAME:DIMS items such as coords:1x1024x2 (sizes joined by x, items by commas), not {item!r:.60}."
            )
        if name in shapes:
            raise CipsError(f"{flag} gives the shape of {name} twice.")
        sizes = []
        for size in dims.split("x"):
            if len(size) > 10 or not 1 <= int(size) <= MAX_DIM:
                raise CipsError(f"{flag} gives {name} a size of {size:.20}; sizes go from 1 to 2**31 - 1.")
            sizes.append(int(size))
        shapes[name] = tuple(sizes)
    return shapes


def _parsed(values: Iterable[Any] | None, flag: str) -> list[dict[str, Shape]]:
    """The flag's values (text, or dicts from Python) as parsed shape dicts."""
    result = []
    for value in values or ():
        if isinstance(value, str):
            result.append(parse_shapes(value, flag))
        elif isinstance(value, Mapping):
            result.append({str(name): tuple(int(size) for size in dims) for name, dims in value.items()})
        else:
            raise CipsError(f"{flag} takes shapes such as coords:1x1024x2,w:1x512, not {value!r:.40}.")
    return result


@dataclass(frozen=True)
class RequestedProfiles:
    """What the flags asked for: per profile, ``{selector: {qualified name: dims}}`` (``min``
    and ``opt`` may be absent). Resolved per engine by :meth:`resolve`."""

    profiles: tuple[dict[str, dict[str, Shape]], ...]

    @classmethod
    def from_flags(cls, min_shapes=None, opt_shapes=None, max_shapes=None) -> "RequestedProfiles | None":
        """The profiles of repeated flags (the k-th of each makes profile k); None when none was given."""
        given = {"min": _parsed(min_shapes, FLAGS["min"]), "opt": _parsed(opt_shapes, FLAGS["opt"]),
                 "max": _parsed(max_shapes, FLAGS["max"])}
        if not any(given.values()):
            return None
        count = len(given["max"])
        if count == 0:
            raise CipsError("Every optimization profile needs --max-shapes; --min-shapes and --opt-shapes only narrow it.")
        for selector in ("min", "opt"):
            if given[selector] and len(given[selector]) != count:
                raise CipsError(
                    f"{count} --max-shapes make {count} profile{'s' * (count > 1)}, so give {FLAGS[selector]} "
                    f"{count} time{'s' * (count > 1)} or not at all, not {len(given[selector])}."
                )
        if count > MAX_PROFILES:
            raise CipsError(f"{count} optimization profiles are more than the {MAX_PROFILES} an engine may have.")
        profiles = tuple({selector: given[selector][index] for selector in SELECTORS if given[selector]}
                         for index in range(count))
        for profile in profiles:
            for shapes in profile.values():
                for name in shapes:
                    _split(name)  # an unknown role prefix is refused now, before any work
        return cls(profiles)

    def roles(self) -> set[str]:
        """The engines the flags name (``synthesis`` when a name has no role)."""
        return {_split(name)[0] for profile in self.profiles for shapes in profile.values() for name in shapes}

    def resolve(self, role: str, spec: EngineSpec, *, fallback: Callable[[int], Shapes] | None = None,
                min_one: bool = False) -> list[Shapes]:
        """Every profile of the ``role`` engine as ``{input: (min, opt, max)}``, checked against ``spec``.

        ``fallback(index)``: the shapes of a profile that names no input of this engine (None:
        such a profile is refused). ``min_one``: every dynamic axis must start at 1 (the grid
        renderer tiles blocks down to a single line)."""
        result = []
        for index, profile in enumerate(self.profiles):
            own = {selector: {_split(name)[1]: dims for name, dims in shapes.items() if _split(name)[0] == role}
                   for selector, shapes in profile.items()}
            where = f"Profile {index + 1}" if len(self.profiles) > 1 else "The optimization profile"
            if not any(own.values()):
                if fallback is None:
                    raise CipsError(f"{where} gives no shapes for the {role} engine's inputs ({', '.join(spec.input_names)}).")
                result.append(fallback(index))
                continue
            if not own.get("max"):
                raise CipsError(f"{where} gives {role} shapes in --min-shapes or --opt-shapes but none in --max-shapes.")
            result.append(_resolve_profile(own, spec, where, min_one))
        return result


def _split(name: str) -> tuple[str, str]:
    """``"lines.v"`` -> ``("lines", "v")``; ``"coords"`` -> ``("synthesis", "coords")``."""
    role, dot, rest = name.partition(".")
    if not dot:
        return SYNTHESIS, name
    if role not in ROLES:
        raise CipsError(f"{name!r:.40} names no engine{did_you_mean(role, ROLES)}: a shape's name is an input such as "
                        f"coords or w, or lines.NAME / compose.NAME for a grid engine's input.")
    return role, rest


def _resolve_profile(own: dict[str, dict[str, Shape]], spec: EngineSpec, where: str, min_one: bool) -> Shapes:
    """min/opt/max of every input of ``spec`` from the shapes given for some of them."""
    resolved: dict[str, dict[str, Shape]] = {}
    for selector in ("max", "min", "opt"):  # max first: a missing opt is the max
        given = own.get(selector)
        if given is None:
            resolved[selector] = (
                {tensor.name: tensor.concrete(**{axis: 1 for axis in tensor.dynamic_axes.values()}) for tensor in spec.inputs}
                if selector == "min" else dict(resolved["max"])
            )
            continue
        resolved[selector] = _complete(given, spec, selector, where, resolved.get("max"))
    shapes: Shapes = {}
    for tensor in spec.inputs:
        low, opt, high = (resolved[selector][tensor.name] for selector in SELECTORS)
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            raise CipsError(
                f"{where}: {spec.role} input {tensor.name} needs min <= opt <= max on every axis, "
                f"not min {_text(low)}, opt {_text(opt)}, max {_text(high)}."
            )
        if min_one and any(low[axis] != 1 for axis in tensor.dynamic_axes):
            raise CipsError(
                f"{where}: the {spec.role} engine's input {tensor.name} must start at 1 on its dynamic axes "
                f"(min {_text(low)}): the grid renderer sends blocks down to a single line."
            )
        shapes[tensor.name] = (low, opt, high)
    return shapes


def _complete(given: dict[str, Shape], spec: EngineSpec, selector: str, where: str, maximum: dict[str, Shape] | None) -> dict[str, Shape]:
    """Every input's shape for one selector: the given ones checked, the others made from the
    axes the given ones fix (for ``min`` an unfixed axis is 1; for ``opt`` it is the max's)."""
    flag = FLAGS[selector]
    axes: dict[str, tuple[int, str]] = {}  # axis name -> (size, the input that set it)
    for name, dims in given.items():
        if name not in spec.input_names:
            raise CipsError(
                f"{flag} names {name!r:.40}, which is no input of the {spec.role} engine{did_you_mean(name, spec.input_names)}; "
                f"its inputs are {', '.join(spec.input_names)}."
            )
        tensor = spec.tensor(name)
        if len(dims) != len(tensor.shape):
            raise CipsError(
                f"{flag} gives {spec.role} input {name} {len(dims)} sizes ({_text(dims)}), but it has {len(tensor.shape)}: "
                f"{_declared(tensor.shape)}."
            )
        for axis, (size, declared) in enumerate(zip(dims, tensor.shape)):
            if isinstance(declared, int):
                if size != declared:
                    raise CipsError(
                        f"{flag} gives {spec.role} input {name} size {size} on axis {axis}, but that axis is fixed at "
                        f"{declared} ({_declared(tensor.shape)})."
                    )
                continue
            if declared in axes and axes[declared][0] != size:
                raise CipsError(
                    f"{where}: {flag} gives axis {declared} size {axes[declared][0]} in {axes[declared][1]} "
                    f"but {size} in {name}; inputs that share an axis share its size."
                )
            axes.setdefault(declared, (size, name))
    shapes = {}
    for tensor in spec.inputs:
        if tensor.name in given:
            shapes[tensor.name] = given[tensor.name]
            continue
        sizes = {}
        for axis, declared in tensor.dynamic_axes.items():
            if declared in axes:
                sizes[declared] = axes[declared][0]
            elif selector == "min":
                sizes[declared] = 1
            elif selector == "opt" and maximum is not None:
                sizes[declared] = maximum[tensor.name][axis]
            else:
                raise CipsError(
                    f"{where}: {flag} does not fix the {declared} axis of {spec.role} input {tensor.name}; "
                    f"give its shape too ({_declared(tensor.shape)})."
                )
        shapes[tensor.name] = tensor.concrete(**sizes)
    return shapes


def _text(dims: Sequence[int]) -> str:
    return "x".join(str(size) for size in dims)


def _declared(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(size) for size in shape) + "]"


def profile_text(shapes: Shapes) -> dict[str, dict[str, list[int]]]:
    """One profile as the sidecar stores it: ``{input: {"min": [...], "opt": [...], "max": [...]}}``."""
    return {name: {"min": list(low), "opt": list(opt), "max": list(high)} for name, (low, opt, high) in shapes.items()}


def primary_limits(profiles: Sequence[Shapes], points_input: str = "coords") -> tuple[int, int]:
    """(largest batch, largest points) of the first profile, as the sidecar records them
    (``max_batch``, ``chunk_size``). The runtime uses every profile, one per request
    (:mod:`.trt_select`)."""
    high = profiles[0][points_input][2]
    return int(high[0]), int(high[1])
