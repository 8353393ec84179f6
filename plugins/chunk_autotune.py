"""The default chunk of the torch backend on a CPU, chosen by timing: a short autotune, cached.

Which chunk size runs a model fastest depends on the CPU's caches, the thread count, the
precision and the model's widths: paper256 in bf16 reached 83-90% of the bf16 product peak at
3,072 points per call and 73-79% at the 32 MB budget's 3,245 (BENCHMARKS.md, issue 24),
and the best fp32 chunk is another. So the first time a model of a given shape renders on a
machine (per precision and thread count), :func:`tuned_points` times a few candidate chunk
sizes on the model itself and keeps the fastest; later renders read the choice back.

- **Candidates**: 1, 2, 3, 4, 6, 8, 12, ... rows of the training grid (row-aligned chunks let
  bf16's separable input stage work on whole rows; multiples of ``PAD_POINTS``: no padding
  waste), from ``MIN_POINTS`` up to what ``MAX_CHUNK_MB`` of working memory holds.
- **Cost**: each candidate is timed on ``CALLS`` calls after one warm-up, a fresh style each;
  the whole tune stops at ``BUDGET_SECONDS`` (a CPU that emulates bf16 takes seconds per call),
  and a tune cut short keeps the heuristic budget (recorded, so that it is not timed again;
  remove the entry, or point ``CIPS_DEPLOY_CACHE`` elsewhere, to tune again on a quiet machine). Models under ``MIN_FLOPS_PER_POINT`` are not tuned at all: their
  chunks cost too little for the choice to matter, and the heuristic suits them (the demo).
- **Pixels**: never changed. Every batch is padded to the same kernel path (``torch_backend``'s
  chunk invariance), so any chunk size gives bitwise the same image.
- **Cache**: ``$CIPS_DEPLOY_CACHE/chunks/<key>.json`` (else ``$XDG_CACHE_HOME/cips-deploy``,
  else ``~/.cache/cips-deploy``: the export cache's root), keyed by the CPU, the thread count,
  torch's and this package's versions, the precision and the model's config (its shape, not
  its weights). An entry is read with a bounded reader (a link, a FIFO, a huge or malformed
  file, a choice outside the candidates or for another key: ignored, tuned again and
  replaced) and written atomically (a temporary file renamed into place).
  ``CIPS_DEPLOY_AUTOTUNE=0`` turns tuning off (the heuristic budget is used).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError

PAD_POINTS = 64  # the torch backend's padding multiple (plugins/torch_runner.py)
MIN_POINTS = 512
MAX_CHUNK_MB = 64.0
MAX_CANDIDATES = 8
CALLS = 2
BUDGET_SECONDS = 12.0
MIN_FLOPS_PER_POINT = 4e6  # paper256: 6.8e6; the official 8x8 fixtures 2.2e6, the demo 7.5e4, tiny 9.2e4
MAX_ENTRY_BYTES = 64 * 1024
ENV_SWITCH = "CIPS_DEPLOY_AUTOTUNE"


def cache_root() -> Path:
    """The cache's root, as the export cache finds it (exporters/cache.py: plugins sit below exporters)."""
    if os.environ.get("CIPS_DEPLOY_CACHE"):
        return Path(os.environ["CIPS_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cips-deploy"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tune_key(config_dict: dict[str, Any], precision: str, threads: int, torch_version: str) -> dict[str, Any]:
    """What a choice depends on: the machine, the software and the model's shape."""
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": int(threads), "torch": torch_version,
            "package": __version__, "precision": precision, "config": config_dict}


def entry_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return cache_root() / "chunks" / f"{digest}.json"


def candidates(row: int, bytes_per_point: int) -> list[int]:
    """Chunk sizes to time: 1, 2, 3, 4, 6, 8, 12, ... whole rows of ``row`` points (rounded up
    to PAD_POINTS), from MIN_POINTS to what MAX_CHUNK_MB holds; at most MAX_CANDIDATES, evenly
    thinned (paper256: 512, 768, 1,024, 1,536, 2,048, 3,072, 4,096, 6,144)."""
    step = max(PAD_POINTS, -(-row // PAD_POINTS) * PAD_POINTS)
    most = int(MAX_CHUNK_MB * 2**20 // max(1, bytes_per_point))
    counts = sorted({base << shift for shift in range(40) for base in (2, 3)} | {1})
    sizes = [count * step for count in counts if MIN_POINTS <= count * step <= most]
    if not sizes:
        sizes = [max(PAD_POINTS, min(most, MIN_POINTS) // PAD_POINTS * PAD_POINTS)]
    if len(sizes) > MAX_CANDIDATES:
        picks = np.unique(np.round(np.linspace(0, len(sizes) - 1, MAX_CANDIDATES)).astype(int))
        sizes = [sizes[i] for i in picks]
    return sizes


UNTUNABLE = 0  # an entry's "points": null: timing did not fit the budget here; keep the heuristic


def read_entry(path: Path, key: dict[str, Any], allowed: list[int]) -> int | None:
    """The cached choice (``UNTUNABLE`` for an entry that says the heuristic stays), or None for
    anything but a well-formed entry of this key (never an error)."""
    from cips_deploy.contracts.limits import parse_json
    from cips_deploy.runtime.atomic import read_small_file

    try:
        if not path.exists() and not path.is_symlink():
            return None
        data = parse_json(read_small_file(path, MAX_ENTRY_BYTES, "chunk autotune entry").decode("utf-8"), "A chunk autotune entry")
    except (CipsError, UnicodeDecodeError, OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    points = data.get("points")
    if points is None and "points" in data:
        return UNTUNABLE
    if isinstance(points, bool) or not isinstance(points, int) or points not in allowed:
        return None
    return points


def write_entry(path: Path, key: dict[str, Any], points: int | None, timings: dict[int, float]) -> None:
    """Write the choice atomically; a cache that cannot be written is skipped (tuned again next time)."""
    from cips_deploy.runtime.atomic import atomic_path

    body = {"key": key, "points": points, "seconds_per_point": {str(size): value for size, value in timings.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The rename replaces whatever name stands there (a link itself, never its target).
        with atomic_path(path, overwrite=True) as temporary:
            temporary.write_text(json.dumps(body, default=str, indent=1))
    except (CipsError, OSError):
        pass


def measure(run: Callable[[int], float], sizes: list[int], budget: float = BUDGET_SECONDS) -> dict[int, float]:
    """Seconds per point of each size (the best of ``CALLS`` timed calls after a warm-up);
    sizes not reached within ``budget`` seconds are left out. ``run(size)`` times one call."""
    begun = time.perf_counter()
    timings = {}
    for size in sizes:
        warm = run(size)  # warm-up: buffers, kernel choice
        if time.perf_counter() - begun + CALLS * warm > budget:
            break
        best = min(run(size) for _ in range(CALLS))
        timings[size] = best / size
    return timings


def choose(timings: dict[int, float]) -> int | None:
    """The fastest size per point; among sizes within 1% of it, the smallest (less memory)."""
    if not timings:
        return None
    fastest = min(timings.values())
    return min(size for size, value in timings.items() if value <= fastest * 1.01)


def tuned_points(
    *, key: dict[str, Any], row: int, bytes_per_point: int, flops_per_point: float,
    run: Callable[[int], float], budget: float = BUDGET_SECONDS,
) -> int | None:
    """The tuned chunk size in points for ``key``, from the cache or timed now (then cached);
    None where tuning does not apply (off, a small model, nothing measurable within budget).

    ``run(points)``: seconds of one backend call on ``points`` row-major grid points, fresh style."""
    if not enabled() or flops_per_point < MIN_FLOPS_PER_POINT:
        return None
    sizes = candidates(row, bytes_per_point)
    path = entry_path(key)
    cached = read_entry(path, key, sizes)
    if cached is not None:
        return cached or None
    timings = measure(run, sizes, budget)
    # A tune cut short by the budget (a slow or loaded machine) has not seen the sizes that
    # may be best: its partial choice is not trusted. The entry records that (points null), so
    # this key keeps the heuristic without timing again; remove the entry to tune again.
    points = choose(timings) if len(timings) == len(sizes) else None
    write_entry(path, key, points, timings)
    return points


def runner_points(runner: Any) -> int | None:
    """:func:`tuned_points` for the torch backend's runner (CPU, a per-point family), memoised
    on it per thread count (the cells of a streamed render ask again for every cell)."""
    import torch

    from cips_deploy.runtime.coords import grid_coords
    from cips_deploy.runtime.seeds import seed_latent

    threads = torch.get_num_threads()
    memo = runner.__dict__.setdefault("_tuned_chunk_points", {})
    if threads in memo:
        return memo[threads]
    config = runner.config
    row = int(config.size)
    per_point = runner.bytes_per_point()
    most = max(candidates(row, per_point))
    grid = grid_coords(-(-most // row), row)  # whole rows of the training grid, as a render's chunks
    seeds = iter(range(1 << 30))

    def run(points: int) -> float:
        w = runner.map(seed_latent(next(seeds), config))  # a fresh style per call, untimed
        coords = np.ascontiguousarray(grid[:, :points])
        started = time.perf_counter()
        runner.run(coords, w)
        return time.perf_counter() - started

    key = tune_key(config.to_dict(), runner.precision, threads, torch.__version__)
    memo[threads] = tuned_points(
        key=key, row=row, bytes_per_point=per_point, flops_per_point=float(runner.generator.flops_per_point()), run=run,
    )
    return memo[threads]
