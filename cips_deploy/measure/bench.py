"""Synthesis benchmarks: pixels/s, ms per image, achieved GFLOP/s and peak memory.

Every case runs in a fresh worker process (``python -m cips_deploy.measure.bench CASE_JSON``), so
its peak resident memory is its own and no case warms the caches of the next. A case
renders ``batch`` images of ``resolution x resolution`` on the official grid through one
backend, ``chunk`` points at a time, and reports the median over ``repeats`` timed runs
after ``warmup`` untimed ones. The ``reference`` backend is the official code's way of
computing (grouped convolutions over whole images, :mod:`.reference`), so speed-ups are
ratios measured in the same run. The machine's matrix-product peak is measured in the same
run too, once per precision that the cases use (a bf16 product is about twice as fast as
an fp32 one on CPUs with AVX512-BF16), and achieved GFLOP/s come from the model's own
FLOP count. ``precision`` is the torch backend's option (fp32, bf16, fp16 on CUDA).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cips_deploy.families.dtypes import DTYPES
from cips_deploy.errors import CipsError


@dataclass(frozen=True)
class BenchCase:
    """One configuration. ``model`` is a checkpoint path or ``preset:NAME[:ARCH]``."""

    model: str
    backend: str = "torch"
    resolution: int = 256
    batch: int = 1
    chunk: int | None = None  # points per call; None: the renderer's own chunking (the memory chunker, autotuned)
    device: str = "cpu"
    repeats: int = 3
    warmup: int = 1
    threads: int = 0  # 0: torch's default
    precision: str = "fp32"  # the torch backend's option; other backends take fp32 only


PRECISION_DTYPES = DTYPES  # the torch dtype of each precision name (cips_deploy.families.dtypes)


def matmul_peak_gflops(
    size: int = 2048, repeats: int = 5, dtype: torch.dtype | str = torch.float32, device: str = "cpu"
) -> float:
    """Median GFLOP/s of a ``size``-cubed matrix product in ``dtype``: the practical peak."""
    dtype = PRECISION_DTYPES[dtype] if isinstance(dtype, str) else dtype
    a = torch.randn(size, size).to(device, dtype)
    b = torch.randn(size, size).to(device, dtype)
    cuda = torch.device(device).type == "cuda"
    a @ b
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def load_model(spec: str):
    """A Generator from a checkpoint path or ``preset:NAME[:ARCH]`` (random weights, seed 0)."""
    from cips_deploy import create, load

    if spec.startswith("preset:"):
        _, preset, *rest = spec.split(":")
        return create(preset, arch=rest[0] if rest else "skip", seed=0)
    return load(spec)


def run_case(case: BenchCase) -> dict[str, Any]:
    """Time one case in this process; returns the measured figures."""
    from cips_deploy.runtime.backend_arrays import to_backend
    from cips_deploy.runtime.coords import grid_coords
    from cips_deploy.runtime.plugin_manager import get_registry

    if case.threads:
        torch.set_num_threads(case.threads)
    generator = load_model(case.model).eval()
    R, B = case.resolution, case.batch
    pixels = R * R
    runs = case.warmup + case.repeats
    # A new latent for every run, as a user renders new images: nothing computed for one
    # style (CREPS's cached lines) can be reused by the next.
    z = torch.randn(runs, B, generator.config.style_dim, generator=torch.Generator().manual_seed(0))
    coords = torch.from_numpy(grid_coords(R, R)).expand(B, -1, -1).contiguous()  # [B, R*R, 2]
    with torch.inference_mode():
        ws = [generator.map(z[run]) for run in range(runs)]

    if case.backend == "reference":
        if case.precision != "fp32":
            raise CipsError("The reference path is the official code's, in fp32 only.")
        planar = coords.reshape(B, R, R, 2).permute(0, 3, 1, 2).contiguous()  # [B, 2, R, R]

        def render_once(w: Tensor) -> None:
            with torch.inference_mode():
                generator.reference_synthesize(planar, w)

        chunk = pixels
    else:
        backend_class = get_registry().get("backend", case.backend).item
        options = {"precision": case.precision} if case.precision != "fp32" else {}
        if case.threads and any(option.name == "threads" for option in getattr(backend_class, "options", ())):
            options["threads"] = case.threads  # onnxruntime, OpenVINO: the threads of the peak beside them
        backend = backend_class(generator, device=case.device, **options)
        spans = case_spans(backend, R, B, case.chunk)
        chunk = max(stop - start for start, stop in spans)
        # Backends take host numpy arrays (legacy ones tensors): cut before timing, as a renderer hands them over.
        parts = [np.ascontiguousarray(coords[:, start:stop].numpy()) for start, stop in spans]

        def render_once(w: Tensor) -> None:
            w = w.numpy()
            for part in parts:
                backend.run(*to_backend(backend, part, w))

    times = []
    for run, w in enumerate(ws):
        started = time.perf_counter()
        render_once(w)
        if run >= case.warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    flops = model_flops_per_pixel(generator, case.backend, R) * B * pixels
    return {
        **asdict(case),
        "chunk": chunk,
        "seconds": seconds,
        "ms_per_image": 1000 * seconds / B,
        "pixels_per_second": B * pixels / seconds,
        "gflops": flops / seconds / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def case_spans(backend: Any, resolution: int, batch: int, chunk: int | None) -> list[tuple[int, int]]:
    """The calls of one image: ``chunk`` points each, or with None the renderer's default cut
    (the memory chunker on the backend's preferred budget, which the torch backend autotunes
    on a CPU: what ``render`` without --chunk-size does)."""
    from cips_deploy.contracts.chunking import ChunkRequest
    from cips_deploy.runtime.plugin_manager import get_registry

    pixels = resolution * resolution
    if chunk is not None:
        chunk = min(chunk, pixels)
        return [(start, min(start + chunk, pixels)) for start in range(0, pixels, chunk)]
    request = ChunkRequest(
        n_points=pixels, bytes_per_point=backend.bytes_per_point(),
        row_boundaries=np.arange(resolution + 1, dtype=np.int64) * resolution,
        preferred_memory_budget=backend.preferred_memory_budget(),
    )
    return list(get_registry().get("chunker", "memory").item.spans(request))


def model_flops_per_pixel(generator: Any, backend: str, resolution: int) -> float:
    """The model's own FLOP count per pixel for the path ``backend`` takes.

    The torch backend and the reference path take a family's grid path (CREPS: lines once
    per row and column); engines evaluate every point on its own.
    """
    if backend in ("torch", "reference"):
        return generator.grid_flops_per_point(resolution, resolution)
    return generator.flops_per_point()


def run_case_isolated(case: BenchCase, timeout: float = 3600) -> dict[str, Any]:
    """Run ``case`` in a fresh Python process and return its figures."""
    result = subprocess.run(
        [sys.executable, "-m", "cips_deploy.measure.bench", json.dumps(asdict(case))],
        capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise CipsError(f"Benchmark case {case.backend} at {case.resolution}px failed: {lines[-1] if lines else 'no output'}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine_facts() -> dict[str, Any]:
    """What the figures were measured on (:func:`cips_deploy.measure.peaks.machine_facts`, plus torch's view)."""
    from cips_deploy.measure.peaks import machine_facts as runtime_facts

    cpu = runtime_facts()["cpu"]
    facts = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


if __name__ == "__main__":  # the worker: one case, JSON in, JSON out
    print(json.dumps(run_case(BenchCase(**json.loads(sys.argv[1])))))
