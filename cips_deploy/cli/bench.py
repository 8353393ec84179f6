"""``cips-deploy bench``: throughput and memory of synthesis, against the official way and the machine's peak.

Two kinds of benchmark:

- **whole images** (a checkpoint or ``--preset``): pixels/s and ms per image of renders on the
  official grid, each case in its own process (isolated peak memory), the official way of
  computing beside them with ``--reference`` (:mod:`cips_deploy.measure.bench`; needs torch);
- **backend calls** (an engine file, a backend spec such as ``onnxruntime:model.onnx``, or
  ``--shapes``): latency per call at each ``BATCHxPOINTS`` shape, trtexec's way
  (:mod:`cips_deploy.measure.engine_bench`; torch-free for onnxruntime engines).

Both report GFLOP/s against the machine's peak of the precision of the kernel that does the
case's products (an engine's: ``peak_precision`` in the report, which a dynamic int8 engine
has as fp32: :mod:`cips_deploy.measure.engine_bench`): the fastest product kernel of that
precision that any installed runtime reaches here, measured in the same run with the same
thread count (:mod:`cips_deploy.measure.peaks`), and flag a case above it as a measurement error.
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.cli.group import cli
from cips_deploy.contracts.command_options import ARCHITECTURE, CHUNK_SIZE, real, whole
from cips_deploy.contracts.limits import strict_json
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import get_registry

DEFAULT_SHAPE = "1x16384"
MODEL_DEFAULTS = {"repeats": 3, "warmup": 1}
CALL_DEFAULTS = {"repeats": 10, "warmup": 3}
OVER_PEAK_NOTE = ("! above the peak of its own run: a measurement error (the peak and the case on different "
                  "threads or under different load, or a FLOP count that is not the engine's); rerun on a quiet machine")


def declared_precisions(backend: str) -> tuple[str, ...]:
    """The values of the ``precision`` option that ``backend`` declares (none: fp32 only)."""
    if backend == "reference":
        return ()
    entry = get_registry().get("backend", backend)
    for option in getattr(entry.item, "options", ()):
        if option.name == "precision":
            return tuple(option.choices or ())
    return ()


def declares_option(backend: str, name: str) -> bool:
    entry = get_registry().get("backend", backend)
    return any(option.name == name for option in getattr(entry.item, "options", ()))


def is_engine_file(text: str) -> bool:
    """Whether ``text`` names a file that a backend other than torch opens by its suffix (``.onnx``, ``.plan``)."""
    from cips_deploy.runtime.backend_use import DEFAULT_BACKEND, suffix_backends

    suffix = Path(text).suffix
    claimed = suffix_backends(get_registry(), suffix) if suffix else []
    return bool(claimed) and DEFAULT_BACKEND not in claimed


@cli.command()
@click.argument("model", required=False)
@click.option("--preset", default="paper256", show_default=True, help="Random-weight model when no MODEL is given.")
@click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="With --preset: architecture.")
@click.option("--backend", "backends", multiple=True, help="Repeatable (default: torch; for an engine file, the backend its suffix names).")
@click.option("--reference", is_flag=True, help="Also time the official grouped-convolution path (whole images).")
@click.option("--resolution", "resolutions", type=whole(1, 1 << 16), multiple=True, default=[256], show_default=True, help="Whole images: repeatable.")
@click.option("--batch", "batches", type=whole(1, 4096), multiple=True, default=[1], show_default=True, help="Whole images: repeatable.")
@click.option("--chunk-size", "chunks", type=CHUNK_SIZE, multiple=True,
              help="Whole images: points per backend call; repeatable (default: the renderer's own chunks, autotuned on a CPU).")
@click.option("--shapes", "shapes", multiple=True,
              help=f"BATCHxPOINTS[,...]: time backend calls of these shapes (latency per call); implied by an engine file or spec (default {DEFAULT_SHAPE}).")
@click.option("--repeats", "--iterations", "repeats", type=whole(1, 100000), default=None,
              help="Timed runs per case (whole images, default 3: the median is reported) or at least this many timed calls per shape (default 10).")
@click.option("--warmup", "--warmUp", "warmup", type=whole(0, 100000), default=None,
              help="Untimed runs (whole images, default 1) or calls per shape (default 3) before timing.")
@click.option("--duration", type=real(0.0, 86400.0), default=0.0, show_default=True,
              help="Backend calls: also time for at least this many seconds per shape (trtexec's --duration).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=whole(0, 1024), default=0, help="Threads of every case and of the peak (default: the CPUs this process may use).")
@click.option(
    "--precision", "precisions", type=click.Choice(["fp32", "bf16", "fp16"]), multiple=True,
    help="Precision of backends that declare one (torch, openvino; fp16: CUDA only); repeatable (default fp32).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(model, preset, arch, backends, reference, resolutions, batches, chunks, shapes, repeats, warmup, duration,
          device, threads, precisions, as_json):
    """Measure synthesis speed against the machine's peak: whole images (a checkpoint or
    --preset: pixels/s, ms per image, peak memory, the official way beside them), or backend
    calls (an engine file, a spec such as onnxruntime:model.onnx or
    torch:ckpt.safetensors,precision=bf16, or --shapes: latency mean/p50/p90/p99, points/s).

    %peak is against the fastest product kernel any installed runtime (torch, onnxruntime,
    OpenVINO) reaches at the case's precision, measured in the same run on the same threads;
    a case above it is flagged as a measurement error.
    """
    from cips_deploy.measure.peaks import default_threads
    from cips_deploy.runtime.backend_specs import parse_backend_spec

    threads = threads or default_threads()
    precisions = list(dict.fromkeys(precisions or ["fp32"]))  # once each, in the order given
    if "fp16" in precisions and not device.startswith("cuda"):
        raise CipsError("--precision fp16 needs a CUDA --device (CPUs have no fast fp16 matrix product); use bf16 on a CPU.")
    spec = parse_backend_spec(model) if model is not None else None
    calls = bool(shapes) or (spec is not None and (spec.backend is not None or is_engine_file(spec.model or "")))
    if calls:
        if reference:
            raise CipsError("--reference times whole images; leave it out with an engine, a spec or --shapes.")
        defaults = CALL_DEFAULTS
        report = bench_calls(spec, preset, arch, list(backends), shapes or [DEFAULT_SHAPE], precisions, device, threads,
                             defaults["repeats"] if repeats is None else repeats,
                             defaults["warmup"] if warmup is None else warmup, duration, as_json)
        show = show_calls
    else:
        if duration:
            raise CipsError("--duration times backend calls: give --shapes (or an engine file) with it.")
        report = bench_images(model, preset, arch, list(backends) or ["torch"], reference, resolutions, batches,
                              list(chunks) or [None], precisions, device, threads,
                              MODEL_DEFAULTS["repeats"] if repeats is None else repeats,
                              MODEL_DEFAULTS["warmup"] if warmup is None else warmup, as_json)
        show = show_images
    if as_json:
        click.echo(strict_json(report))
    else:
        show(report)


def measured_peaks(used: list[str], threads: int, device: str, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each precision's peak (:func:`~cips_deploy.measure.peaks.machine_peak`); given the peaks
    measured ``before`` the cases, the better of the two runs (the best the machine reached)."""
    from cips_deploy.measure.peaks import machine_peak

    peaks = {}
    for precision in used:
        gflops, kernel, kernels = machine_peak(precision, threads, device=device)
        earlier = (before or {}).get(precision)
        if earlier is not None:
            kernels = {name: max(value, earlier["kernels"].get(name, 0.0)) for name, value in {**earlier["kernels"], **kernels}.items()}
            kernel = max(kernels, key=kernels.__getitem__) if kernels else "none"
            gflops = kernels[kernel] if kernels else float("nan")
        peaks[precision] = {"gflops": gflops, "kernel": kernel, "kernels": kernels}
    return peaks


