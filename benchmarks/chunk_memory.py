"""Peak memory of chunked rendering follows the chunk, not the image.

Renders a flat image with the ``tiny`` preset under several chunkings, each in its own
subprocess (peak RSS is a per-process high-water mark), and prints for each: the chunk in
points, the chunk's predicted working memory (``cips_deploy.contracts.footprint``), the process's
resident memory before the render (Python, torch, the model), its peak during the render,
the difference, and the size of the uint8 output image, which any render must hold.

    python benchmarks/chunk_memory.py            # 4096 x 4096 with several chunkings (minutes)
    python benchmarks/chunk_memory.py --quick    # 1024 x 1024 only

Timing is printed for information; this is a memory benchmark, not a speed one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

FULL = [
    # (side, chunker, chunk_size, memory_budget)
    (4096, "fixed", 65_536, None),
    (4096, "rows", 16, None),  # 16 rows of 4096: the same 65,536 points per chunk
    (4096, "memory", None, 64.0),
    (4096, "fixed", 1_048_576, None),
    (2048, "fixed", 65_536, None),  # same chunk, a quarter of the image: same working memory
    (1024, "fixed", 1024 * 1024, None),  # the whole image in one chunk, for contrast:
    (2048, "fixed", 2048 * 2048, None),  # this is what memory "following the image" looks like
]
QUICK = [
    (1024, "fixed", 16_384, None),
    (1024, "fixed", 262_144, None),
    (1024, "memory", None, 64.0),
    (1024, "fixed", 1024 * 1024, None),
]


def current_rss_mb() -> float:
    """Resident memory of this process now, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(side: int, chunker: str, chunk_size: int | None, memory_budget: float | None, threads: int | None) -> dict:
    """Run one render in this process and report its memory figures."""
    import torch

    import cips_deploy
    from cips_deploy.contracts.footprint import render_bytes_per_point
    from cips_deploy.plugins.chunkers import DEFAULT_BUDGET_MB

    if threads:
        torch.set_num_threads(threads)
    generator = cips_deploy.create("tiny", seed=0)
    cips_deploy.render(generator, "flat", 64, 64, chunk_size=4096)  # warm up lazily loaded kernels
    baseline = current_rss_mb()
    started = time.perf_counter()
    image = cips_deploy.render(
        generator, "flat", side, side, seed=0, chunker=chunker, chunk_size=chunk_size, memory_budget=memory_budget
    )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    bytes_per_point = render_bytes_per_point(generator.config)
    if chunker == "memory":
        points = int((memory_budget or DEFAULT_BUDGET_MB) * 2**20 // bytes_per_point)
    elif chunker == "rows":
        points = chunk_size * side
    else:
        points = chunk_size
    points = min(points, side * side)
    return {
        "image": f"{side}x{side}",
        "chunker": chunker if chunker != "memory" else f"memory {memory_budget:g} MB",
        "chunk_points": points,
        "predicted_chunk_mb": round(points * bytes_per_point / 2**20, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "render_increase_mb": round(peak - baseline, 1),
        "output_image_mb": round(image.nbytes / 2**20, 1),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024 x 1024 configurations only")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per render (default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return
    rows = []
    for configuration in QUICK if args.quick else FULL:
        result = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps([*configuration, args.threads])], capture_output=True, text=True
        )
        if result.returncode != 0:
            sys.exit(f"configuration {configuration} failed:\n{result.stderr}")
        rows.append(json.loads(result.stdout))
        if not args.json:
            print_row(rows[-1], header=len(rows) == 1)
    if args.json:
        print(json.dumps(rows, indent=2))


def print_row(row: dict, header: bool) -> None:
    columns = [
        ("image", 10), ("chunker", 16), ("chunk_points", 13), ("predicted_chunk_mb", 12), ("baseline_rss_mb", 12),
        ("peak_rss_mb", 12), ("render_increase_mb", 12), ("output_image_mb", 10), ("seconds", 8),
    ]
    titles = ["image", "chunker", "chunk points", "chunk MB*", "before MB", "peak MB", "peak-before", "image MB", "s"]
    if header:
        print("  ".join(f"{title:>{width}}" for title, (_, width) in zip(titles, columns)))
        print("  * predicted working memory of one chunk (cips_deploy.contracts.footprint)")
    print("  ".join(f"{row[key]:>{width},}" if isinstance(row[key], int) else f"{row[key]!s:>{width}}" for key, width in columns), flush=True)


if __name__ == "__main__":
    main()
