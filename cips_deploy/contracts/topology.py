"""What a topology is: an output request in, sample points out, colours back into an image.

A :class:`Topology` declares its name, a one-line description, its :class:`Parameter` s and
the coordinate spaces it supports. For one request (height, width, parameter values) it
returns a :class:`Layout`: the sample points, handed out a range at a time so that a
renderer never holds more than one chunk of them, and the assembly of colours into an
``[H, W, 3]`` uint8 image.

Two ready-made layouts cover most topologies:

- :class:`GridLayout`: one point per pixel on a (possibly rotated and scaled) grid, computed
  on demand from a row and a column table; memory stays O(H + W) for the points.
- :class:`PointLayout`: an explicit ``[N, 2]`` array of points, the simplest thing for a
  plugin author; by default point ``r * W + c`` is pixel ``(r, c)``.

Points and colours cross this contract as numpy float32 arrays. Topologies written for the
torch runtime (0.1) keep working: a :class:`PointLayout` takes torch points, and
:func:`check_points` takes whatever a layout's ``points`` returns, tensors included,
duck-typed so that nothing here imports torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

from cips_deploy.errors import CipsError, describe_error
from cips_deploy.runtime.images import host_float32, rgb_to_uint8

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Parameter:
    """One parameter of a topology: name, type (int, float, bool or str), default, help.

    ``minimum`` / ``maximum`` are inclusive bounds for numbers, ``choices`` the allowed
    values of a string. Values arrive as Python objects (the API) or strings (the CLI).
    """

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def convert(self, value: Any, owner: str, kind: str = "topology's parameter") -> Any:
        """``value`` as this parameter's type, or a CipsError naming ``owner`` (e.g. "flat").

        ``kind`` says what the parameter belongs to: backends declare their options with
        this same type (``"backend's option"``)."""
        where = f"{owner} {kind} {self.name}"
        value = self._coerce(value, where)
        if self.type in (int, float):
            if not math.isfinite(value):
                raise CipsError(f"The {where} must be a finite number, not {value}.")
            if self.minimum is not None and value < self.minimum:
                raise CipsError(f"The {where} must be at least {self.minimum:g}, not {value:g}.")
            if self.maximum is not None and value > self.maximum:
                raise CipsError(f"The {where} must be at most {self.maximum:g}, not {value:g}.")
        if self.choices is not None and value not in self.choices:
            raise CipsError(f"The {where} must be one of {', '.join(self.choices)}, not {value!r}.")
        return value

    def _coerce(self, value: Any, where: str) -> Any:
        wanted = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}.get(self.type, self.type.__name__)
        if isinstance(value, str) and self.type is not str:
            text = value.strip().lower()
            try:
                if self.type is bool:
                    if text in _TRUE | _FALSE:
                        return text in _TRUE
                    raise ValueError
                return self.type(text)
            except ValueError:
                raise CipsError(f"The {where} must be {wanted}, not {value!r}.") from None
        # bool is an int in Python; a flag given where a number is wanted is a mistake.
        if self.type is bool and isinstance(value, (bool, np.bool_)):
            return bool(value)
        if self.type is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if self.type is float and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            return float(value)
        if self.type is str and isinstance(value, str):
            return value
        raise CipsError(f"The {where} must be {wanted}, not {value!r}.")


@dataclass(frozen=True)
class TopologyRequest:
    """An output request: image size, the model's coordinate space, checked parameter values."""

    height: int
    width: int
    coordinate_space: str
    params: dict[str, Any] = field(default_factory=dict)


