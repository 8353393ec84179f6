"""``cips-deploy scale-consistency``: does the model draw the same image at every resolution?

The CREPS paper's scale-consistency protocol: render each latent at s x s and at
(f*s) x (f*s), box-filter the large render down to s x s and compare it with the small
one (PSNR, SSIM; LPIPS where its weights are already on the machine). The measuring is
:func:`cips_deploy.measure.metrics.scale_consistency`; this module only parses, prints and writes.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.contracts.limits import strict_json
from cips_deploy.runtime.atomic import atomic_path, check_destination
from cips_deploy.contracts.command_options import ARCHITECTURE, PRESET
from cips_deploy.contracts.config import COORDINATE_SPACES
from cips_deploy.errors import CipsError, printable
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.runtime.render import make_backend
from cips_deploy.cli.group import cli
from cips_deploy.cli.common import ChunkProgress, choose_model
from cips_deploy.contracts.command_options import SEED, TRUNCATION

INF_NOTE = 'PSNR is the string "inf" where the downsampled large render equals the small render exactly.'


@cli.command("scale-consistency")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--preset", type=PRESET, help="Measure a random-weight model of this preset instead of CHECKPOINT.")
@click.option("--arch", type=ARCHITECTURE, default="skip", show_default=True, help="With --preset: architecture.")
@click.option("--coordinate-space", type=click.Choice(COORDINATE_SPACES), default="plane", show_default=True, help="With --preset.")
@click.option("--model-seed", type=SEED, default=0, show_default=True, help="With --preset: seed of the random weights.")
@click.option("--size", "size_text", default="256", show_default=True, metavar="INTEGER", help="Side s of the small render (at least 11, the SSIM window).")
@click.option("--factor", "factor_text", default="2", show_default=True, metavar="INTEGER", help="The large render is factor*s per side (factor >= 2, factor*s <= 8192).")
@click.option("--samples", "samples_text", default="16", show_default=True, metavar="INTEGER", help="Latents to compare: seeds seed .. seed+samples-1 (1 to 10,000).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="First latent seed.")
@click.option("--truncation", type=TRUNCATION, default=1.0, show_default=True, help="Truncation psi (1 = none).")
@click.option("--backend", default="torch", show_default=True, help="Synthesis backend (see `cips-deploy plugins`).")
@click.option("--device", default="cpu", show_default=True, help="Device for the backend: cpu, cuda, cuda:1, ...")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the JSON report to this file (atomically).")
@click.option("--force", is_flag=True, help="Replace the --output file if it exists.")
def scale_consistency_command(
    checkpoint: Path | None,
    preset: str | None,
    arch: str,
    coordinate_space: str,
    model_seed: int,
    size_text: str,
    factor_text: str,
    samples_text: str,
    seed: int,
    truncation: float,
    backend: str,
    device: str,
    as_json: bool,
    output: Path | None,
    force: bool,
) -> None:
    """Render each latent at s x s and at (factor*s)^2, box-filter the large one down, and
    report PSNR and SSIM between the two (LPIPS too where its weights are installed).

    \b
    Examples:
      cips-deploy scale-consistency model.safetensors --size 256 --factor 2 --samples 50
      cips-deploy scale-consistency churches_g_ema.pt --size 128 --factor 4 --json -o report.json
      cips-deploy scale-consistency --preset tiny --size 32 --factor 2 --samples 3
    """
    size, factor, samples = whole(size_text, "--size"), whole(factor_text, "--factor"), whole(samples_text, "--samples")
    from cips_deploy.measure.metrics import check_protocol, scale_consistency  # the build extra (torch)

    check_protocol(size, factor, samples, seed)
    if checkpoint is not None and preset is not None:
        raise CipsError("Give either a CHECKPOINT or --preset, not both.")
    if checkpoint is None and preset is None:
        raise CipsError("Give the CHECKPOINT to measure, or --preset NAME for a random-weight model.")
    if output is not None:
        check_destination(output, overwrite=force)
    model = choose_model(checkpoint, preset, arch, coordinate_space, model_seed)
    runner = make_backend(get_registry(), backend, model, device, {})
    progress = ChunkProgress("samples", enabled=sys.stderr.isatty())
    try:
        result = scale_consistency(runner, size, factor, samples, seed=seed, truncation=truncation, progress=progress)
        description = describe_model(checkpoint, preset, arch, coordinate_space, model_seed, runner.config)
    finally:
        progress.close()
        runner.close()
    report = json_report(result, description, backend, device)
    text = strict_json(report)
    if output is not None:
        with atomic_path(output, overwrite=force) as temporary:
            temporary.write_text(text + "\n")
    if as_json:
        click.echo(text)
        return
    click.echo(table(result, description))
    if output is not None:
        click.echo(f"Wrote {printable(str(output))}.")


def whole(text: str, option: str) -> int:
    """A command-line whole number, or one sentence saying it is not one."""
    try:
        return int(text.strip())
    except ValueError:
        raise CipsError(f"{option} takes a whole number, not {text!r}.") from None


def describe_model(checkpoint: Path | None, preset: str | None, arch: str, space: str, model_seed: int, config: Any) -> str:
    """One line naming the model: the file or the random-weight preset, and its shape."""
    name = str(checkpoint) if checkpoint is not None else f"preset {preset} (random weights, model seed {model_seed})"
    return f"{name}: {config.arch} generator trained at {config.size} px, {config.coordinate_space} coordinates"


def json_report(result: dict[str, Any], description: str, backend: str, device: str) -> dict[str, Any]:
    """The JSON document: the measurement with infinities as the string "inf"."""
    from cips_deploy.measure.metrics import json_number
    per_sample = [{key: json_number(value) if key == "psnr" else value for key, value in entry.items()} for entry in result["per_sample"]]
    mean = {key: json_number(value) for key, value in result["mean"].items()}
    report = {"model": description, "backend": backend, "device": device}
    report.update(result, per_sample=per_sample, mean=mean)
    report["note"] = INF_NOTE
    return report


def table(result: dict[str, Any], description: str) -> str:
    """A readable table: one row per seed, then the mean, then what happened to LPIPS."""
    has_lpips = result["lpips"]["status"] == "computed"
    size, factor = result["size"], result["factor"]
    lines = [
        description,
        f"{size}x{size} render vs {result['large_size']}x{result['large_size']} render box-filtered by {factor}, "
        f"{result['samples']} sample{'s' if result['samples'] != 1 else ''}, truncation {result['truncation']:g}",
        f"{'seed':>8}  {'PSNR dB':>8}  {'SSIM':>7}" + (f"  {'LPIPS':>7}" if has_lpips else ""),
    ]

    def row(label: str, entry: dict[str, Any]) -> str:
        decibels = "inf" if math.isinf(entry["psnr"]) else f"{entry['psnr']:.2f}"
        text = f"{label:>8}  {decibels:>8}  {entry['ssim']:>7.4f}"
        return text + (f"  {entry['lpips']:>7.4f}" if has_lpips else "")

    lines += [row(str(entry["seed"]), entry) for entry in result["per_sample"]]
    lines.append(row("mean", result["mean"]))
    if not has_lpips:
        lines.append(f"LPIPS skipped: {result['lpips']['reason']}.")
    return "\n".join(lines)
