"""Comparing two models on the same inputs: ``cips-deploy compare A B`` (Polygraphy run's contract).

Both sides are constructed backends (:mod:`.backend_specs`); each case is one style seed:

- styles: z = ``latent(seed, config)`` (the one seed rule), mapped by **each side's own**
  mapping network and truncation, so the mapping engines are compared too; with
  ``shared_style`` side A maps once and the same w goes to both (synthesis alone compared);
- points: ``grid`` takes a registered topology's layout at H x W in the models' coordinate
  space and sends it in chunks of whole rows, so line-factored runtimes take their grid
  path (line + compose engines) exactly as a render does; ``points`` draws N points
  uniformly in [-1, 1]^2 from ``numpy.random.default_rng(seed)``: the same points on both
  sides, and the per-point path of every runtime.

Figures, with B as the reference (Polygraphy's ``|a - b| <= atol + rtol * |b|``):
max and mean absolute error of the raw outputs; PSNR of the outputs clipped to [-1, 1] (peak
to peak 2, as the quality reports of reduced-precision engines compute it:
``exporters/quality.py``), per seed and the worst; and the worst points (largest error over the
three channels) with their coordinates and both values. Nothing is held but one chunk and a
few worst points, so any size compares in bounded memory.

Bounds: those the caller gives. With none, the elementwise bound at :data:`DEFAULT_ATOL`
(export validation's tolerance, docs/export.md); ``psnr_min`` alone checks only the PSNR,
so a reduced-precision engine can be held to its quality gate. Numpy only: the torch-free
install compares engines.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from cips_deploy.contracts.backend import run_chunks
from cips_deploy.contracts.limits import finite_or_null
from cips_deploy.contracts.topology import TopologyRequest, check_points, resolve_parameters
from cips_deploy.errors import CipsError
from cips_deploy.runtime.images import decibels, raw_psnr
from cips_deploy.runtime.backend_arrays import from_backend, inference_mode, to_backend
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registry
from cips_deploy.runtime.render_request import check_seed, check_size, check_truncation
from cips_deploy.runtime.styles import latent

DEFAULT_ATOL = 1e-4  # what `export` validates an fp32 engine against torch with
CHUNK_POINTS = 16384  # points per backend call: bounds the working memory
MAX_POINTS = 1 << 24  # --points: 16 M points is far beyond any useful comparison
WORST = 5  # worst points reported
GRID, POINTS = "grid", "points"


@dataclass(frozen=True)
class Tolerance:
    """The bounds a comparison is held to (None: not checked; see :meth:`checked`)."""

    atol: float | None = None
    rtol: float | None = None
    psnr_min: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise CipsError(f"--{name} must be a finite number of at least 0, not {value!r}.")
        if self.psnr_min is not None and math.isnan(self.psnr_min):
            raise CipsError("--psnr-min must be a number of decibels, not NaN.")

    def checked(self) -> "Tolerance":
        """The bounds in force: the elementwise one unless only ``psnr_min`` was given (a missing
        atol is :data:`DEFAULT_ATOL`, a missing rtol 0)."""
        if self.atol is None and self.rtol is None and self.psnr_min is not None:
            return self
        return Tolerance(DEFAULT_ATOL if self.atol is None else self.atol, self.rtol or 0.0, self.psnr_min)

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None


@dataclass
class ErrorStats:
    """Running figures of one case (or of all of them merged): sums, not arrays."""

    values: int = 0  # output values compared (points x 3)
    sum_abs: float = 0.0
    sum_sq_clipped: float = 0.0
    max_abs: float = 0.0
    beyond: int = 0  # values outside atol + rtol * |b|
    worst: list = field(default_factory=list)  # heap of (error, tiebreak, point dict)

    def add(self, coords: np.ndarray, a: np.ndarray, b: np.ndarray, tolerance: Tolerance, seed: int, offset: int) -> None:
        """One chunk: coords [n, 2], a and b [n, 3] float32 (host)."""
        difference = np.abs(a.astype(np.float64) - b.astype(np.float64))  # [n, 3]
        clipped = np.clip(a, -1.0, 1.0).astype(np.float64) - np.clip(b, -1.0, 1.0).astype(np.float64)
        self.values += difference.size
        self.sum_abs += float(difference.sum())
        self.sum_sq_clipped += float(np.square(clipped).sum())
        if difference.size:
            self.max_abs = max(self.max_abs, float(difference.max()))
        if tolerance.elementwise:
            bound = tolerance.atol + tolerance.rtol * np.abs(b.astype(np.float64))
            self.beyond += int(np.count_nonzero(difference > bound))
        per_point = difference.max(axis=1) if difference.size else difference.reshape(0)
        for index in np.argsort(per_point)[::-1][:WORST]:  # this chunk's worst, then merged
            point = {
                "seed": seed, "index": offset + int(index),
                "u": float(coords[index, 0]), "v": float(coords[index, 1]),
                "a": [float(x) for x in a[index]], "b": [float(x) for x in b[index]],
                "abs_error": float(per_point[index]),
            }
            entry = (point["abs_error"], -(seed * MAX_POINTS * 4 + point["index"]), point)
            if len(self.worst) < WORST:
                heapq.heappush(self.worst, entry)
            elif entry[:2] > self.worst[0][:2]:
                heapq.heapreplace(self.worst, entry)

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.values if self.values else 0.0

    @property
    def psnr(self) -> float:
        """dB of the clipped outputs (inf when they are equal)."""
        return raw_psnr(self.sum_sq_clipped / self.values if self.values else 0.0)

    def worst_points(self) -> list[dict]:
        return [entry[2] for entry in sorted(self.worst, key=lambda entry: entry[:2], reverse=True)]


@dataclass
class Comparison:
    """The result: per-seed figures, the merged ones, the bounds and the verdict."""

    a: str
    b: str
    mode: str
    seeds: list[int]
    points_per_seed: int
    tolerance: Tolerance
    cases: list[dict]
    max_abs: float
    mean_abs: float
    psnr: float  # the worst seed's
    beyond: int
    worst_points: list[dict]
    failures: list[str]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        """Plain JSON values: an infinite PSNR (identical outputs) becomes null, so that
        strict JSON readers (jq, JavaScript's JSON.parse) read the report."""
        data = finite_or_null(asdict(self))
        data["passed"] = self.passed
        return data


def compare_backends(
    registry: Registry,
    runner_a: Any,
    runner_b: Any,
    *,
    labels: tuple[str, str] = ("A", "B"),
    seeds: Sequence[int] = (0,),
    mode: str = GRID,
    topology: str = "flat",
    height: int = 64,
    width: int = 64,
    topology_params: dict[str, Any] | None = None,
    points: int = 4096,
    truncation: float = 1.0,
    shared_style: bool = False,
    tolerance: Tolerance = Tolerance(),
    chunk_points: int = CHUNK_POINTS,
) -> Comparison:
    """Run the same inputs through two constructed backends (neither is closed here) and compare."""
    config_a, config_b = runner_a.config, runner_b.config
    if config_a.style_dim != config_b.style_dim:
        raise CipsError(f"{labels[0]} has style width {config_a.style_dim} and {labels[1]} {config_b.style_dim}: they are not the same model.")
    if config_a.coordinate_space != config_b.coordinate_space:
        raise CipsError(
            f"{labels[0]} takes {config_a.coordinate_space} coordinates and {labels[1]} {config_b.coordinate_space}: "
            "they are not the same model."
        )
    check_truncation(truncation)
    if not seeds:
        raise CipsError("Give at least one seed to compare with.")
    for seed in seeds:
        check_seed(seed, "seed")
    tolerance = tolerance.checked()
    if mode == GRID:
        check_size(height, width)
        if height * width > MAX_POINTS:  # the points are held for both sides; no image is assembled
            raise CipsError(f"A {height}x{width} grid is more than the {MAX_POINTS:,} points a comparison takes; compare a smaller one.")
        entry = registry.get("topology", topology)
        if config_a.coordinate_space not in entry.item.coordinate_spaces:
            raise CipsError(entry.item.unsupported_space(config_a.coordinate_space))
        params = resolve_parameters(entry.item, dict(topology_params or {}))
    elif mode == POINTS:
        if not isinstance(points, int) or isinstance(points, bool) or not 1 <= points <= MAX_POINTS:
            raise CipsError(f"--points must be a whole number from 1 to {MAX_POINTS:,}, not {points!r}.")
    else:
        raise CipsError(f"Unknown comparison mode {mode!r}; use {GRID} or {POINTS}.")

    grid = _grid_chunks(registry, topology, params, config_a, height, width, chunk_points) if mode == GRID else None
    total, cases, count = ErrorStats(), [], 0
    with inference_mode():
        for seed in seeds:
            w_a = _style(runner_a, labels[0], seed, truncation)
            w_b = w_a if shared_style else _style(runner_b, labels[1], seed, truncation)
            chunks = grid if grid is not None else _random_chunks(seed, points, chunk_points)
            stats, count = ErrorStats(), 0
            for (offset, coords), rgb_a, rgb_b in _both(runner_a, runner_b, labels, chunks, w_a, w_b):
                for target in (stats, total):
                    target.add(coords, rgb_a, rgb_b, tolerance, seed, offset)
                count += len(coords)
            cases.append({"seed": seed, "max_abs": stats.max_abs, "mean_abs": stats.mean_abs, "psnr": stats.psnr,
                          "beyond": stats.beyond, "style_max_abs": float(np.abs(w_a - w_b).max())})
    psnr = min(case["psnr"] for case in cases)
    failures = []
    if tolerance.elementwise and total.beyond:
        failures.append(
            f"{total.beyond:,} of {total.values:,} values differ by more than atol {tolerance.atol:g} + rtol {tolerance.rtol:g} x |B| "
            f"(max abs error {total.max_abs:.3g})"
        )
    if tolerance.psnr_min is not None and psnr < tolerance.psnr_min:
        failures.append(f"the PSNR {decibels(psnr)} is below --psnr-min {tolerance.psnr_min:g} dB")
    details = {"topology": topology, "height": height, "width": width, "params": params} if mode == GRID else {}
    details.update(truncation=truncation, shared_style=shared_style)
    return Comparison(labels[0], labels[1], mode, list(seeds), count, tolerance, cases, total.max_abs, total.mean_abs,
                      psnr, total.beyond, total.worst_points(), failures, details)


def _style(runner: Any, label: str, seed: int, truncation: float) -> np.ndarray:
    """The seed's w float32 [1, S] through ``runner``'s own mapping and truncation."""
    z = latent(seed, runner.config)
    w = from_backend(runner.map(*to_backend(runner, z), truncation), label, "map")
    if w.shape != (1, runner.config.style_dim):
        raise CipsError(f"{label} mapped one latent to a style of shape {list(w.shape)}; expected [1, {runner.config.style_dim}].")
    return w


def _grid_chunks(registry: Registry, topology: str, params: dict, config: Any, height: int, width: int,
                 chunk_points: int) -> list[tuple[int, np.ndarray]]:
    """(first point, coords float32 [n, 2]) of the topology's layout, cut at row starts where
    the layout has rows (so a chunk is a block of whole rows: a grid for line-factored runtimes)."""
    entry = registry.get("topology", topology)
    layout = call(entry, "layout", entry.item.layout, TopologyRequest(height, width, config.coordinate_space, params))
    total = int(layout.n_points)
    rows = call(entry, "row_boundaries", layout.row_boundaries)
    if rows is not None and len(rows) > 1:
        cuts, previous = [0], 0
        for boundary in (int(x) for x in rows[1:]):  # greedy: as many whole rows as fit a chunk
            if boundary - cuts[-1] > chunk_points and previous > cuts[-1]:
                cuts.append(previous)
            previous = boundary
        if cuts[-1] < total:
            cuts.append(total)
    else:
        cuts = list(range(0, total, chunk_points)) + [total]
    chunks = []
    for start, stop in zip(cuts, cuts[1:]):
        if stop > start:
            points = call(entry, "points", layout.points, start, stop)
            chunks.append((start, check_points(points, stop - start, entry.label)))
    return chunks


def _random_chunks(seed: int, points: int, chunk_points: int) -> Iterator[tuple[int, np.ndarray]]:
    """N points uniform in [-1, 1]^2 from ``default_rng(seed)``, in chunks (float32 [n, 2])."""
    rng = np.random.default_rng(seed)
    for start in range(0, points, chunk_points):
        n = min(chunk_points, points - start)
        yield start, rng.uniform(-1.0, 1.0, size=(n, 2)).astype(np.float32)


def _both(runner_a: Any, runner_b: Any, labels: tuple[str, str], chunks, w_a: np.ndarray, w_b: np.ndarray):
    """(chunk, rgb_a [n, 3], rgb_b [n, 3]) for each chunk; both sides see the same coords."""
    chunks = list(chunks)

    def batches(runner: Any, w: np.ndarray) -> Iterator[tuple[Any, ...]]:  # bound per side (no late binding)
        for _, coords in chunks:
            yield to_backend(runner, coords[None], w)

    streams = [run_chunks(runner_a, batches(runner_a, w_a)), run_chunks(runner_b, batches(runner_b, w_b))]
    for chunk, rgb_a, rgb_b in zip(chunks, *streams):
        n = len(chunk[1])
        out = []
        for label, rgb in zip(labels, (rgb_a, rgb_b)):
            rgb = from_backend(rgb, label, "run")
            if rgb.shape != (1, n, 3):
                raise CipsError(f"{label} returned colours of shape {list(rgb.shape)} for {n} points.")
            if not np.isfinite(rgb).all():
                raise CipsError(f"{label} computed NaN or infinite colours (points {chunk[0]:,} to {chunk[0] + n:,}).")
            out.append(rgb[0])
        yield chunk, out[0], out[1]
