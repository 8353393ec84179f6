"""``cips-deploy info`` and ``cips-deploy import-official``.

``info`` describes a checkpoint (loading it needs the ``build`` extra: torch) or an exported
ONNX engine (from its metadata alone: the torch-free install describes what it renders).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cips_deploy._compat import require_build_extra
from cips_deploy.cli.group import cli


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(checkpoint: Path, as_json: bool) -> None:
    """Describe a checkpoint (ours or official) or an exported .onnx engine: architecture, size, parameters, provenance."""
    facts = engine_facts(checkpoint) if checkpoint.suffix.lower() == ".onnx" else checkpoint_facts(checkpoint)
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


def checkpoint_facts(checkpoint: Path) -> dict:
    """What ``info`` says about a checkpoint, from the loaded generator (needs torch)."""
    require_build_extra(f"Describing the checkpoint {checkpoint.name}")
    from cips_deploy.families.checkpoint import load

    generator = load(checkpoint)
    config = generator.config
    return {
        "file": str(checkpoint),
        "architecture": config.arch_name,
        "parameters": generator.num_parameters,
        **config_facts(config),
        "flops_per_pixel": generator.flops_per_point(),
        **generator.info_facts(),
        "provenance": generator.provenance,
    }


def engine_facts(engine: Path) -> dict:
    """What ``info`` says about an exported ONNX engine, from its metadata (no torch, no onnx)."""
    from cips_deploy.exporters.engine_files import grid_engine_files, mapping_path_for
    from cips_deploy.exporters.metadata import read_onnx_metadata

    meta = read_onnx_metadata(engine)
    companions = ["mapping"] if mapping_path_for(engine).is_file() else []
    companions += list(grid_engine_files(engine) or {})
    return {
        "file": str(engine),
        "engine": f"ONNX {meta.role} engine, opset {meta.opset}",
        "architecture": meta.config.arch_name,
        **config_facts(meta.config),
        "style_input": "w [B, N, S] (one style per point)" if meta.spatial_style else "w [B, S]",
        "engines_beside_it": ", ".join(companions) or "none",
        "source_file": meta.source_file or None,
        "source_sha256": meta.source_sha256 or None,
        "weights_sha256": meta.weights_sha256,
        "exported_by": f"cips-deploy {meta.package_version}",
        "provenance": meta.provenance,
    }


def config_facts(config) -> dict:
    return {
        "coordinate_space": config.coordinate_space,
        "training_resolution": config.size,
        "hidden": config.hidden,
        "style_dim": config.style_dim,
        "mapping_layers": config.n_mlp,
        "channel_multiplier": config.channel_multiplier,
        "block_widths": list(config.widths),
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
        f"Wrote {output}: {config.arch} generator, {generator.num_parameters:,} parameters, "
        f"trained at {config.size}x{config.size}."
    )
