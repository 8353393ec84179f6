"""Where the torch bf16 path spends its time: paper256 CIPSskip, 256 x 256, B = 1.

In one process, interleaved so that the machine's load affects both alike:

- the bf16 and fp32 matrix-product peaks (2048^3, median of 5);
- ``--images`` renders through the torch backend (``precision=bf16``), ``--chunk`` points
  per call, timed one by one (the median is reported);
- the same layers' products alone: every modulated layer's ``[N, in] x [in, out]`` bf16
  product at the chunk's N, timed as the render runs them (``baddbmm``), which bounds what
  the render can reach;
- a ``torch.profiler`` table of one render: each operator's share of the time.

    python benchmarks/profile_bf16.py --threads 2 --chunk 2048 --images 5

From these: %peak of the render = its GFLOP/s over the bf16 peak; %peak of the products
alone; and the share of the time outside the products, which is what keeps the render
below the products' own efficiency (Amdahl: render %peak = products' %peak x their share).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cips_deploy
from cips_deploy.measure.bench import matmul_peak_gflops
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.families.layers import ModulatedLinear
from cips_deploy.plugins.torch_backend import TorchBackend


def products_only(generator, n_points: int, repeats: int = 5) -> tuple[float, float]:
    """(seconds per image, GFLOP/s) of the layers' bf16 products alone at N = n_points."""
    shapes = [(m.weight.shape[1], m.weight.shape[0]) for m in generator.modules() if isinstance(m, ModulatedLinear)]
    operands = [(torch.randn(1, n_points, i).bfloat16(), torch.randn(1, i, o).bfloat16(), torch.randn(o).bfloat16())
                for i, o in shapes]
    chunks = 65536 / n_points
    flops = sum(2 * n_points * i * o for i, o in shapes)
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for x, w, b in operands:
            torch.baddbmm(b, x, w)
        times.append(time.perf_counter() - started)
    per_chunk = statistics.median(times[1:])
    return per_chunk * chunks, flops / per_chunk / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--rows", type=int, default=14, help="operators shown in the profile table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = cips_deploy.create("paper256", seed=0).eval()
    backend = TorchBackend(generator, precision="bf16")
    coords = grid_coords(256, 256)  # numpy, as the runtime hands it to backends
    flops_image = generator.flops_per_point() * 65536

    def render(w):
        for start in range(0, 65536, args.chunk):
            backend.run(coords[:, start : start + args.chunk], w)

    render(backend.map(torch.randn(1, generator.config.style_dim).numpy()))  # warm-up
    peaks, images, products = [], [], []
    for index in range(args.images):  # interleaved: peak, image, products
        peaks.append(matmul_peak_gflops(dtype="bf16"))
        w = backend.map(torch.randn(1, generator.config.style_dim, generator=torch.Generator().manual_seed(index)).numpy())
        started = time.perf_counter()
        render(w)
        images.append(time.perf_counter() - started)
        products.append(products_only(generator, args.chunk))
    fp32_peak = matmul_peak_gflops(dtype="fp32")
    peak, image = statistics.median(peaks), statistics.median(images)
    product_seconds = statistics.median(p[0] for p in products)
    product_gflops = statistics.median(p[1] for p in products)
    print(f"torch {torch.__version__}, {args.threads} threads, chunk {args.chunk}, {args.images} images")
    print(f"peaks (2048^3, median of 5 each, {args.images} times): bf16 {peak:.1f} GFLOP/s "
          f"(range {min(peaks):.1f}-{max(peaks):.1f}), fp32 {fp32_peak:.1f}")
    print(f"render: {image:.3f} s/image (range {min(images):.3f}-{max(images):.3f}), {65536 / image:,.0f} px/s, "
          f"{flops_image / image / 1e9:.1f} GFLOP/s = {100 * flops_image / image / 1e9 / peak:.0f}% of the bf16 peak")
    print(f"products alone: {product_seconds:.3f} s/image, {product_gflops:.1f} GFLOP/s = {100 * product_gflops / peak:.0f}% "
          f"of the peak; {100 * product_seconds / image:.0f}% of the render's time")

    w = backend.map(torch.randn(1, generator.config.style_dim).numpy())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        render(w)
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
