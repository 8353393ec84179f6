"""Coordinate helpers shared by the runtime, the topologies and the tests, on numpy arrays.

A sample point is ``(u, v)``: u grows to the right, v grows downwards, and the training
image spans [-1, 1] in both (docs/architecture.md, section 2.1). Batches are pixel-major ``[B, N, 2]``.

The official code samples its grid with ``torch.linspace`` in float32, and the parity tests
compare against its outputs, so :func:`linspace` reproduces that kernel bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cips_deploy.errors import CipsError

_F32, _F64 = np.float32, np.float64


def linspace(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32, CPU) bit for bit: float32 ``[steps]``.

    torch's CPU kernel computes ``step = (end - start) / (steps - 1)`` in float32, then
    ``start + step * i`` for the first half of the indices and ``end - step * (steps - 1 - i)``
    for the second (so both ends are exact), each a fused multiply-add: the compiler contracts
    them on every CPU with FMA instructions (AVX2, AVX-512, ARM), the ones torch dispatches to.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"linspace needs a non-negative number of steps, not {steps}.")
    start32, end32 = _F32(start), _F32(end)
    if steps <= 1:
        return np.full(steps, start32, dtype=_F32)  # torch fills a single step with start
    step = (end32 - start32) / _F32(steps - 1)  # float32 operations, as the kernel's
    index = np.arange(steps, dtype=np.int64)
    half = steps // 2
    out = np.empty(steps, dtype=_F32)
    out[:half] = fma32(np.full(half, step, _F32), index[:half].astype(_F32), start32)
    out[half:] = fma32(np.full(steps - half, -step, _F32), (steps - 1 - index[half:]).astype(_F32), end32)
    return out


def fma32(a: np.ndarray, b: np.ndarray, c: Any) -> np.ndarray:
    """``a * b + c`` rounded once to float32 (a fused multiply-add), for float32 arrays a, b and c.

    The product of two float32 values is exact in float64, and the float64 sum s plus its
    error e (Knuth's TwoSum) is the exact result. Rounding s to float32 is then the correct
    rounding except when s lies exactly on a midpoint between two float32 values, where e
    says which way the exact value lies (rounding twice would break the tie to even instead).
    """
    product = a.astype(_F64) * b.astype(_F64)
    c64 = np.broadcast_to(np.asarray(c, dtype=_F32).astype(_F64), product.shape)
    total = product + c64
    virtual = total - c64
    error = (c64 - (total - virtual)) + (product - virtual)
    rounded = total.astype(_F32)
    towards = np.where(total > rounded.astype(_F64), _F32(np.inf), _F32(-np.inf))
    neighbour = np.nextafter(rounded, towards)
    midpoint = (rounded.astype(_F64) + neighbour.astype(_F64)) / 2  # exact: 25 significant bits
    tie = (total == midpoint) & (error != 0)
    if not tie.any():
        return rounded
    above = np.where(error > 0, np.maximum(rounded, neighbour), np.minimum(rounded, neighbour))
    return np.where(tie, above, rounded)


def grid_coords(
    height: int,
    width: int,
    *,
    u_range: tuple[float, float] = (-1.0, 1.0),
    v_range: tuple[float, float] = (-1.0, 1.0),
) -> np.ndarray:
    """The official sampling grid: u = linspace(u_range, width), v = linspace(v_range, height).

    Returns float32 ``[1, height * width, 2]`` in row-major order (point ``r * width + c`` is
    row r, column c), so ``rgb.reshape(B, height, width, 3)`` is the image.
    """
    return grid_from_axes(linspace(u_range[0], u_range[1], width), linspace(v_range[0], v_range[1], height))


def grid_from_axes(u: Any, v: Any) -> np.ndarray:
    """Column positions u ``[W]`` and row positions v ``[H]`` (numpy, or CPU torch tensors)
    -> row-major points float32 ``[1, H * W, 2]``."""
    u, v = _float32(u), _float32(v)
    points = np.empty((len(v), len(u), 2), dtype=_F32)
    points[..., 0] = u[None, :]
    points[..., 1] = v[:, None]
    return points.reshape(1, -1, 2)


def panorama_u(width: int, heading_degrees: float = 0.0) -> np.ndarray:
    """u of the columns of a seamless 360-degree panorama: float32 ``[width]`` in [-1, 1).

    Column c samples the centre of the c-th of ``width`` equal sectors, u = -1 + (2c + 1) / W,
    not linspace(-1, 1, W), which would put the same meridian (u = -1 = +1) in the first and
    the last column. Computed in float64 so that every column gets its correctly rounded angle.
    """
    column = np.arange(width, dtype=_F64)
    u = -1.0 + (2.0 * column + 1.0) / width + heading_degrees / 180.0
    return (np.remainder(u + 1.0, 2.0) - 1.0).astype(_F32)  # back into [-1, 1): the model wraps anyway


def planar_to_points(maps: Any) -> Any:
    """Image-shaped maps ``[B, C, H, W]`` -> pixel-major points ``[B, H*W, C]``, of the type given
    (numpy stays numpy; a torch tensor, as the official code's outputs are, stays a tensor).

    For the official coordinate maps (C = 2: channel 0 = x, 1 = y) this gives (u, v) points;
    for official colour output (C = 3) the matching rgb rows.
    """
    batch, channels = maps.shape[:2]
    if hasattr(maps, "permute"):  # a torch tensor: no torch import needed to reorder it
        return maps.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    return np.transpose(maps, (0, 2, 3, 1)).reshape(batch, -1, channels)


def _float32(values: Any) -> np.ndarray:
    """A 1-D table as float32 numpy: a torch tensor through ``.numpy()`` (no copy for CPU float32)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=_F32)


# ------------------------------------------------------------------ the coordinate transform


class CoordinateTransform:
    """A camera move applied to the points a topology produces, before the backend
    (``render --translate TX,TY --rotate DEG --scale S``; docs/rendering.md).

    A point p = (u, v) of any topology becomes ``t + S * R(DEG) @ p`` with
    R = [[cos, -sin], [sin, cos]] in (u, v), v pointing down. So the camera moves:

    - ``translate`` (tx, ty): the view's centre moves to (tx, ty); tx > 0 shows what lay to
      the right (the content slides left), ty > 0 what lay below (it slides up);
    - ``rotate`` DEG: the camera turns clockwise on screen, so the content appears turned
      counter-clockwise by DEG (the ``rotated`` topology's convention: on a square flat
      render ``--rotate 30`` is ``-t rotated -p angle=30``);
    - ``scale`` S: the view's extent; S > 1 zooms out (shows more), S < 1 zooms in.

    Translation and scale keep a grid a grid (u' depends on u alone, v' on v alone), so
    line-factored families still evaluate each row and column once; a rotation mixes u and v,
    and such chunks take the per-point path. Every point is transformed by the same float32
    elementwise operations, so a point's value never depends on its chunk.
    """

    def __init__(self, translate: tuple[float, float] = (0.0, 0.0), rotate: float = 0.0, scale: float = 1.0) -> None:
        try:
            tx, ty = (float(value) for value in translate)
            rotate, scale = float(rotate), float(scale)
        except (TypeError, ValueError):
            raise CipsError(f"A coordinate transform takes translate (tx, ty), rotate and scale numbers, not {translate!r:.40}, {rotate!r:.20}, {scale!r:.20}.") from None
        if not all(np.isfinite([tx, ty, rotate, scale])):
            raise CipsError("A coordinate transform's translate, rotate and scale must be finite numbers.")
        if not scale > 0:
            raise CipsError(f"The transform's scale must be greater than 0, not {scale!r}.")
        self.translate, self.rotate, self.scale = (tx, ty), rotate, scale
        cos, sin = _rotation(rotate)
        # float32 factors of u' = (u * a + v * b) + tx and v' = (u * c + v * d) + ty.
        self.factors = tuple(_F32(f) for f in (scale * cos, -scale * sin, scale * sin, scale * cos, tx, ty))

    @property
    def identity(self) -> bool:
        return self.translate == (0.0, 0.0) and self.rotate % 360.0 == 0.0 and self.scale == 1.0

    @property
    def separable(self) -> bool:
        """Whether u' depends on u alone and v' on v alone (a grid stays a grid)."""
        a, b, c, d = self.factors[:4]
        return b == 0 and c == 0

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points float32 ``[N, 2]`` (or ``[..., 2]``) -> the transformed points, float32, same shape."""
        points = np.asarray(points, dtype=_F32)
        u, v = points[..., 0], points[..., 1]
        a, b, c, d, tx, ty = self.factors
        out = np.empty(points.shape, dtype=_F32)
        if self.separable:  # no cross terms: exactly u * a + tx, so a grid's rows and columns stay shared
            out[..., 0] = u * a + tx
            out[..., 1] = v * d + ty
        else:
            out[..., 0] = (u * a + v * b) + tx
            out[..., 1] = (u * c + v * d) + ty
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (provenance, a streamed render's manifest)."""
        return {"translate": list(self.translate), "rotate": self.rotate, "scale": self.scale}

    def __repr__(self) -> str:
        return f"CoordinateTransform(translate={self.translate}, rotate={self.rotate}, scale={self.scale})"


def coordinate_transform(value: Any) -> CoordinateTransform | None:
    """The API's ``transform=``: None, a :class:`CoordinateTransform`, or a mapping with
    ``translate``, ``rotate`` and ``scale`` -> a transform, or None when it changes nothing."""
    if value is None:
        return None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"translate", "rotate", "scale"})
        if unknown:
            raise CipsError(f"A transform takes translate, rotate and scale, not {', '.join(map(str, unknown))}.")
        value = CoordinateTransform(**value)
    if not isinstance(value, CoordinateTransform):
        raise CipsError(f"transform must be a CoordinateTransform or a dict of translate, rotate and scale, not {type(value).__name__}.")
    return None if value.identity else value


def _rotation(degrees: float) -> tuple[float, float]:
    """(cos, sin), exact at multiples of 90 degrees (the rotated topology's rule)."""
    quarter_turns, remainder = divmod(degrees, 90.0)
    if remainder == 0.0:
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(quarter_turns) % 4]
    radians = np.radians(degrees)
    return float(np.cos(radians)), float(np.sin(radians))
