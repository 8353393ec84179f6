"""``bench ENGINE``: latency per backend call at the shapes a deployment serves (trtexec's way).

A case is one model (an engine file, a checkpoint, or a backend spec such as
``onnxruntime:model.onnx`` or ``torch:ckpt.safetensors,precision=bf16``:
:mod:`cips_deploy.runtime.backend_specs`) at one shape ``B x N``: ``coords [B, N, 2]`` and
``w [B, S]`` handed to ``backend.run``, as a renderer hands a chunk over. The points are the
first N of the model's square training grid (row-major, as a render's chunk: line-factored
engines compose them from lines, as they do in a render), the same for all B samples;
every call gets a new style (``map`` of a new z, untimed), as every image of a render does,
so nothing cached for one style (CREPS's lines) is reused by the next call.

Timing: ``warmup`` untimed calls, then at least ``iterations`` timed calls and at least
``duration`` seconds of them (trtexec's ``--warmUp``/``--iterations``/``--duration``, with
the warm-up counted in calls). Reported per shape: latency per call (mean, p50, p90, p99,
min, max, in ms: percentiles by linear interpolation), points/s (B x N / mean latency; every
point is one output pixel, so pixels/s is the same number), and where the model family's
FLOP count is available (it needs torch: the build extra) GFLOP/s and the fraction of the
peak of :mod:`.peaks` measured in the same run with the same threads.

Which peak: that of the kernel that does the case's products (:func:`backend_precision`).
The backend knows it: an fp16 engine's products run in onnxruntime's fp16 ``MatMul`` (the
fp16 peak), a dynamic int8 engine's per-point products stay float32 ``MatMul`` (only its
style affines are ``MatMulInteger``: the fp32 peak), a static int8 engine's are int8
(``exporters/ort_runtime.py`` says how each was read off the graphs). The report names both:
the case's ``precision`` and the ``peak_precision`` its fraction is against.

Needs no torch for engines that run without it (onnxruntime): this module imports numpy
and the runtime only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from cips_deploy.errors import CipsError

MAX_BATCH = 4096
MAX_POINTS_PER_CALL = 1 << 24  # B x N of one call: 128 MB of coordinates, activations many times more
MAX_SHAPES = 64


@dataclass(frozen=True)
class Shape:
    """One call's shape: ``batch`` samples of ``points`` points."""

    batch: int
    points: int

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.points}"


def parse_shapes(text: str | Iterable[str]) -> list[Shape]:
    """``"1x16384,4x4096"`` (or several such strings) -> shapes; one sentence for a bad one."""
    items = [text] if isinstance(text, str) else list(text)
    shapes = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if not part:
                continue
            batch, x, points = part.partition("x")
            if not x or not batch.strip().isdigit() or not points.strip().isdigit():
                raise CipsError(f"A shape is BATCHxPOINTS such as 1x16384, not {part!r}.")
            shape = Shape(int(batch), int(points))
            if not 1 <= shape.batch <= MAX_BATCH:
                raise CipsError(f"A shape's batch is 1 to {MAX_BATCH}, not {shape.batch} ({part}).")
            if shape.points < 1 or shape.batch * shape.points > MAX_POINTS_PER_CALL:
                raise CipsError(f"A shape holds 1 to {MAX_POINTS_PER_CALL:,} points per call (batch x points), not {part}.")
            shapes.append(shape)
    if not shapes:
        raise CipsError("Give at least one shape, such as --shapes 1x16384.")
    if len(shapes) > MAX_SHAPES:
        raise CipsError(f"At most {MAX_SHAPES} shapes per run, not {len(shapes)}.")
    return list(dict.fromkeys(shapes))


