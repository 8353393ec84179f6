"""``cips-deploy import-official``, and what ``inspect`` (alias ``info``) says about a checkpoint.

The ``inspect`` command itself is :mod:`.inspect`; a checkpoint is described from the loaded
generator, which needs the ``build`` extra (torch): without it, one sentence says so.
"""

from __future__ import annotations

from pathlib import Path

import click

from cips_deploy.errors import printable
from cips_deploy._compat import require_build_extra
from cips_deploy.cli.group import cli

FORMATS = {".safetensors": "cips-deploy safetensors checkpoint", ".pt": "official CIPS checkpoint (.pt)",
           ".pkl": "official CREPS snapshot (.pkl)"}


def checkpoint_facts(checkpoint: Path) -> dict:
    """What ``inspect`` says about a checkpoint, from the loaded generator (needs torch)."""
    require_build_extra(f"Describing the checkpoint {checkpoint.name}")
    from cips_deploy.exporters.inspection import config_facts
    from cips_deploy.families.checkpoint import load

    generator = load(checkpoint)
    config = generator.config
    return {
        "file": str(checkpoint),
        "format": FORMATS.get(checkpoint.suffix.lower(), "checkpoint"),
        "size_bytes": checkpoint.stat().st_size,
        "architecture": config.arch_name,
        "family": config.family.name,
        "parameters": generator.num_parameters,
        **config_facts(config),
        "config": config.to_dict(),
        "flops_per_point": generator.flops_per_point(),
        "flops_per_pixel": generator.flops_per_point(),  # the name info has always used
        f"grid_flops_per_pixel_at_{config.size}x{config.size}": round(generator.grid_flops_per_point(config.size, config.size)),
        **generator.info_facts(),
        "provenance": generator.provenance,
    }


@cli.command("import-official")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Destination .safetensors file.")
@click.option("--force", is_flag=True, help="Replace the destination if it exists.")
def import_official(source: Path, output: Path, force: bool) -> None:
    """Convert an official CIPS checkpoint (.pt) or CREPS snapshot (.pkl) into a cips-deploy .safetensors file once."""
    require_build_extra("import-official")
    from cips_deploy.families.checkpoint import load
    from cips_deploy.runtime.atomic import guard_outputs

    # The output guard before the (slow) load: a name the file system holds, its folder, --force.
    guard_outputs(output, overwrite=force, probe=True)
    generator = load(source)
    generator.save(output, overwrite=force)  # atomic; a full disk is one sentence (runtime/atomic.py)
    config = generator.config
    click.echo(
        f"Wrote {printable(str(output))}: {config.arch} generator, {generator.num_parameters:,} parameters, "
        f"trained at {config.size}x{config.size}."
    )