def _fraction(gflops: float | None, peak: dict[str, Any] | None) -> float | None:
    if gflops is None or peak is None or not peak["gflops"] or math.isnan(peak["gflops"]):
        return None
    return gflops / peak["gflops"]


# ------------------------------------------------------------------------ backend calls


def bench_calls(spec, preset, arch, backends, shape_texts, precisions, device, threads, iterations, warmup, duration, quiet) -> dict:
    """Latency per call of every backend x precision at every shape (:mod:`cips_deploy.measure.engine_bench`)."""
    from cips_deploy.measure.engine_bench import (
        add_peak_fractions, backend_precision, bench_backend, case_precision, flops_per_point, parse_shapes,
    )
    from cips_deploy.measure.peaks import machine_facts
    from cips_deploy.runtime.backend_specs import BackendSpec
    from cips_deploy.runtime.backend_use import choose_backend, make_backend

    registry = get_registry()
    shapes = parse_shapes(shape_texts)
    if spec is None:  # a preset's random weights, through the backends named (torch by default)
        from cips_deploy.measure.bench import load_model

        label, model = f"preset:{preset}:{arch}", load_model(f"preset:{preset}:{arch}").eval()
        spec = BackendSpec(label, None, None)
    else:
        label, model = spec.label, spec.model
        if model is None:
            raise CipsError(f"{spec.label} needs source=FILE: the checkpoint or engine the server is serving.")
        if spec.backend is None and not Path(model).is_file():
            raise CipsError(f"No such model file: {model}.")
    if spec.backend is not None and backends:
        raise CipsError(f"{spec.label} names its backend; leave --backend out (or give the file plainly).")
    names = [spec.backend] if spec.backend is not None else (backends or [choose_backend(registry, model, None)])
    progress = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    cases = []
    for name in names:
        for precision in precisions:
            options = dict(spec.options)
            if precision != "fp32" or "precision" in options:
                if "precision" in options and precision != precisions[0]:
                    continue  # the spec fixed it: once
                if "precision" not in options:
                    if precision not in declared_precisions(name):
                        progress(f"  {name} declares no precision {precision}: it is left out of the {precision} cases.")
                        continue
                    options["precision"] = precision
            if declares_option(name, "threads") and "threads" not in options:
                options["threads"] = threads  # the peak's thread count (onnxruntime, OpenVINO)
            cases.append((name, options))
    if not cases:
        raise CipsError(f"No backend here runs {label} in {', '.join(precisions)}; leave --precision out or name another backend.")
    if name_uses_torch(names):
        import torch

        torch.set_num_threads(threads)
    before = measured_peaks(sorted(set(precisions) | {"fp32"}), threads, device)
    results = []
    for name, options in cases:
        progress(f"{label} through {name} {options or ''}")
        backend = make_backend(registry, name, model, spec.device or device, options)
        try:
            precision, peak_precision = case_precision(backend, options), backend_precision(backend, options)
            if peak_precision not in before:  # known once the engine is open (its metadata): measured before it runs too
                before.update(measured_peaks([peak_precision], threads, device))
            rows = bench_backend(backend, shapes, warmup=warmup, iterations=iterations, duration=duration, progress=progress)
            flops = flops_per_point(backend.config)
        finally:
            backend.close()
        results.append({"backend": name, "options": {k: str(v) for k, v in options.items()}, "precision": precision,
                        "peak_precision": peak_precision, "flops_per_point": flops, "shapes": rows})
    used = sorted({result["peak_precision"] for result in results} | {"fp32"})
    peaks = measured_peaks(used, threads, device, before)
    for result in results:
        peak = peaks.get(result["peak_precision"])
        add_peak_fractions(result["shapes"], result["flops_per_point"], peak["gflops"] if peak else None)
    return {"kind": "calls", "model": label, "machine": machine_facts(threads), "threads": threads, "device": device,
            "warmup": warmup, "iterations": iterations, "duration": duration, "peaks": peaks, "results": results}