class Layout(ABC):
    """The sample points of one request and the assembly of their colours.

    A renderer calls ``points`` and ``accept`` once per chunk, in order, then ``image``.
    Subclasses set ``height``, ``width`` and ``n_points`` and implement the three methods.

    Streaming (gigapixel outputs, docs/gigapixel.md). A layout whose ``pixel_grid`` is True
    promises one point per pixel, point ``r * width + c`` being pixel (r, c), and that a
    pixel's colour is its own point's alone. Then any rectangle of the output can be
    rendered on its own: the renderer asks :meth:`rectangle_points` for a tile's points,
    turns their colours into the tile's pixels with :meth:`rectangle_pixels` and hands the
    finished tile to an output sink, never holding the whole image (``accept`` and ``image``
    are not called). A layout whose image needs every point at once (foveated
    reconstruction) leaves ``pixel_grid`` False and renders in memory only.
    """

    height: int
    width: int
    n_points: int
    pixel_grid: bool = False

    @abstractmethod
    def points(self, start: int, stop: int) -> np.ndarray:
        """Points ``start:stop`` as float32 ``[stop - start, 2]`` (u, v)."""

    @abstractmethod
    def accept(self, start: int, rgb: np.ndarray) -> None:
        """Raw colours (about [-1, 1]) float32 ``[n, 3]`` of points ``start:start + n``."""

    @abstractmethod
    def image(self) -> np.ndarray:
        """The finished picture: uint8 ``[height, width, 3]``."""

    def row_boundaries(self) -> np.ndarray | None:
        """Where image rows start in the point order, int64 ``[rows + 1]`` (0 ... n_points).

        The ``rows`` chunker cuts only there. None when the points do not come in rows.
        """
        return None

    def report(self) -> dict[str, Any]:
        """Facts worth telling the user about this layout (shown by the CLI)."""
        return {}

    def rectangle_points(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Points of output rows ``top:bottom`` and columns ``left:right``, row-major,
        ``[(bottom - top) * (right - left), 2]``; only for a ``pixel_grid`` layout.

        Built from :meth:`points` one row segment at a time, so a subclass's own ``points``
        is what a streamed render samples (bitwise the same points as an in-memory one).
        """
        if not self.pixel_grid:
            raise CipsError("This layout's pixels are not one point each in row-major order, so it cannot render a rectangle on its own.")
        # A subclass's points may be torch tensors (older plugins): as numpy, dtype kept, so
        # that check_points still names an integer dtype.
        pieces = [host_array(self.points(row * self.width + left, row * self.width + right)) for row in range(top, bottom)]
        return np.concatenate(pieces)

    def rectangle_pixels(self, rgb: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Raw colours float32 ``[n, 3]`` of :meth:`rectangle_points` -> uint8 ``[bottom - top, right - left, 3]``."""
        return rgb_to_uint8(rgb).reshape(bottom - top, right - left, 3)


class GridLayout(Layout):
    """One point per pixel: pixel (r, c) samples (u[c], v[r]), optionally transformed.

    u: [W] and v: [H] float tables (numpy, or torch tensors, converted). ``matrix`` (m00, m01,
    m10, m11) and ``offset`` (ou, ov) map a table point p to ``offset + matrix @ p``, in
    float32. Points are generated per chunk from the tables, and colours are written straight
    into the uint8 image, so a render holds the output image plus one chunk, never an
    image-sized float array; the image is allocated at the first ``accept``, so a streamed
    render (which never calls it) holds none.
    """

    pixel_grid = True

    def __init__(
        self,
        u: Any,
        v: Any,
        *,
        matrix: tuple[float, float, float, float] | None = None,
        offset: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.u = np.ascontiguousarray(host_float32(u))  # [W]
        self.v = np.ascontiguousarray(host_float32(v))  # [H]
        self.height, self.width = len(self.v), len(self.u)
        self.n_points = self.height * self.width
        self.matrix = matrix
        self.offset = offset
        self._pixels: np.ndarray | None = None  # uint8 [n_points, 3], allocated by the first accept

    def points(self, start: int, stop: int) -> np.ndarray:
        row, column = np.divmod(np.arange(start, stop, dtype=np.int64), self.width)
        u, v = self.u[column], self.v[row]
        if self.matrix is not None:
            # Separate float32 elementwise products and sums (no matmul, no fused multiply-add),
            # so a point's value never depends on which chunk it falls in.
            m00, m01, m10, m11 = (np.float32(m) for m in self.matrix)
            ou, ov = (np.float32(o) for o in self.offset)
            u, v = (u * m00 + v * m01) + ou, (u * m10 + v * m11) + ov
        points = np.empty((stop - start, 2), dtype=np.float32)
        points[:, 0], points[:, 1] = u, v
        return points

    def accept(self, start: int, rgb: np.ndarray) -> None:
        if self._pixels is None:
            self._pixels = np.zeros((self.n_points, 3), dtype=np.uint8)
        self._pixels[start : start + len(rgb)] = rgb_to_uint8(rgb)

    def image(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.zeros((self.n_points, 3), dtype=np.uint8)
        return self._pixels.reshape(self.height, self.width, 3)

    def row_boundaries(self) -> np.ndarray:
        return np.arange(self.height + 1, dtype=np.int64) * self.width


class PointLayout(Layout):
    """An explicit list of points ``[N, 2]`` and how to turn their colours into an image.

    Without ``assemble``, N must be ``height * width`` and point ``r * width + c`` is pixel
    (r, c). With ``assemble(rgb float32 [N, 3]) -> uint8 [height, width, 3]`` the layout
    keeps every point's raw colour and hands them over at the end. Without ``assemble`` the
    layout is a ``pixel_grid`` and streams; with it, it renders in memory only.

    ``points`` may be numpy or a torch tensor (held as numpy, without a copy for CPU float32);
    a layout built from torch points hands ``assemble`` a torch tensor of colours, as it
    did before the runtime moved to numpy, and numpy otherwise.
    """

    def __init__(
        self,
        points: Any,
        height: int,
        width: int,
        assemble: Callable[[Any], np.ndarray] | None = None,
    ) -> None:
        self._torch_points = hasattr(points, "detach")
        self._points = host_array(points)  # dtype kept: check_points names a wrong one
        self.height, self.width = height, width
        self.n_points = int(self._points.shape[0]) if getattr(self._points, "ndim", 0) >= 1 else 0
        self._assemble = assemble
        self.pixel_grid = assemble is None
        if assemble is None:
            if self.n_points != height * width:
                raise CipsError(
                    f"A PointLayout without assemble needs height * width = {height * width} points, not {self.n_points}."
                )
            self._pixels = np.zeros((self.n_points, 3), dtype=np.uint8)
        else:
            self._colours = np.zeros((self.n_points, 3), dtype=np.float32)

    def points(self, start: int, stop: int) -> np.ndarray:
        return self._points[start:stop]

    def accept(self, start: int, rgb: np.ndarray) -> None:
        if self._assemble is None:
            self._pixels[start : start + len(rgb)] = rgb_to_uint8(rgb)
        else:
            self._colours[start : start + len(rgb)] = rgb

    def image(self) -> np.ndarray:
        if self._assemble is None:
            return self._pixels.reshape(self.height, self.width, 3)
        if self._torch_points:  # torch is imported: the points were a tensor
            return self._assemble(sys.modules["torch"].from_numpy(self._colours))
        return self._assemble(self._colours)

    def row_boundaries(self) -> np.ndarray | None:
        if self._assemble is None:
            return np.arange(self.height + 1, dtype=np.int64) * self.width
        return None


class Topology(ABC):
    """Base class of coordinate topologies; plugins subclass it and register an instance.

    Class attributes: ``name`` (what ``--topology`` takes), ``description`` (one line),
    ``parameters`` and ``coordinate_spaces`` (of the models it can render), and
    ``working_bytes_per_pixel``: the most memory its layout holds per output pixel
    besides the finished uint8 image, so that the renderer can refuse a size the
    machine cannot hold before allocating anything (:func:`cips_deploy.contracts.limits.check_in_memory`).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[tuple[Parameter, ...]] = ()
    coordinate_spaces: ClassVar[tuple[str, ...]] = ("plane", "cylinder")
    # Measured: a 2000 x 2000 flat render raised the peak RSS by 24 bytes a pixel (the
    # uint8 image and a 32 MB chunk included); cylinder 20, rotated 17.
    working_bytes_per_pixel: ClassVar[int] = 24

    @abstractmethod
    def layout(self, request: TopologyRequest) -> Layout:
        """The sample points and assembly for ``request`` (parameters already converted)."""

    def unsupported_space(self, coordinate_space: str) -> str:
        """The sentence shown when a model's coordinate space is not supported."""
        spaces = " or ".join(self.coordinate_spaces)
        return (
            f"The {self.name} topology needs a {spaces}-space model, but this generator's "
            f"coordinate space is {coordinate_space}."
        )


def resolve_parameters(topology: Topology, given: dict[str, Any], registered: str | None = None) -> dict[str, Any]:
    """Checked values for every declared parameter: ``given`` converted, the rest defaults.

    ``registered``: the name the topology was registered under, which messages use (reading a
    plugin's own ``name`` again runs its code, which may fail); default its ``name``."""
    label = registered if registered is not None else topology.name
    try:  # a plugin's property: its code runs here, and may fail after registration
        declared = {parameter.name: parameter for parameter in topology.parameters}
    except (Exception, SystemExit) as error:  # noqa: BLE001 - whatever it raises is the topology's failure
        raise CipsError(f"The {label} topology's parameters could not be read ({describe_error(error)}).") from None
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(declared) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise CipsError(
            f"The {label} topology has no parameter{plural} {', '.join(unknown)} (its parameters: {known})."
        )
    return {
        name: parameter.convert(given[name], label) if name in given else parameter.default
        for name, parameter in declared.items()
    }


def host_array(values: Any) -> Any:
    """A torch tensor as numpy on the host (floating point as float32, other dtypes kept, no
    copy for a CPU tensor), duck-typed by ``.detach``; anything else as it is."""
    if not hasattr(values, "detach"):
        return values
    values = values.detach().cpu()
    if values.is_floating_point():
        values = values.float()  # bfloat16 and float16 have no (or no exact) numpy twin
    return values.numpy()


def check_points(points: Any, expected: int, source: str) -> np.ndarray:
    """A plugin's points as C-contiguous float32 ``[expected, 2]``, or a CipsError naming ``source``.

    Accepts numpy arrays and torch tensors of any floating dtype; rejects integer or
    boolean dtypes, the wrong shape, and NaN or infinite values.
    """
    points = host_array(points)
    if not isinstance(points, np.ndarray):
        raise CipsError(f"{source} returned {type(points).__name__} instead of a tensor or array of points.")
    if not np.issubdtype(points.dtype, np.floating):
        raise CipsError(f"{source} returned points of dtype {points.dtype}; points must be floating point (u, v).")
    if points.shape != (expected, 2):
        raise CipsError(f"{source} returned points of shape {list(points.shape)}; expected [{expected}, 2] (u, v).")
    points = np.ascontiguousarray(points, dtype=np.float32)
    finite = np.isfinite(points)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise CipsError(f"{source} returned {bad} point(s) with NaN or infinite coordinates.")
    return points


def describe_parameter(parameter: Parameter) -> str:
    """``name (type, default X): help [bounds]`` for listings."""
    bounds = []
    if parameter.minimum is not None:
        bounds.append(f">= {parameter.minimum:g}")
    if parameter.maximum is not None:
        bounds.append(f"<= {parameter.maximum:g}")
    if parameter.choices:
        bounds.append("one of " + ", ".join(parameter.choices))
    extra = f" [{'; '.join(bounds)}]" if bounds else ""
    return f"{parameter.name} ({parameter.type.__name__}, default {parameter.default!r}): {parameter.help}{extra}"


def parameters_as_dicts(topology: Topology) -> list[dict[str, Any]]:
    """The declared parameters as plain dicts (for JSON listings)."""
    return [
        {**dataclasses.asdict(parameter), "type": parameter.type.__name__} for parameter in topology.parameters
    ]
