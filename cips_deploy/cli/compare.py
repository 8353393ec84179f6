"""``cips-deploy compare A B``: the same inputs through two models, held to a tolerance.

Polygraphy ``run``'s contract: each side is a checkpoint, an official file, an engine, or a
backend spec ``BACKEND:TARGET[,KEY=VALUE...]`` (:mod:`cips_deploy.runtime.backend_specs`);
both get the same coordinate batches (a topology's grid, or ``--points N`` random points)
and the same latents; the figures and the verdict come from :mod:`cips_deploy.runtime.compare`.
Exit 0 within the bounds, 1 beyond them (one sentence says which bound failed), 1 or 2
for bad input as everywhere else.
"""

from __future__ import annotations

import re

import click

from cips_deploy.contracts.limits import strict_json
from cips_deploy.cli.common import parse_assignments, parse_seeds
from cips_deploy.cli.group import cli
from cips_deploy.contracts.command_options import TRUNCATION, real, whole
from cips_deploy.errors import CipsError
from cips_deploy.runtime.images import decibels

MAX_SEEDS = 64
TOLERANCE = real(0.0, 1e6)
_SIZE = re.compile(r"\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*")


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise CipsError(f"--size is written HxW (rows x columns), such as 64x64, not {text!r:.40}.")
    return int(match.group(1)), int(match.group(2))


@cli.command()
@click.argument("a")
@click.argument("b")
@click.option("--atol", type=TOLERANCE, default=None, help="Absolute bound: every value within atol + rtol x |B| (default 1e-4 unless only --psnr-min is given).")
@click.option("--rtol", type=TOLERANCE, default=None, help="Relative bound, times |B| (B is the reference; default 0).")
@click.option("--psnr-min", type=real(-1e6, 1e6), default=None, help="Lowest PSNR in dB (outputs clipped to [-1, 1]) of the worst seed.")
@click.option("--seeds", default="0", show_default=True, metavar="LIST", help="Style seeds, e.g. 0-3 or 1,5,9: one case each.")
@click.option("--points", type=whole(1, 1 << 24), default=None, help="Compare N random points in [-1, 1]^2 (the per-point path) instead of a grid.")
@click.option("--topology", "-t", default=None, help="The grid's topology (default: cylinder for cylinder models, else flat).")
@click.option("--size", "size_text", default=None, metavar="HxW", help="The grid's size (default 64x64).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A topology parameter; repeatable.")
@click.option("--truncation", "--trunc", "truncation", type=TRUNCATION, default=1.0, show_default=True, help="Truncation psi of both mappings.")
@click.option("--shared-style", is_flag=True, help="Map each latent with A only and give that w to both (compares synthesis alone).")
@click.option("--device", default="cpu", show_default=True, help="Device of both backends unless a spec names its own (device=...).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(a: str, b: str, atol, rtol, psnr_min, seeds: str, points, topology, size_text: str, params, truncation,
            shared_style: bool, device: str, as_json: bool) -> None:
    """Run the same coordinates and styles through models A and B and compare their colours.

    A and B: a checkpoint, an official file, an engine (.onnx, .plan), or a backend spec such as
    onnxruntime:model.onnx, openvino:model.onnx, torch:model.safetensors,precision=bf16 or
    triton:HOST:PORT/NAME,source=model.onnx (docs/tools.md). Exits 1 when a bound fails.
    """
    from cips_deploy.runtime.backend_specs import open_backend, parse_backend_spec
    from cips_deploy.runtime.compare import GRID, POINTS, Tolerance, compare_backends
    from cips_deploy.runtime.plugin_manager import get_registry

    spec_a, spec_b = parse_backend_spec(a), parse_backend_spec(b)
    seed_list = parse_seeds(None, seeds, limit=MAX_SEEDS, what="compare")
    tolerance = Tolerance(atol, rtol, psnr_min)
    if points is not None and (topology is not None or params or size_text is not None):
        raise CipsError("Give --points (random points) or a grid (--topology, --size, --param), not both.")
    height, width = parse_size(size_text or "64x64")
    topology_params = parse_assignments(params, "topology parameter")
    registry = get_registry()
    runner_a = runner_b = None
    try:
        runner_a = open_backend(registry, spec_a, device=device, source=spec_b.model)
        runner_b = open_backend(registry, spec_b, device=device, source=spec_a.model)
        if topology is None:
            topology = "cylinder" if runner_a.config.coordinate_space == "cylinder" else "flat"
        result = compare_backends(
            registry, runner_a, runner_b, labels=(spec_a.label, spec_b.label), seeds=seed_list,
            mode=POINTS if points is not None else GRID, topology=topology, height=height, width=width,
            topology_params=topology_params, points=points or 0, truncation=truncation, shared_style=shared_style,
            tolerance=tolerance,
        )
        names = [getattr(runner, "name", "") or type(runner).__name__ for runner in (runner_a, runner_b)]
    finally:
        for runner in (runner_a, runner_b):
            if runner is not None:
                runner.close()
    report = result.to_dict()
    report["backends"] = names
    if as_json:
        click.echo(strict_json(report))
    else:
        for line in format_comparison(report):
            click.echo(line)
    if result.failures:
        raise CipsError(f"Outside the tolerance: {'; and '.join(result.failures)}.")


def format_comparison(report: dict) -> list[str]:
    """The human-readable comparison, a few lines."""
    details = report["details"]
    where = (f"grid: {details['topology']} {details['height']}x{details['width']}" if report["mode"] == "grid"
             else "random points in [-1, 1]^2")
    styles = "w mapped by A only" if details["shared_style"] else "each side's own mapping"
    lines = [
        f"A: {report['a']} ({report['backends'][0]})",
        f"B: {report['b']} ({report['backends'][1]})",
        f"{where}; seeds {', '.join(map(str, report['seeds']))} ({report['points_per_seed']:,} points each); "
        f"styles: {styles}, truncation {details['truncation']:g}",
    ]
    for case in report["cases"]:
        lines.append(f"  seed {case['seed']:<6} max abs {case['max_abs']:.3e}  mean abs {case['mean_abs']:.3e}  "
                     f"PSNR {decibels(case['psnr'])}  values beyond the bound {case['beyond']:,}")
    lines.append(f"max abs error {report['max_abs']:.3e}, mean abs error {report['mean_abs']:.3e}, PSNR {decibels(report['psnr'])} (worst seed)")
    lines.append("worst points (seed, index, u, v: A | B):")
    for point in report["worst_points"]:
        a = ", ".join(f"{x:+.6f}" for x in point["a"])
        b = ", ".join(f"{x:+.6f}" for x in point["b"])
        lines.append(f"  seed {point['seed']} point {point['index']} (u {point['u']:+.6f}, v {point['v']:+.6f}): "
                     f"[{a}] | [{b}]  |A - B| {point['abs_error']:.3e}")
    tolerance = report["tolerance"]
    bounds = []
    if tolerance["atol"] is not None:
        bounds.append(f"|A - B| <= {tolerance['atol']:g} + {tolerance['rtol']:g} x |B|")
    if tolerance["psnr_min"] is not None:
        bounds.append(f"PSNR >= {tolerance['psnr_min']:g} dB")
    lines.append(f"bounds: {' and '.join(bounds)}: {'passed' if report['passed'] else 'FAILED'}")
    return lines
