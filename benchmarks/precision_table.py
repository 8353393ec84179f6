"""Every precision of every CPU runtime side by side: speed, % of the relevant peak, quality.

One run measures, on this machine:

- the matrix-product peaks (2048^3, median of 5, the threads of the cases): torch fp32,
  torch bf16 and onnxruntime's int8 ``MatMulInteger`` (u8 x s8, the product that dynamic
  int8 engines run);
- speed, each case in a fresh process: paper256 CIPSskip (random weights, seed 0) at
  256 x 256, B = 1, ``--chunk`` points per backend call, median of ``--repeats`` images
  after one warm-up: torch fp32 / bf16, onnxruntime fp32 / fp16 / int8 / int8-static,
  OpenVINO f32 / bf16 (skipped when openvino is absent);
- quality: PSNR (dB) and max |error| of each path against torch fp32 on ``max(size, 64)``
  square images on the training grid, seeds 0-3, truncation 1, outputs clipped to [-1, 1]
  (:mod:`cips_deploy.exporters.quality`), on the bundled demo model (trained) and on the
  official-format fixture ``cipsskip_s8.pt`` (when present).

    python benchmarks/precision_table.py --threads 2 --json results.json
    python benchmarks/precision_table.py --threads 2 --skip-quality      # speed only
    python benchmarks/precision_table.py --threads 2 --skip-speed        # quality only
    python benchmarks/precision_table.py --arch creps --threads 1 --chunk 16384   # CREPS rows

``--arch creps``: paper256 CREPS (random weights, seed 0) on the torch backend's grid fast
path (fp32, bf16; CREPS engines are per point, a different computation), FLOPs by the grid
count (lines once per row and column), quality on the official CREPS fixtures (imported).

Each case measures its own peak in its own process, right before and after its images (the
better of the two; each the fastest product kernel of its kind that any installed runtime
reaches, :mod:`cips_deploy.measure.peaks`), and reports its %peak against that: on a shared machine the load changes from minute to
minute, and a ratio taken side by side is what survives it.

The engines are exported into a temporary folder with the reduced-precision passes of
``cips-deploy export`` (:func:`cips_deploy.exporters.quantize.convert_engine`) without the
PSNR gate, so that every path is measured even where it would fail the default threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OFFICIAL = FIXTURES / "official-cips" / "cipsskip_s8.pt"
OFFICIAL_CREPS = [FIXTURES / "official-creps" / name for name in ("creps_r16_snapshot.pkl", "creps_r32_fp16_snapshot.pkl")]
# (label, backend, option dict, engine file key or None, peak key)
PATHS = [
    ("torch fp32", "torch", {}, None, "fp32"),
    ("torch bf16", "torch", {"precision": "bf16"}, None, "bf16"),
    ("onnxruntime fp32", "onnxruntime", {}, "fp32", "fp32"),
    ("onnxruntime fp16", "onnxruntime", {}, "fp16", "fp32"),
    ("onnxruntime int8", "onnxruntime", {}, "int8", "int8"),
    ("onnxruntime int8-static", "onnxruntime", {}, "int8-static", "int8"),
    ("openvino f32", "openvino", {}, "fp32", "fp32"),
    ("openvino bf16", "openvino", {"precision": "bf16"}, "fp32", "bf16"),
]


def have_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def measure_peak(kind: str, threads: int = 0) -> float:
    """GFLOP/s (GOP/s for int8) of the fastest product kernel of this kind that any installed
    runtime reaches here on ``threads`` threads (torch, onnxruntime's MLAS, OpenVINO's oneDNN:
    cips_deploy.measure.peaks). Before issue 24 this was torch's product alone, which the
    onnxruntime and OpenVINO engines beat (their rows read 172-189% of "peak")."""
    from cips_deploy.measure.peaks import default_threads, machine_peak

    return machine_peak(kind, threads or default_threads())[0]


def make_engines(generator, folder: Path, name: str) -> dict[str, Path]:
    """fp32, fp16, int8 and int8-static engines of ``generator`` in ``folder``."""
    from cips_deploy.exporters import export_onnx
    from cips_deploy.exporters.onnx_export import mapping_path_for
    from cips_deploy.exporters.quantize import convert_engine

    engines = {"fp32": folder / f"{name}-fp32.onnx"}
    export_onnx(generator, engines["fp32"], validate_export=generator.config.size <= 64)
    for mode in ("fp16", "int8", "int8-static"):
        path = folder / f"{name}-{mode}.onnx"
        convert_engine(engines["fp32"], path, generator, mode)  # measured below, not gated
        shutil.copyfile(mapping_path_for(engines["fp32"]), mapping_path_for(path))  # the fp32 mapping engine
        engines[mode] = path
    return engines


def open_backend(backend: str, options: dict, generator, engine: Path | None):
    from cips_deploy.runtime.plugin_manager import get_registry

    backend_class = get_registry().get("backend", backend).item
    threads = torch.get_num_threads()
    if any(option.name == "threads" for option in backend_class.options) and "threads" not in options:
        options = {**options, "threads": threads}  # onnxruntime, OpenVINO: the threads of the peak beside them
    return backend_class(engine if engine is not None else generator, **options)


def quality(generator, engines: dict[str, Path], paths) -> dict[str, dict]:
    """PSNR and max error of every path against torch fp32, seeds 0-3."""
    from cips_deploy.exporters.quality import CHUNK_POINTS, psnr_and_max_error, quality_inputs

    coords, ws = quality_inputs(generator)
    coords, ws = np.asarray(coords, np.float32), [np.asarray(w, np.float32) for w in ws]  # backends take numpy

    def render(backend, w):
        return np.concatenate([backend.run(coords[:, s : s + CHUNK_POINTS], w) for s in range(0, coords.shape[1], CHUNK_POINTS)], 1)

    results = {}
    reference = None
    for label, backend_name, options, engine_key, _ in paths:
        backend = open_backend(backend_name, options, generator, engines[engine_key] if engine_key else None)
        images = [render(backend, w) for w in ws]
        backend.close()
        if reference is None:
            reference = images  # torch fp32 comes first
        figures = [psnr_and_max_error(r, i) for r, i in zip(reference, images)]
        results[label] = {"psnr_db": min(p for p, _ in figures), "max_abs": max(e for _, e in figures)}
    return results


def run_speed_case(spec: dict) -> dict:
    """One timed case (in a fresh process)."""
    import cips_deploy
    from cips_deploy.runtime.coords import grid_coords

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    generator = cips_deploy.create("paper256", arch=spec.get("arch", "skip"), seed=0).eval()
    engine = Path(spec["engine"]) if spec["engine"] else None
    backend = open_backend(spec["backend"], spec["options"], generator, engine)
    side, chunk = 256, spec["chunk"]
    coords = grid_coords(side, side)  # numpy, as the runtime hands it to backends
    z = torch.randn(spec["repeats"] + 1, 1, generator.config.style_dim, generator=torch.Generator().manual_seed(0)).numpy()
    before = measure_peak(spec["peak"], spec["threads"])
    times = []
    for run in range(spec["repeats"] + 1):
        w = backend.map(z[run])
        started = time.perf_counter()
        for start in range(0, side * side, chunk):
            backend.run(coords[:, start : start + chunk], w)
        if run:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    # The case's own peak, measured in this process right before and after the images:
    # on a shared machine the load changes from minute to minute, and a ratio taken
    # side by side is what survives it.
    peak = max(before, measure_peak(spec["peak"], spec["threads"]))  # the best the machine reached around the case
    # The torch backend takes the family's grid path (CREPS: lines once per row and column);
    # engines evaluate every point on its own (for CIPS both counts are the same).
    flops = generator.grid_flops_per_point(side, side) if spec["backend"] == "torch" else generator.flops_per_point()
    return {"seconds": seconds, "pixels_per_second": side * side / seconds,
            "gflops": flops * side * side / seconds / 1e9, "case_peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--arch", default="skip", choices=("skip", "creps"))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_speed_case(json.loads(args.case))))
        return

    import cips_deploy
    from cips_deploy.measure.bench import machine_facts
    from cips_deploy.models import CREPS_DEMO_MODEL, DEMO_MODEL

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [p for p in PATHS if p[1] != "openvino" or have_openvino()]
    if args.arch == "creps":  # the torch rows: CREPS's engines run the per-point computation
        paths = [p for p in paths if p[1] == "torch"]
    peaks = {kind: measure_peak(kind, args.threads) for kind in ("fp32", "bf16", "int8")}
    print(f"peaks (best kernel of any installed runtime): fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} GFLOP/s; "
          f"int8 (onnxruntime MatMulInteger) {peaks['int8']:.1f} GOP/s", file=sys.stderr)
    report = {"machine": machine_facts(), "arch": args.arch, "peaks": peaks, "chunk": args.chunk, "repeats": args.repeats, "speed": {}, "quality": {}}
    with tempfile.TemporaryDirectory(prefix="cips-precision-") as work:
        work = Path(work)
        models, engines = {}, {}
        if not args.skip_speed and args.arch != "creps":
            paper256 = cips_deploy.create("paper256", seed=0).eval()
            engines["paper256"] = make_engines(paper256, work, "paper256")
        for label, backend, options, engine_key, peak in [] if args.skip_speed else paths:
            spec = {"arch": args.arch, "backend": backend, "options": options, "threads": args.threads, "chunk": args.chunk, "peak": peak,
                    "repeats": args.repeats, "engine": str(engines["paper256"][engine_key]) if engine_key else None}
            done = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{label} failed: {done.stderr.strip().splitlines()[-1]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["fraction_of_peak"] = result["gflops"] / result["case_peak"]
            result["peak"] = peak
            report["speed"][label] = result
            print(f"  {label:<26} {result['pixels_per_second']:>9,.0f} px/s  {100 * result['fraction_of_peak']:4.0f}% of {peak} "
                  f"({result['case_peak']:.1f} in the case's process)", file=sys.stderr)
        if not args.skip_quality and args.arch == "creps":  # the CREPS demo, the official CREPS fixtures (imported)
            if CREPS_DEMO_MODEL.is_file():  # the bundled CREPS demo (docs/creps.md)
                models["creps demo"] = cips_deploy.load(CREPS_DEMO_MODEL).eval()
            for path in OFFICIAL_CREPS:
                if path.is_file():
                    models[f"official {path.stem.removesuffix('_snapshot')}"] = cips_deploy.load(path).eval()
        elif not args.skip_quality:  # trained and official models; random paper256: see BENCHMARKS.md
            models["demo"] = cips_deploy.load(DEMO_MODEL).eval()
            if OFFICIAL.is_file():
                models["official cipsskip_s8"] = cips_deploy.load(OFFICIAL).eval()
        for name, generator in models.items():
            if name not in engines and args.arch != "creps":
                engines[name] = make_engines(generator, work, name.split()[0])
            report["quality"][name] = quality(generator, engines.get(name, {}), paths)
            print(f"  quality on {name} done", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print_table(report)


def print_table(report: dict) -> None:
    models = list(report["quality"])
    header = "| path | px/s | % of peak (which, GFLOP/s) | " + " | ".join(f"PSNR / max err, {m}" for m in models) + " |"
    print(header)
    print("|" + " --- |" * (3 + len(models)))
    labels = list(report["speed"]) or (list(report["quality"][models[0]]) if models else [])
    for label in labels:
        speed = report["speed"].get(label)
        cells = []
        for model in models:
            q = report["quality"][model].get(label)
            if q is None:
                cells.append("-")
                continue
            psnr = "identical" if math.isinf(q["psnr_db"]) else f"{q['psnr_db']:.1f} dB"
            cells.append(f"{psnr} / {q['max_abs']:.1e}")
        figures = (f"{speed['pixels_per_second']:,.0f} | {100 * speed['fraction_of_peak']:.0f}% ({speed['peak']}, {speed['case_peak']:.0f})"
                   if speed else "- | -")
        print(f"| {label} | {figures} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