def name_uses_torch(names: list[str]) -> bool:
    return "torch" in names or sys.modules.get("torch") is not None  # already loaded: its threads count too


def show_peaks(peaks: dict[str, Any]) -> None:
    for precision, peak in peaks.items():
        others = ", ".join(f"{name} {value:.1f}" for name, value in peak["kernels"].items())
        click.echo(f"{precision} peak: {peak['gflops']:.1f} GFLOP/s ({peak['kernel']}; products of 2048^3 or the largest "
                   f"that takes a second: {others or 'none measured'})")


def show_calls(report: dict) -> None:
    facts = report["machine"]
    click.echo(f"{report['model']} on {facts['cpu']} ({facts['cores']} cores, {report['threads']} threads; torch {facts['torch']}, "
               f"onnxruntime {facts['onnxruntime']}, openvino {facts['openvino']})")
    show_peaks(report["peaks"])
    click.echo(f"warm-up {report['warmup']} calls, then at least {report['iterations']} calls"
               + (f" and {report['duration']:g} s" if report["duration"] else "") + " per shape; latency in ms per call")
    click.echo("%peak: against the peak of the precision of the kernel doing the case's products (of),"
               " which may differ from the engine's (docs/performance.md)")
    click.echo(f"{'backend':<12}{'prec':>12}{'shape':>12}{'calls':>7}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}"
               f"{'points/s':>12}{'GFLOP/s':>9}{'%peak':>7}{'of':>6}")
    flagged = False
    for result in report["results"]:
        for row in result["shapes"]:
            gflops = f"{row['gflops']:.1f}" if row["gflops"] is not None else "-"
            share = f"{100 * row['fraction_of_peak']:.0f}%" if row["fraction_of_peak"] is not None else "-"
            mark = "!" if row["over_peak"] else ""
            flagged |= row["over_peak"]
            click.echo(f"{result['backend']:<12}{result['precision']:>12}{row['shape']:>12}{row['calls']:>7}{row['mean_ms']:>9.2f}"
                       f"{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}{row['p99_ms']:>9.2f}{row['points_per_second']:>12,.0f}"
                       f"{gflops:>9}{share:>7}{result['peak_precision']:>6}{mark}")
    if flagged:
        click.echo(OVER_PEAK_NOTE)
    if any(result["flops_per_point"] is None for result in report["results"]):
        click.echo("GFLOP/s: the model family's FLOP count needs PyTorch (the build extra); line-factored models have none per point.")


