"""The streamed branch of ``cips-deploy render``: .tif / .dzi outputs, ``--resume``, ``--workers``.

Not a command of its own: ``render`` calls :func:`stream_render` when the output format
streams (or ``--resume`` / ``--workers`` ask for the cell machinery), so every render
option means the same in both branches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.runtime.atomic import atomic_path
from cips_deploy.errors import CipsError, printable
from cips_deploy.runtime.gigapixel import cell_grid, partial_path, render_to_array, render_to_file
from cips_deploy.runtime.plugin_manager import Registry


def stream_render(
    model: Any, output: Path, output_format: str, seeds: list[int], topology: str, topology_params: dict[str, str],
    height: int, width: int, truncation: float, chunker: str | None, chunk_size: int | None, memory_budget: float | None,
    backend: str, device: str, backend_options: dict[str, Any], blend_seed: int | None, resume: bool, workers: int,
    quiet: bool, registry: Registry, overwrite: bool = False, controls: Any = None,
) -> None:
    """Render one seed cell by cell into ``output``; report what was written. ``overwrite``
    (``--force``) lets the output replace an existing one (see the output guard)."""
    chosen = registry.outputs[output_format].item
    if not chosen.streaming:  # e.g. a PNG with --workers: cells into memory, then the format's save
        if resume:
            raise CipsError(f"--resume continues a streamed render (.tif, .dzi); a {output_format} file is written from memory in one go.")
        in_memory_with_workers(
            model, output, chosen, seeds, topology, topology_params, height, width, truncation, chunker, chunk_size,
            memory_budget, backend, device, backend_options, blend_seed, workers, quiet, registry, overwrite, controls,
        )
        return
    if len(seeds) != 1:
        raise CipsError("A streamed render (.tif, .dzi, --resume or --workers) takes one --seed, not a grid of --seeds.")
    partial = partial_path(output)
    resuming = resume and partial.is_dir() and not partial.is_symlink()
    from cips_deploy.cli.common import ChunkProgress

    progress = ChunkProgress("resuming" if resuming else "rendering", enabled=not quiet and sys.stderr.isatty())
    try:
        result = render_to_file(
            model, output, output_format=output_format, topology=topology, height=height, width=width, seed=seeds[0],
            truncation=truncation, chunker=chunker, chunk_size=chunk_size, memory_budget=memory_budget,
            backend=backend, device=device, backend_options=backend_options, blend_seed=blend_seed, controls=controls, resume=resume,
            workers=workers, progress=progress, registry=registry, overwrite=overwrite, **topology_params,
        )
    except KeyboardInterrupt:
        progress.close()
        if partial.is_dir():
            click.echo(f"The finished tiles are kept in {partial}; run the same command with --resume to continue.", err=True)
        raise
    finally:
        progress.close()
    tiles = len(cell_grid(height, width))
    resumed = f", {result.cells_resumed:,} of them finished before --resume" if result.cells_resumed else ""
    in_workers = f" in {workers} workers" if workers > 1 else ""
    click.echo(
        f"Wrote {printable(', '.join(str(path) for path in result.paths))}: {height}x{width} {topology} render of seed {seeds[0]} "
        f"as {result.format}; {tiles:,} cell{'s' if tiles != 1 else ''}{resumed}; evaluated {result.points_evaluated:,} points{in_workers}."
    )


def in_memory_with_workers(
    model: Any, output: Path, chosen: Any, seeds: list[int], topology: str, topology_params: dict[str, str],
    height: int, width: int, truncation: float, chunker: str | None, chunk_size: int | None, memory_budget: float | None,
    backend: str, device: str, backend_options: dict[str, Any], blend_seed: int | None, workers: int, quiet: bool,
    registry: Registry, overwrite: bool = False, controls: Any = None,
) -> None:
    """Each seed rendered by ``workers`` processes into memory, the grid saved by the format."""
    from cips_deploy.cli.common import ChunkProgress, tile

    images = []
    for seed in seeds:
        progress = ChunkProgress(f"seed {seed}" if len(seeds) > 1 else "rendering", enabled=not quiet and sys.stderr.isatty())
        try:
            images.append(
                render_to_array(
                    model, topology=topology, height=height, width=width, seed=seed, truncation=truncation, chunker=chunker,
                    chunk_size=chunk_size, memory_budget=memory_budget, backend=backend, device=device,
                    backend_options=backend_options, blend_seed=blend_seed, controls=controls, workers=workers, progress=progress,
                    registry=registry, **topology_params,
                )
            )
        finally:
            progress.close()
    with atomic_path(output, overwrite=overwrite) as temporary:  # without --force: never over a file that appeared meanwhile
        chosen.save(tile(images), temporary)
    click.echo(
        f"Wrote {printable(str(output))}: {height}x{width} {topology} render of seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(str(seed) for seed in seeds)}; evaluated {height * width * len(seeds):,} points in {workers} workers."
    )
