"""CIPS against CREPS at equal width: time and peak memory per image, side by side.

For each family (``paper256`` widths, random weights, seed 0) and each side (256, 1024,
2048 by default) a fresh process builds the model, renders one small image to warm up,
then times one ``flat`` render of side x side through the torch backend, and reports the
render's wall time, the process's resident memory before it (Python, torch, the model)
and its peak during it. Two ways of rendering:

- ``chunked``: the renderer's defaults (the ``memory`` chunker, the backend's budget): what
  ``cips-deploy render`` does;
- ``whole``: every point in one backend call, as an implementation without chunking runs;
  this is where the families' activation memory differs. Cases whose predicted footprint
  (``cips_deploy.contracts.footprint``) exceeds ``--max-gb`` are not run, and the prediction is shown.

    python benchmarks/cips_vs_creps.py                       # 256, 1024, 2048 (about 10 minutes on 2 cores)
    python benchmarks/cips_vs_creps.py --side 256 --side 512 # quicker

The CREPS paper's ablation has this shape (memory and time at 256, 1024, 2048); its
figures were measured on GPUs, these on whatever machine runs the script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

FAMILIES = ("skip", "creps")


def worker(arch: str, side: int, whole: bool) -> dict:
    import torch

    import cips_deploy
    from cips_deploy.plugins.torch_backend import TorchBackend
    from cips_deploy.runtime.render import render_detailed

    backend = TorchBackend(cips_deploy.create("paper256", arch=arch, seed=0))
    render_detailed(backend, "flat", 64, 64, seed=1)  # warm-up: kernels, allocator, plugin registry
    before = _rss_mb()
    chunking = dict(chunker="fixed", chunk_size=side * side) if whole else {}
    started = time.perf_counter()
    rendering = render_detailed(backend, "flat", side, side, seed=0, **chunking)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "arch": arch, "side": side, "mode": "whole" if whole else "chunked", "chunks": rendering.chunks,
        "seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak, "threads": torch.get_num_threads(),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def predicted_gb(arch: str, side: int) -> float:
    """Working memory of one whole-image call, from the model's footprint (per-point bound)."""
    from cips_deploy.contracts.config import preset_config
    from cips_deploy.contracts.footprint import render_bytes_per_point

    return render_bytes_per_point(preset_config("paper256", arch=arch)) * side * side / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, action="append", help="Image side; repeatable (default 256, 1024, 2048).")
    parser.add_argument("--family", choices=FAMILIES, action="append", help="skip (CIPS) or creps; repeatable (default both).")
    parser.add_argument("--mode", choices=("chunked", "whole"), action="append", help="Repeatable (default both).")
    parser.add_argument("--max-gb", type=float, default=12.0, help="Skip whole-image cases predicted above this.")
    parser.add_argument("--worker", nargs=3, metavar=("ARCH", "SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        arch, side, mode = args.worker
        print(json.dumps(worker(arch, int(side), mode == "whole")))
        return
    print(f"{'model':<7}{'side':>6} {'mode':<8}{'chunks':>7}{'seconds':>9}{'ms/Mpx':>9}{'RSS before':>12}{'peak RSS':>10}")
    for side in args.side or [256, 1024, 2048]:
        for mode in args.mode or ("chunked", "whole"):
            for arch in args.family or FAMILIES:
                name = "CIPS" if arch == "skip" else "CREPS"
                if mode == "whole" and arch == "skip" and predicted_gb(arch, side) > args.max_gb:
                    print(f"{name:<7}{side:>6} {mode:<8}  not run: one call needs about {predicted_gb(arch, side):.0f} GB (footprint)")
                    continue
                result = subprocess.run(
                    [sys.executable, __file__, "--worker", arch, str(side), mode],
                    capture_output=True, text=True, env={**os.environ},
                )
                if result.returncode != 0:
                    print(f"{name:<7}{side:>6} {mode:<8}  failed: {result.stderr.strip().splitlines()[-1:]}")
                    continue
                r = json.loads(result.stdout.strip().splitlines()[-1])
                print(
                    f"{name:<7}{side:>6} {mode:<8}{r['chunks']:>7}{r['seconds']:>9.2f}"
                    f"{1000 * r['seconds'] / (side * side / 1e6):>9.0f}{r['rss_before_mb']:>10.0f}MB{r['peak_rss_mb']:>8.0f}MB",
                    flush=True,
                )


if __name__ == "__main__":
    main()