# ------------------------------------------------------------------------ whole images


def bench_images(model, preset, arch, backends, reference, resolutions, batches, chunks, precisions, device, threads,
                 repeats, warmup, quiet) -> dict:
    """Whole images, each case in its own process (:mod:`cips_deploy.measure.bench`)."""
    import torch  # the build extra: a missing one is one sentence (cips_deploy.cli.group)

    from cips_deploy.measure.bench import BenchCase, run_case_isolated
    from cips_deploy.measure.peaks import machine_facts, over_peak

    if model is not None and not Path(model).exists():
        raise CipsError(f"No such checkpoint: {model}.")
    label = str(model) if model else f"preset:{preset}:{arch}"
    common = dict(model=label, device=device, repeats=repeats, warmup=warmup, threads=threads)
    cases = []
    for b, p, r, n, c in itertools.product(backends, precisions, resolutions, batches, chunks):
        if p != "fp32" and p not in declared_precisions(b):
            if not quiet and r == resolutions[0] and n == batches[0] and c == chunks[0]:
                click.echo(f"  {b} declares no precision {p}: it is left out of the {p} cases.", err=True)
            continue
        cases.append(BenchCase(backend=b, resolution=r, batch=n, chunk=c, precision=p, **common))
    if reference:
        cases = [BenchCase(backend="reference", resolution=r, batch=n, **common)
                 for r, n in itertools.product(resolutions, batches)] + cases
    torch.set_num_threads(threads)  # the peak under the same threads as the cases
    used = ["fp32"] + [p for p in precisions if p != "fp32" and any(case.precision == p for case in cases)]
    before = measured_peaks(used, threads, device)
    results = []
    for case in cases:
        if not quiet:
            chunk = case.chunk or "auto"
            click.echo(f"  {case.backend} {case.precision} {case.resolution}px batch {case.batch} chunk {chunk} ...", err=True)
        results.append(run_case_isolated(case))
    peaks = measured_peaks(used, threads, device, before)
    references = {(r["resolution"], r["batch"]): r["pixels_per_second"] for r in results if r["backend"] == "reference"}
    for result in results:
        peak = peaks[result["precision"]]  # a checkpoint's products run in its case's precision
        result["peak_precision"] = result["precision"]
        result["matmul_peak_gflops"] = peak["gflops"]
        result["peak_kernel"] = peak["kernel"]
        result["fraction_of_matmul_peak"] = _fraction(result["gflops"], peak)
        result["over_peak"] = over_peak(result["fraction_of_matmul_peak"])
        base = references.get((result["resolution"], result["batch"]))
        result["speedup_vs_reference"] = result["pixels_per_second"] / base if base else None
    return {
        "kind": "images", "machine": machine_facts(threads), "threads": threads,
        "matmul_peak_gflops": peaks["fp32"]["gflops"], "matmul_peaks_gflops": {p: peak["gflops"] for p, peak in peaks.items()},
        "peaks": peaks, "model": label, "results": results,
    }


def show_images(report: dict) -> None:
    facts = report["machine"]
    click.echo(f"{report['model']} on {facts['cpu']} ({facts['cores']} cores, {report['threads']} threads; torch {facts['torch']}, "
               f"onnxruntime {facts['onnxruntime']}, openvino {facts['openvino']})")
    show_peaks(report["peaks"])
    click.echo("%peak is against the case's own precision; chunk: points per call (the renderer's own where not given)")
    click.echo(
        f"{'backend':<12}{'prec':>5}{'res':>6}{'batch':>6}{'chunk':>8}{'ms/image':>11}{'pixels/s':>11}"
        f"{'GFLOP/s':>9}{'%peak':>7}{'RSS MB':>8}{'vs ref':>8}"
    )
    flagged = False
    for r in report["results"]:
        ratio = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        share = f"{100 * r['fraction_of_matmul_peak']:.0f}%" if r["fraction_of_matmul_peak"] is not None else "-"
        flagged |= r["over_peak"]
        click.echo(
            f"{r['backend']:<12}{r['precision']:>5}{r['resolution']:>6}{r['batch']:>6}{r['chunk']:>8}{r['ms_per_image']:>11.1f}"
            f"{r['pixels_per_second']:>11,.0f}{r['gflops']:>9.1f}{share:>7}"
            f"{r['peak_rss_mb']:>8.0f}{ratio:>8}" + (" !" if r["over_peak"] else "")
        )
    if flagged:
        click.echo(OVER_PEAK_NOTE)
