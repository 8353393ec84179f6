"""``cips-deploy bench``: throughput and memory of synthesis, against the official way and the machine's peak."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import click

from cips_deploy.contracts.command_options import ARCHITECTURE
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.cli.group import cli
from cips_deploy.contracts.command_options import CHUNK_SIZE, whole


def declared_precisions(backend: str) -> tuple[str, ...]:
    """The values of the ``precision`` option that ``backend`` declares (none: fp32 only)."""
    if backend == "reference":
        return ()
    entry = get_registry().get("backend", backend)
    for option in getattr(entry.item, "options", ()):
        if option.name == "precision":
            return tuple(option.choices or ())
    return ()


@cli.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--preset", default="paper256", show_default=True, help="Random-weight model when no CHECKPOINT is given.")
@click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="With --preset: architecture.")
@click.option("--backend", "backends", multiple=True, default=["torch"], show_default=True, help="Repeatable.")
@click.option("--reference", is_flag=True, help="Also time the official grouped-convolution path.")
@click.option("--resolution", "resolutions", type=whole(1, 1 << 16), multiple=True, default=[256], show_default=True, help="Repeatable.")
@click.option("--batch", "batches", type=whole(1, 4096), multiple=True, default=[1], show_default=True, help="Repeatable.")
@click.option("--chunk-size", "chunks", type=CHUNK_SIZE, multiple=True, default=[16384], show_default=True, help="Points per backend call; repeatable.")
@click.option("--repeats", type=whole(1, 10000), default=3, show_default=True, help="Timed runs per case (the median is reported).")
@click.option("--warmup", type=whole(0, 10000), default=1, show_default=True, help="Untimed runs before timing.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=whole(0, 1024), default=0, help="torch threads (default: torch's choice).")
@click.option(
    "--precision", "precisions", type=click.Choice(["fp32", "bf16", "fp16"]), multiple=True, default=["fp32"],
    show_default=True, help="The torch backend's precision (fp16: CUDA only); repeatable. Other backends run fp32.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(checkpoint, preset, arch, backends, reference, resolutions, batches, chunks, repeats, warmup, device, threads, precisions, as_json):
    """Measure pixels/s, ms per image, GFLOP/s, fraction of the matmul peak and peak memory.

    Each case runs in its own process (isolated peak memory); figures are medians over
    --repeats after --warmup runs. The matrix-product peak is measured for every precision
    the cases use, and each case's %peak is against its own precision's peak.
    """
    import torch  # the build extra: a missing one is one sentence (cips_deploy.cli.group)

    from cips_deploy.measure.bench import BenchCase, machine_facts, matmul_peak_gflops, run_case_isolated

    for name, values in (("resolution", resolutions), ("batch", batches), ("chunk-size", chunks)):
        if min(values) < 1:
            raise CipsError(f"--{name} must be at least 1.")
    if threads < 0:
        raise CipsError(f"--threads must be 0 (torch's choice) or a positive number of threads, not {threads}.")
    if repeats < 1 or warmup < 0:
        raise CipsError("--repeats must be at least 1 and --warmup at least 0.")
    if checkpoint is not None and not checkpoint.exists():
        raise CipsError(f"No such checkpoint: {checkpoint}.")
    model = str(checkpoint) if checkpoint else f"preset:{preset}:{arch}"
    if "fp16" in precisions and not device.startswith("cuda"):
        raise CipsError("--precision fp16 needs a CUDA --device (CPUs have no fast fp16 matrix product); use bf16 on a CPU.")
    precisions = list(dict.fromkeys(precisions))  # once each, in the order given
    model = str(checkpoint) if checkpoint else f"preset:{preset}:{arch}"
    common = dict(model=model, device=device, repeats=repeats, warmup=warmup, threads=threads)
    cases = []
    for b, p, r, n, c in itertools.product(backends, precisions, resolutions, batches, chunks):
        if p != "fp32" and p not in declared_precisions(b):
            if not as_json and r == resolutions[0] and n == batches[0] and c == chunks[0]:
                click.echo(f"  {b} declares no precision {p}: it is left out of the {p} cases.", err=True)
            continue
        cases.append(BenchCase(backend=b, resolution=r, batch=n, chunk=c, precision=p, **common))
    if reference:
        cases = [BenchCase(backend="reference", resolution=r, batch=n, **common)
                 for r, n in itertools.product(resolutions, batches)] + cases
    if threads:  # the peak under the same threads as the cases
        torch.set_num_threads(threads)
    used = ["fp32"] + [p for p in precisions if p != "fp32" and any(case.precision == p for case in cases)]
    peaks = {p: matmul_peak_gflops(dtype=p, device=device) for p in used}
    results = []
    for case in cases:
        if not as_json:
            click.echo(f"  {case.backend} {case.precision} {case.resolution}px batch {case.batch} chunk {case.chunk} ...", err=True)
        results.append(run_case_isolated(case))
    references = {(r["resolution"], r["batch"]): r["pixels_per_second"] for r in results if r["backend"] == "reference"}
    for result in results:
        result["matmul_peak_gflops"] = peaks[result["precision"]]
        result["fraction_of_matmul_peak"] = result["gflops"] / peaks[result["precision"]]
        base = references.get((result["resolution"], result["batch"]))
        result["speedup_vs_reference"] = result["pixels_per_second"] / base if base else None
    report = {
        "machine": machine_facts(), "matmul_peak_gflops": peaks["fp32"], "matmul_peaks_gflops": peaks,
        "model": model, "results": results,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    facts = report["machine"]
    click.echo(f"{model} on {facts['cpu']} ({facts['cores']} cores, torch {facts['torch']}, {facts['torch_threads']} threads)")
    shown = ", ".join(f"{p} {peak:.1f}" for p, peak in peaks.items())
    click.echo(f"matrix-product peak (2048^3, median of 5), GFLOP/s: {shown}; %peak is against the case's own precision")
    header = (
        f"{'backend':<12}{'prec':>5}{'res':>6}{'batch':>6}{'chunk':>8}{'ms/image':>11}{'pixels/s':>11}"
        f"{'GFLOP/s':>9}{'%peak':>7}{'RSS MB':>8}{'vs ref':>8}"
    )
    click.echo(header)
    for r in results:
        ratio = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        click.echo(
            f"{r['backend']:<12}{r['precision']:>5}{r['resolution']:>6}{r['batch']:>6}{r['chunk']:>8}{r['ms_per_image']:>11.1f}"
            f"{r['pixels_per_second']:>11,.0f}{r['gflops']:>9.1f}{100 * r['fraction_of_matmul_peak']:>6.0f}%"
            f"{r['peak_rss_mb']:>8.0f}{ratio:>8}"
        )
