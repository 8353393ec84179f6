"""``cips-deploy render``: any topology, any size, chunk by chunk, into a PNG (in memory) or
streamed to a tiled BigTIFF or Deep Zoom pyramid (``cips_deploy.cli.gigapixel``).

Every path it writes passes the output guard of :mod:`cips_deploy.runtime.atomic` before
any work (:func:`check_outputs`): names the file system can hold, an existing folder,
nothing replaced without ``--force``, and with it a pyramid's companions only if
cips-deploy wrote them. Without ``--topology`` the model decides: a cylinder-space model
(the bundled demo) renders its panorama, any other the flat view."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.runtime.atomic import atomic_path, check_names, guard_outputs
from cips_deploy.runtime.gigapixel import partial_path
from cips_deploy.errors import CipsError, printable
from cips_deploy.contracts.limits import check_in_memory, check_memory
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.runtime.backend_use import choose_backend
from cips_deploy.runtime.render import make_backend, render_detailed
from cips_deploy.media.render_files import RenderFiles
from cips_deploy.contracts.sinks import OutputFormat, format_for
from cips_deploy.cli.group import cli
from cips_deploy.cli.backend_flags import merge_backend_flags, with_backend_flags
from cips_deploy.contracts.command_options import model_options, style_options, synthesis_options, transform_options
from cips_deploy.contracts.command_options import SEED, whole
from cips_deploy.runtime.render_request import MAX_SIDE
from cips_deploy.cli.common import (
    ChunkProgress, backend_from_the_model, choose_model, make_controls, parse_assignments, parse_seeds, summary, tile,
)
from cips_deploy.runtime.render_setup import Controls

MAX_BATCH_SEEDS = 100_000  # --outdir: one file per seed, one image in memory at a time
@backend_from_the_model
@with_backend_flags
@cli.command("render")
@model_options("Render")
@click.option("-t", "--topology", default=None, help="Topology name (see `cips-deploy topologies`); default: cylinder for a cylinder-space model (the bundled demo: its 360-degree panorama), else flat.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A topology parameter; repeatable.")
@click.option("--height", type=whole(1, MAX_SIDE), default=256, show_default=True, help="Image height in pixels.")
@click.option("--width", type=whole(1, MAX_SIDE), default=None, help="Image width in pixels (default: the height; 4x the height for a cylinder).")
@click.option("--seed", type=SEED, default=None, help="Latent seed (default 0).")
@click.option("--seeds", default=None, metavar="LIST", help="Several seeds as a grid image, e.g. 0-3 or 1,5,9.")
@click.option("--blend-seed", type=SEED, default=None, help="Blend towards this seed's style at u = +-1 (per-pixel styles).")
@click.option("--w", "w_file", type=click.Path(path_type=Path), default=None, metavar="PROJ.NPZ", help="Render this saved style (w [1, S] or ws [1, L, S], e.g. from `cips-deploy project`) instead of a seed's; any topology and size.")
@style_options
@transform_options
@synthesis_options
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("render.png"), show_default=True, help="File to write: .png (in memory), .tif/.tiff (tiled BigTIFF) or .dzi (Deep Zoom pyramid and viewer); the last two stream to disk (with --outdir: only when given).")
@click.option("--format", "output_format", default=None, help="Output format (png, tiff, dzi or a plugin's; default: from the extension of --output).")
@click.option("--resume", is_flag=True, help="Continue an interrupted streamed render from its finished tiles (in OUTPUT.partial).")
@click.option("--workers", type=whole(1, 1024), default=1, show_default=True, help="Processes rendering tiles, this one included (each with its own backend and threads); the same pixels as one.")
@click.option("--outdir", type=click.Path(path_type=Path), default=None, help="Also write one PNG per seed into this folder (seed0003.png, ...).")
@click.option("--viewer", type=click.Path(path_type=Path), default=None, help="With --topology cylinder: also write a self-contained 360-degree viewer (.html).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Replace existing files: the output, the seed files of --outdir, the --viewer page.")
def render_command(
    checkpoint: Path | None,
    preset: str | None,
    arch: str,
    coordinate_space: str,
    model_seed: int,
    topology: str | None,
    params: tuple[str, ...],
    height: int,
    width: int | None,
    seed: int | None,
    seeds: str | None,
    blend_seed: int | None,
    w_file: Path | None,
    mix_seed: int | None,
    mix_from: int | None,
    class_index: int | None,
    translate: tuple[float, float] | None,
    rotate: float | None,
    scale: float | None,
    truncation: float,
    chunker: str | None,
    chunk_size: int | None,
    memory_budget: float | None,
    backend: str | None,
    device: str,
    backend_options: tuple[str, ...],
    output: Path,
    output_format: str | None,
    resume: bool,
    workers: int,
    outdir: Path | None,
    viewer: Path | None,
    quiet: bool,
    force: bool,
    **backend_flags: Any,
) -> None:
    """Render an image with any topology, chunk by chunk, and write it as a PNG, or stream it to a .tif or .dzi.

    \b
    Examples:
      cips-deploy render --topology cylinder -o panorama.png   (the bundled demo engine; no torch needed)
      cips-deploy render --checkpoint model.onnx -t cylinder     (an exported engine: onnxruntime)
      cips-deploy render --preset tiny -o flat.png
      cips-deploy render --preset tiny --coordinate-space cylinder -t cylinder --width 1024 -o pano.png
      cips-deploy render --checkpoint model.safetensors -t foveated -p gaze_x=0.3 -p radius=0.15
      cips-deploy render --checkpoint model.safetensors --seeds 0-8 --truncation 0.7 -o grid.png
      cips-deploy render --seeds 0-31 --outdir seeds/                (one PNG per seed)
      cips-deploy render --topology cylinder --viewer pano.html      (drag to look around)
      cips-deploy render -t cylinder --height 8192 --width 32768 --workers 2 -o pano.dzi   (streamed)
      cips-deploy render --preset tiny --translate 0.5,0 --rotate 30 --scale 2 --trunc 0.7   (gen_images' habits)
      cips-deploy render --checkpoint model.safetensors --seed 1 --mix-seed 2 --mix-from 4  (style mixing)
      cips-deploy render --checkpoint model.safetensors --w proj.npz -t cylinder -o pano.png (a projection)
    """
    seed_list = parse_seeds(seed, seeds) if outdir is None else parse_seeds(seed, seeds, MAX_BATCH_SEEDS, "a batch")
    if w_file is not None and (len(seed_list) > 1 or blend_seed is not None):
        raise CipsError("--w renders one saved style: give no --seeds and no --blend-seed with it.")
    controls = make_controls(translate, rotate, scale, mix_seed, mix_from, class_index, w_file)
    registry = get_registry()
    check_names(output)  # before anything looks at the path: a long name makes even is_dir() raise
    if output.is_dir():
        raise CipsError(f"Cannot write {output}: it is a directory.")
    chosen = format_for(output, output_format, {name: entry.item for name, entry in registry.outputs.items()})
    topology_params = parse_assignments(params, "topology parameter")
    model = choose_model(checkpoint, preset, arch, coordinate_space, model_seed, backend)
    backend = choose_backend(registry, model, backend)  # one name from here on: provenance, workers
    # Flags such as --precision are backend options (cli/backend_flags.py).
    options = merge_backend_flags(parse_assignments(backend_options, "backend option"), backend_flags)
    streamed = chosen.streaming or resume or workers != 1  # gigapixel: tiles streamed to disk (cips_deploy.runtime.gigapixel)
    if streamed and (outdir is not None or viewer is not None):
        raise CipsError("--outdir and --viewer go with in-memory renders, not with streamed outputs, --resume or --workers.")
    # With --outdir the grid is written only where -o is given: a batch wants its seeds' files.
    grid_output = output if outdir is None or click.get_current_context().get_parameter_source("output").name != "DEFAULT" else None
    if grid_output is not None:
        check_outputs(grid_output, chosen, force, streamed)
    runner = None  # built early only when the model must say its coordinate space
    try:
        if topology is None:
            topology, runner = default_topology(model, registry, backend, device, options)
        if width is None:  # a cylinder's whole turn is four 90-degree views, the training default
            width = 4 * height if topology == "cylinder" else height
        if streamed:
            if runner is not None:
                runner.close()  # the streamed render builds its own (and its workers theirs)
                runner = None
            from cips_deploy.cli.gigapixel import stream_render

            stream_render(
                model, output, chosen.name, seed_list, topology, topology_params, height, width, truncation, chunker,
                chunk_size, memory_budget, backend, device, options, blend_seed, resume, workers, quiet, registry,
                overwrite=force, controls=controls,
            )
            return
        render_in_memory(
            model, runner, seed_list, registry, chosen, topology, topology_params, height, width, truncation, chunker,
            chunk_size, memory_budget, backend, device, options, blend_seed, outdir, viewer, quiet, force, grid_output,
            output, controls,
        )
    finally:
        if runner is not None:
            runner.close()


def check_outputs(output: Path, chosen: OutputFormat, force: bool, streamed: bool) -> None:
    """The output guard over everything ``-o`` makes: the file, a streamed format's companions
    (``NAME_files/``, ``NAME.html``) and its partial folder, before any work."""
    if output.suffix.lower() not in chosen.extensions:
        raise CipsError(f"The output {output} must be a {' or '.join(chosen.extensions)} file.")
    companions = chosen.outputs(output) if streamed else ()
    guard_outputs(
        output, companions, overwrite=force, owner=getattr(chosen, "owns", None),
        extra_names=[partial_path(output)] if streamed else (), probe=True,
    )


def default_topology(model: Any, registry: Any, backend: str, device: str, options: dict[str, Any]) -> tuple[str, Any]:
    """The topology when none is given: cylinder for a cylinder-space model, else flat, and the
    backend built to ask a model file (None when the model itself says: a Generator)."""
    config = getattr(model, "config", None)
    runner = None
    if config is None:
        runner = make_backend(registry, backend, model, device, options)
        config = getattr(runner, "config", None)  # a plugin's backend may not say: then flat, as before
    return ("cylinder" if getattr(config, "coordinate_space", None) == "cylinder" else "flat"), runner


def render_in_memory(
    model: Any, runner: Any, seed_list: list[int], registry: Any, chosen: OutputFormat, topology: str,
    topology_params: dict[str, str], height: int, width: int, truncation: float, chunker: str | None,
    chunk_size: int | None, memory_budget: float | None, backend: str, device: str, options: dict[str, Any],
    blend_seed: int | None, outdir: Path | None, viewer: Path | None, quiet: bool, force: bool,
    grid_output: Path | None, output: Path, controls: Controls | None = None,
) -> None:
    """Every seed rendered in memory, then the grid, the seed files and the viewer written.
    ``runner``: the backend the caller built (and closes), or None to build one here."""
    if grid_output is not None:
        if len(seed_list) > 1:  # every seed's image is kept until the grid is tiled: count them all, and the grid
            check_memory(2 * len(seed_list) * height * width * 3, f"{len(seed_list)} {height:,} x {width:,} renders and their grid")
        grid_columns = math.ceil(math.sqrt(len(seed_list)))  # the grid that tile() assembles
        grid_rows = math.ceil(len(seed_list) / grid_columns)
        # One seed: the render's own check, early; a grid: the assembled grid image.
        check_in_memory(grid_rows * height, grid_columns * width, registry.get("topology", topology) if len(seed_list) == 1 else None)
    files = RenderFiles(
        model, topology, topology_params, registry, height=height, width=width, truncation=truncation,
        backend=backend, backend_options=options, blend_seed=blend_seed, controls=controls, outdir=outdir, viewer=viewer,
        overwrite=force,
    )
    files.check(seed_list)
    built = None
    try:
        if runner is None:
            runner = built = make_backend(registry, backend, model, device, options)
    except BaseException:
        files.abandon()
        raise
    watched = not quiet and sys.stderr.isatty()  # a bar only where someone watches: a log would get its label only
    seeds_bar = ChunkProgress("seeds", enabled=watched and outdir is not None)  # a batch: one bar over its seeds
    try:
        renderings = []
        for index, each_seed in enumerate(seed_list):
            label = f"seed {each_seed}" if len(seed_list) > 1 else "rendering"
            progress = ChunkProgress(label, enabled=watched and outdir is None)
            try:
                rendering = render_detailed(
                    runner, topology, height, width, seed=each_seed, truncation=truncation, chunker=chunker,
                    chunk_size=chunk_size, memory_budget=memory_budget, blend_seed=blend_seed, controls=controls,
                    progress=progress, registry=registry, **topology_params,
                )
            finally:
                progress.close()
            files.accept(rendering)
            if grid_output is None and viewer is None:  # nothing else needs the pixels: let them go
                rendering.image = rendering.image[:0]
            renderings.append(rendering)
            seeds_bar(index + 1, len(seed_list))
    except BaseException:
        files.abandon()  # a folder this command created and left empty goes again
        raise
    finally:
        seeds_bar.close()
        if built is not None:
            built.close()
    grid = tile([rendering.image for rendering in renderings]) if grid_output is not None else None
    if chosen.name == "png":  # with provenance in its text chunks
        files.finish(renderings, grid, grid_output)
    else:  # a plugin's in-memory format
        files.finish(renderings, None, None)
        if grid is not None:
            with atomic_path(grid_output, overwrite=force) as temporary:
                chosen.save(grid, temporary)
    click.echo(summary(output if grid_output is not None else outdir, renderings, height, width, controls))
    if viewer is not None:
        click.echo(f"Wrote {printable(str(viewer))}: open it in a browser and drag to look around.")