def shape_coords(shape: Shape, size: int) -> np.ndarray:
    """float32 ``[B, N, 2]``: the first N points of the square grid that holds N points,
    on the model's coordinate range (at least ``size`` wide: the training grid's spacing)."""
    from cips_deploy.runtime.coords import grid_coords

    side = max(int(size), math.isqrt(shape.points - 1) + 1)
    points = grid_coords(side, side)[:, : shape.points]
    return np.ascontiguousarray(np.broadcast_to(points, (shape.batch, shape.points, 2)))


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99, min and max of per-call seconds, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean_ms": float(ms.mean()), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def time_calls(
    call: Callable[[], Any], prepare: Callable[[], Any], *, warmup: int, iterations: int, duration: float,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Seconds of each timed ``call(prepared)``: ``warmup`` untimed calls first, then calls
    until both ``iterations`` calls and ``duration`` seconds are done. ``prepare`` (a new
    style) runs before every call, outside the timed region."""
    for _ in range(warmup):
        call(prepare())
    times: list[float] = []
    begun = clock()
    while len(times) < iterations or clock() - begun < duration:
        argument = prepare()
        started = clock()
        call(argument)
        times.append(clock() - started)
    return times


# Precision names as backends spell them -> as the report (and the peaks) spell them.
PRECISION_NAMES = {"f32": "fp32", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "f16": "fp16",
                   "int8": "int8", "int8-static": "int8-static"}


def case_precision(backend: Any, options: dict[str, Any]) -> str:
    """The case's precision, as its backend states it: an engine's recorded precision
    (onnxruntime: fp32, fp16, int8, int8-static), the backend's own (torch: fp32/bf16/fp16;
    OpenVINO: f32/bf16, its inference precision), else the ``precision`` option, else fp32."""
    value = getattr(backend, "precision", None)
    value = value if isinstance(value, str) else options.get("precision", "fp32")
    value = str(value).lower()
    return PRECISION_NAMES.get(value, value)


def backend_precision(backend: Any, options: dict[str, Any]) -> str:
    """The precision whose peak bounds this backend's products: that of the kernel that does
    them. The backend says which (``product_precision``: an int8 engine's products are not
    all int8, see the module text), else its precision is its products' (torch, OpenVINO).
    A precision with no product kernel of its own (:data:`.peaks.KERNELS`) reads as fp32."""
    from cips_deploy.measure.peaks import KERNELS

    value = getattr(backend, "product_precision", None)
    value = PRECISION_NAMES.get(str(value).lower()) if isinstance(value, str) else case_precision(backend, options)
    return value if value in KERNELS else "fp32"


def flops_per_point(config: Any) -> float | None:
    """FLOPs per point of ``config``'s per-point computation, or None where it is unknown here:
    without torch (the family computes it), and for line-factored families (a point's cost
    depends on how many of its lines the call shares)."""
    from cips_deploy.measure.peaks import installed

    if not installed("torch") or getattr(config.family, "line_factored", False):
        return None
    import torch

    from cips_deploy.families.generator import Generator

    with torch.device("meta"):  # no memory, no weights: only the architecture
        return float(Generator(config).flops_per_point())


def bench_backend(
    backend: Any, shapes: list[Shape], *, warmup: int, iterations: int, duration: float, seed: int = 0,
    progress: Callable[[str], None] = lambda line: None,
) -> list[dict[str, Any]]:
    """Time ``backend.run`` at every shape; a result dict per shape (see the module text)."""
    from cips_deploy.runtime.backend_arrays import from_backend, to_backend

    config = backend.config
    rng = np.random.RandomState(seed)
    results = []
    for shape in shapes:
        progress(f"  {shape.label} ...")
        coords = shape_coords(shape, config.size)

        def new_style() -> Any:
            z = rng.randn(shape.batch, config.latent_dim).astype(np.float32)
            w = from_backend(backend.map(*to_backend(backend, z)), "backend", "map")
            return np.ascontiguousarray(w, dtype=np.float32)

        def one_call(w: np.ndarray) -> None:
            from_backend(backend.run(*to_backend(backend, coords, w)), "backend", "run")

        times = time_calls(one_call, new_style, warmup=warmup, iterations=iterations, duration=duration)
        stats = latency_stats(times)
        points = shape.batch * shape.points
        per_second = points / (stats["mean_ms"] / 1000)
        results.append({"shape": shape.label, "batch": shape.batch, "points": shape.points, "calls": len(times),
                        **stats, "points_per_second": per_second, "pixels_per_second": per_second})
    return results


def add_peak_fractions(results: list[dict[str, Any]], flops: float | None, peak: float | None) -> None:
    """GFLOP/s and the fraction of ``peak`` (GFLOP/s: the peak of the case's
    :func:`backend_precision`) of each result, where both are known; ``over_peak`` marks an
    impossible one (a measurement error)."""
    from cips_deploy.measure.peaks import over_peak

    for result in results:
        gflops = flops * result["points_per_second"] / 1e9 if flops else None
        fraction = gflops / peak if gflops is not None and peak and not math.isnan(peak) else None
        result.update(gflops=gflops, fraction_of_peak=fraction, over_peak=over_peak(fraction))
