"""``cips-deploy info`` and ``cips-deploy import-official``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cips_deploy.families.checkpoint import load
from cips_deploy.contracts.config import ARCHITECTURE_NAMES
from cips_deploy.cli import cli


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(checkpoint: Path, as_json: bool) -> None:
    """Describe a checkpoint (ours or official): architecture, size, parameters, provenance."""
    generator = load(checkpoint)
    config = generator.config
    facts = {
        "file": str(checkpoint),
        "architecture": ARCHITECTURE_NAMES[config.arch],
        "parameters": generator.num_parameters,
        "coordinate_space": config.coordinate_space,
        "training_resolution": config.size,
        "hidden": config.hidden,
        "style_dim": config.style_dim,
        "mapping_layers": config.n_mlp,
        "channel_multiplier": config.channel_multiplier,
        "block_widths": list(config.widths),
        "flops_per_pixel": generator.flops_per_point(),
        **generator.info_facts(),
        "provenance": generator.provenance,
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    rows = [(key, value) for key, value in facts.items() if key != "provenance"]
    rows += [(f"provenance.{key}", value) for key, value in facts["provenance"].items()]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        if value is None:
            value = "not determinable from the widths"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        click.echo(f"{key:<{width}}  {value}")


@cli.command("import-official")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Destination .safetensors file.")
@click.option("--force", is_flag=True, help="Replace the destination if it exists.")
def import_official(source: Path, output: Path, force: bool) -> None:
    """Convert an official CIPS checkpoint (.pt) or CREPS snapshot (.pkl) into a cips-deploy .safetensors file once."""
    generator = load(source)
    generator.save(output, overwrite=force)
    config = generator.config
    click.echo(
        f"Wrote {output}: {config.arch} generator, {generator.num_parameters:,} parameters, "
        f"trained at {config.size}x{config.size}."
    )
