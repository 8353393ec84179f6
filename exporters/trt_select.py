"""Which optimization profile of a TensorRT plan serves a request, and how the request is cut.

A plan built with several ``--min-shapes/--opt-shapes/--max-shapes`` has several
optimization profiles (:mod:`.trt_profiles`); the runtimes (:class:`.tensorrt.TensorRTEngine`,
the grid plans of :mod:`.trt_grid`) choose one per request with :func:`choose_profile` and cut
the request into calls within that profile's ranges. Plain Python (no tensorrt, no torch),
so the rule is tested on any machine; :class:`ProfileContexts` only calls the few TensorRT 10
methods it is handed objects for.

A profile is seen through its dynamic axes (:class:`ProfileRange`): ``(batch, points)`` of a
synthesis plan's ``coords [B, N, 2]``; ``(batch, rows, columns)`` of a grid plan (``v [B, H]``
and ``u [B, W]`` of the line engine, ``row_lines [B, H, F]`` and ``column_lines [B, W, F]`` of
the compose engine). The rule, in order:

1. **fewest engine calls**: every call has a fixed cost (the enqueue, the shape setting,
   kernel launches that a small call does not hide), so a profile that takes the request in
   one call beats one that needs eight;
2. **least padding**: points (or lines) computed and thrown away, because a piece below the
   profile's minimum is padded up to it (:func:`plan_pieces`) or, in the line engine, an
   exhausted axis repeats its last value: padding is FLOPs spent on nothing;
3. **the nearest opt shape**: TensorRT timed and chose its kernels (tactics) at the profile's
   opt shape, so a call near it runs the kernels tuned for it; nearness is the sum over axes
   of ``|log2(call / opt)|`` of the request's first (largest) call, so that a factor of two
   weighs the same on the batch and on the points axis;
4. **the lowest index**: the first profile given, the one the engine was built around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cips_deploy.errors import CipsError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProfileRange:
    """Profile ``index`` of a plan on its dynamic axes: each call sends ``low <= size <= high``
    on every axis, and TensorRT tuned its kernels for ``opt``."""

    index: int
    low: Shape
    opt: Shape
    high: Shape

    def __post_init__(self) -> None:
        if not len(self.low) == len(self.opt) == len(self.high) or not all(
                1 <= low <= high for low, high in zip(self.low, self.high)):
            raise CipsError(f"Optimization profile {self.index} of the plan runs from {list(self.low)} to "
                            f"{list(self.high)}, which is no range of sizes; build the plan again.")


@dataclass(frozen=True)
class Piece:
    """One engine call: samples ``b0:b1`` and points ``n0:n1`` of the request, sent as a
    ``batch`` x ``points`` block (larger when the profile's minimum is larger: padded)."""

    b0: int
    b1: int
    n0: int
    n1: int
    batch: int
    points: int

    @property
    def padded(self) -> bool:
        return self.batch > self.b1 - self.b0 or self.points > self.n1 - self.n0


@dataclass(frozen=True)
class Cost:
    """What a request costs on one profile: engine ``calls``, elements ``computed`` (padding
    included) and elements ``wanted`` (the request's own)."""

    calls: int
    computed: int
    wanted: int

    @property
    def padding(self) -> int:
        return self.computed - self.wanted


def axis_splits(size: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """``size`` elements of one axis cut into calls of at most ``high``: ``(start, stop, sent)``,
    ``sent`` being the piece raised to the profile's minimum ``low`` (padded)."""
    return [(start, min(start + high, size), max(min(start + high, size) - start, low))
            for start in range(0, size, high)]


def axis_cost(size: int, low: int, high: int) -> tuple[int, int]:
    """(calls, elements sent) of :func:`axis_splits` without listing them: full pieces of
    ``high``, and a remainder raised to ``low``."""
    full, rest = divmod(size, high)
    return full + (rest > 0), full * high + (max(rest, low) if rest else 0)


def plan_pieces(batch: int, points: int, batch_range: tuple[int, int], points_range: tuple[int, int]) -> list[Piece]:
    """The calls that cover ``batch`` x ``points`` within a profile's (min, max) batch and
    points: at most max of each per call, and a smaller remainder padded up to the minimum
    (every pixel is computed from its own coordinate and style, so padding changes none)."""
    (min_batch, max_batch), (min_points, max_points) = batch_range, points_range
    if not (1 <= min_batch <= max_batch and 1 <= min_points <= max_points):
        raise CipsError(f"The engine's profile takes {min_batch} to {max_batch} samples of {min_points} to {max_points} points.")
    return [Piece(b0, b1, n0, n1, sent_batch, sent_points)
            for b0, b1, sent_batch in axis_splits(batch, min_batch, max_batch)
            for n0, n1, sent_points in axis_splits(points, min_points, max_points)]


def tiled_cost(request: Sequence[int], profile: ProfileRange) -> Cost:
    """The cost of a request tiled axis by axis (every combination of the axes' pieces is one
    call): the synthesis plan's batch x points (:func:`plan_pieces`), the compose plan's
    batch x rows x columns."""
    _check(request, profile)
    calls, computed = 1, 1
    for size, low, high in zip(request, profile.low, profile.high):
        axis_calls, sent = axis_cost(size, low, high)
        calls, computed = calls * axis_calls, computed * sent
    return Cost(calls, computed, math.prod(request))


def lines_cost(request: Sequence[int], profile: ProfileRange) -> Cost:
    """The cost of a line-engine request ``(batch, rows, columns)``: rows and columns advance
    together, one piece of each per call, and the axis that runs out first repeats its last
    value (:meth:`.trt_grid.TensorRTGridEngines.device_lines`); elements are lines."""
    _check(request, profile)
    batch, rows, columns = request
    batch_calls, batch_sent = axis_cost(batch, profile.low[0], profile.high[0])
    row_calls, row_sent = axis_cost(rows, profile.low[1], profile.high[1])
    column_calls, column_sent = axis_cost(columns, profile.low[2], profile.high[2])
    steps = max(row_calls, column_calls)
    # Each step after an axis runs out still sends one line of it (at least the profile's minimum).
    per_sample = row_sent + column_sent + (steps - row_calls) * profile.low[1] + (steps - column_calls) * profile.low[2]
    return Cost(batch_calls * steps, batch_sent * per_sample, batch * (rows + columns))


def opt_distance(request: Sequence[int], profile: ProfileRange) -> float:
    """How far the request's first (largest) call is from the profile's opt shape: the sum over
    axes of ``|log2(call / opt)|``."""
    first = [max(min(size, high), low) for size, low, high in zip(request, profile.low, profile.high)]
    return sum(abs(math.log2(call / opt)) for call, opt in zip(first, profile.opt))


def choose_profile(profiles: Sequence[ProfileRange], request: Sequence[int],
                   cost: Callable[[Sequence[int], ProfileRange], Cost] = tiled_cost) -> ProfileRange:
    """The profile that serves ``request`` (its sizes on the profiles' axes) best: fewest calls,
    then least padding, then the nearest opt shape, then the lowest index (module docstring)."""
    if not profiles:
        raise CipsError("The plan has no optimization profile; build it again.")

    def key(profile: ProfileRange) -> tuple[int, int, float, int]:
        spent = cost(request, profile)
        return spent.calls, spent.padding, round(opt_distance(request, profile), 9), profile.index

    return min(profiles, key=key)


def _check(request: Sequence[int], profile: ProfileRange) -> None:
    if len(request) != len(profile.high) or any(size < 0 for size in request):
        raise ValueError(f"request {list(request)} does not match profile axes {list(profile.high)}")


# --------------------------------------------------------------------------- a plan's profiles

def read_profiles(engine: Any, axes: Sequence[tuple[str, int]]) -> tuple[ProfileRange, ...]:
    """Every optimization profile of a TensorRT 10 ``ICudaEngine`` on the given dynamic axes.

    ``axes``: ``(input name, axis)`` per axis, e.g. ``[("coords", 0), ("coords", 1)]``.
    ``engine.num_optimization_profiles`` counts them and
    ``engine.get_tensor_profile_shape(name, k)`` gives profile k's ``(min, opt, max)`` of an input."""
    result = []
    for index in range(int(engine.num_optimization_profiles)):
        shapes = {name: engine.get_tensor_profile_shape(name, index) for name, _ in axes}
        low, opt, high = (tuple(int(shapes[name][which][axis]) for name, axis in axes) for which in range(3))
        result.append(ProfileRange(index, low, opt, high))
    if not result:
        raise CipsError("The plan has no optimization profile; build it again.")
    return tuple(result)


def envelope(profiles: Sequence[ProfileRange]) -> tuple[Shape, Shape]:
    """(smallest minimum, largest maximum) on every axis over all profiles: what one call of
    some profile may send (not every combination in between: each call is one profile's)."""
    return (tuple(min(sizes) for sizes in zip(*(p.low for p in profiles))),
            tuple(max(sizes) for sizes in zip(*(p.high for p in profiles))))


class ProfileContexts:
    """One TensorRT execution context per optimization profile, each created on first use.

    As read in TensorRT 10's own documentation (NVIDIA/TensorRT,
    python/docstrings/infer/pyCoreDoc.h: ``IExecutionContext.set_optimization_profile_async(
    profile_index, stream_handle) -> bool``; the C++ ``setOptimizationProfileAsync`` comment of
    NvInferRuntime.h): a newly created context is assigned profile 0; another profile is
    selected before its input shapes are set, the switch may enqueue ``cudaMemcpyAsync`` copies
    on ``stream_handle``, and the application must order that stream before the enqueue
    stream. ``ICudaEngine.num_optimization_profiles`` is "always at least 1". Each context keeps its profile for
    good (switching a shared context back and forth would re-run the switch's copies, and
    older TensorRT versions let no two live contexts hold one profile), and the runtimes
    enqueue on the very stream the switch used, so ordering is the stream's own.
    """

    def __init__(self, engine: Any, stream_handle: int, source: str) -> None:
        self.engine = engine
        self.stream_handle = stream_handle
        self.source = source
        self.count = int(engine.num_optimization_profiles)
        self._contexts: dict[int, Any] = {}

    def __getitem__(self, index: int) -> Any:
        if index in self._contexts:
            return self._contexts[index]
        if not 0 <= index < self.count:
            raise IndexError(f"{self.source} has {self.count} optimization profiles, not a profile {index}")
        context = self.engine.create_execution_context()
        if context is None:
            raise CipsError(f"TensorRT could not create an execution context for {self.source} (GPU memory?).")
        if index != 0 and not context.set_optimization_profile_async(index, self.stream_handle):
            raise CipsError(f"TensorRT refused optimization profile {index} of {self.source}; build the plan again.")
        self._contexts[index] = context
        return context

    def created(self) -> list[int]:
        """The profiles whose context exists, in order."""
        return sorted(self._contexts)
