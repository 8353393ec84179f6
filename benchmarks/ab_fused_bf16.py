"""Interleaved A/B of the fused bf16 layers (``cips_deploy.families.layers.FUSE_BF16_CPU``) in one process.

paper256 (random weights, seed 0), 256 x 256, the torch backend in bf16, ``--chunk`` points
per call; each round measures the bf16 2048^3 peak, then one image fused and one unfused.
Prints the median seconds per image and % of the median peak for both.

    python benchmarks/ab_fused_bf16.py --threads 1 --images 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import cips_deploy
import cips_deploy.families.layers as layers
from cips_deploy.measure.bench import matmul_peak_gflops
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.plugins.torch_backend import TorchBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = cips_deploy.create("paper256", seed=0).eval()
    backend = TorchBackend(generator, precision="bf16")
    coords = grid_coords(256, 256)  # numpy, as the runtime hands it to backends
    w = backend.map(torch.randn(1, generator.config.style_dim, generator=torch.Generator().manual_seed(0)).numpy())

    def render() -> np.ndarray:
        return np.concatenate([backend.run(coords[:, s : s + args.chunk], w) for s in range(0, 65536, args.chunk)], 1)

    available = layers.FUSE_BF16_CPU
    if not available:
        raise SystemExit("No oneDNN fused bf16 linear here (it needs this torch's mkldnn and a CPU with bf16 "
                         "instructions, AVX512-BF16 or AMX): nothing to compare.")
    times: dict[bool, list[float]] = {True: [], False: []}
    peaks = []
    try:
        layers.FUSE_BF16_CPU = True
        fused = render()
        layers.FUSE_BF16_CPU = False
        print(f"fused against unfused: max |difference| {np.abs(fused - render()).max():.3g}")
        for _ in range(args.images):
            peaks.append(matmul_peak_gflops(dtype="bf16"))
            for mode in (True, False):
                layers.FUSE_BF16_CPU = mode
                started = time.perf_counter()
                render()
                times[mode].append(time.perf_counter() - started)
    finally:
        layers.FUSE_BF16_CPU = available
    peak = statistics.median(peaks)
    flops = generator.flops_per_point() * 65536
    for mode, label in ((True, "fused"), (False, "unfused")):
        seconds = statistics.median(times[mode])
        print(f"{label:8} {seconds:.3f} s/image, {65536 / seconds:,.0f} px/s, {100 * flops / seconds / 1e9 / peak:.0f}% of the "
              f"bf16 peak {peak:.1f} GFLOP/s (images: {', '.join(f'{t:.2f}' for t in times[mode])})")


if __name__ == "__main__":
    main()
