"""CREPS through the grid engines against the torch fast path, the per-point engine and the
official-style reference (issue 14), side by side in one run.

paper256 CREPS widths (random weights, seed 0), B = 1, flat layouts. Each measurement runs in
its own process (so its peak RSS is its own) and prints one JSON line; the driver prints a
Markdown table. The engines are exported once (ONNX, not re-validated here: the tests and
every export validate them) into ``--workdir``.

    python benchmarks/creps_engines.py --sizes 256 1024 --per-point-sizes 64 --threads 1
    python benchmarks/creps_engines.py --one torch --size 256 --engine DIR/creps.onnx   (one measurement)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import cips_deploy


def model():
    return cips_deploy.create("paper256", arch="creps", seed=0).eval()


def limit_threads(threads: int) -> None:
    """torch and onnxruntime on ``threads`` intra-op threads (on a shared machine, oversubscribed
    OpenMP threads would measure the other work more than these paths)."""
    import onnxruntime as ort

    torch.set_num_threads(threads)
    original = ort.SessionOptions

    class Options(original):
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = threads

    ort.SessionOptions = Options


def measure(kind: str, size: int, engine: Path) -> dict:
    """One render of size x size, seed 0; seconds of the render alone (backend built before)."""
    from cips_deploy.runtime.render import render

    if kind == "torch":
        from cips_deploy.plugins.torch_backend import TorchBackend

        backend = TorchBackend(model())
    elif kind in ("ort-grid", "ort-point"):
        from cips_deploy.exporters.backends import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(engine, providers="cpu")
        if kind == "ort-point":
            backend._grid = None  # the per-point engine alone: what an engine without lines runs
    elif kind == "reference":
        generator = model()
        axis = torch.linspace(-1, 1, size)
        v, u = torch.meshgrid(axis, axis, indexing="ij")
        coords = torch.stack([u, v])[None]  # [1, 2, N, N], the official layout
        w = generator.map(torch.randn(1, generator.config.style_dim), truncation=1.0)
        start = time.perf_counter()
        with torch.no_grad():
            generator.reference_synthesize(coords, w)
        return {"kind": kind, "size": size, "seconds": time.perf_counter() - start, "peak_rss_mb": _rss_mb()}
    else:
        raise SystemExit(f"unknown kind {kind}")
    start = time.perf_counter()
    render(backend, height=size, width=size, seed=0)
    seconds = time.perf_counter() - start
    return {"kind": kind, "size": size, "seconds": seconds, "peak_rss_mb": _rss_mb()}


def _rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--per-point-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--reference-sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--one", default=None, help="run one measurement (torch, ort-grid, ort-point, reference)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--engine", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of torch and onnxruntime (0: their defaults)")
    args = parser.parse_args()
    if args.threads:
        limit_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.engine)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="creps-engines-"))
    engine = work / "creps.onnx"
    if not engine.exists():
        from cips_deploy.exporters import export_onnx

        start = time.perf_counter()
        export_onnx(model(), engine, validate_export=False)
        print(f"exported in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    runs = [("torch", s) for s in args.sizes] + [("ort-grid", s) for s in args.sizes]
    runs += [("ort-point", s) for s in args.per_point_sizes]
    runs += [("ort-grid", s) for s in args.per_point_sizes if s not in args.sizes]
    runs += [("reference", s) for s in args.reference_sizes]
    results = []
    for kind, size in runs:
        command = [sys.executable, __file__, "--one", kind, "--size", str(size), "--engine", str(engine), "--threads", str(args.threads)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    print("| path | size | seconds | peak RSS (MB) |")
    print("| --- | --- | --- | --- |")
    for result in results:
        print(f"| {result['kind']} | {result['size']}^2 | {result['seconds']:.2f} | {result['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
