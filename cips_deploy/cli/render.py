"""``cips-deploy render``: any topology, any size, chunk by chunk, into a PNG (in memory) or
streamed to a tiled BigTIFF or Deep Zoom pyramid (``cips_deploy.cli.gigapixel``)."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from cips_deploy.runtime.atomic import atomic_path
from cips_deploy.models import DEMO_MODEL
from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import check_in_memory, check_memory
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.runtime.render import Rendering, make_backend, render_detailed
from cips_deploy.media.render_files import RenderFiles
from cips_deploy.contracts.sinks import format_for
from cips_deploy.cli import cli
from cips_deploy.cli.backend_flags import merge_backend_flags, with_backend_flags
from cips_deploy.cli.options import model_options, synthesis_options

MAX_SEEDS = 256
MAX_BATCH_SEEDS = 100_000  # --outdir: one file per seed, one image in memory at a time


@with_backend_flags
@cli.command("render")
@model_options("Render")
@click.option("-t", "--topology", default="flat", show_default=True, help="Topology name (see `cips-deploy topologies`).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE", help="A topology parameter; repeatable.")
@click.option("--height", type=int, default=256, show_default=True, help="Image height in pixels.")
@click.option("--width", type=int, default=None, help="Image width in pixels (default: the height; 4x the height for a cylinder).")
@click.option("--seed", type=int, default=None, help="Latent seed (default 0).")
@click.option("--seeds", default=None, metavar="LIST", help="Several seeds as a grid image, e.g. 0-3 or 1,5,9.")
@click.option("--blend-seed", type=int, default=None, help="Blend towards this seed's style at u = +-1 (per-pixel styles).")
@synthesis_options
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("render.png"), show_default=True, help="File to write: .png (in memory), .tif/.tiff (tiled BigTIFF) or .dzi (Deep Zoom pyramid and viewer); the last two stream to disk (with --outdir: only when given).")
@click.option("--format", "output_format", default=None, help="Output format (png, tiff, dzi or a plugin's; default: from the extension of --output).")
@click.option("--resume", is_flag=True, help="Continue an interrupted streamed render from its finished tiles (in OUTPUT.partial).")
@click.option("--workers", type=int, default=1, show_default=True, help="Processes rendering tiles, this one included (each with its own backend and threads); the same pixels as one.")
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
    topology: str,
    params: tuple[str, ...],
    height: int,
    width: int | None,
    seed: int | None,
    seeds: str | None,
    blend_seed: int | None,
    truncation: float,
    chunker: str | None,
    chunk_size: int | None,
    memory_budget: float | None,
    backend: str,
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
      cips-deploy render --topology cylinder -o panorama.png   (the bundled demo model)
      cips-deploy render --preset tiny -o flat.png
      cips-deploy render --preset tiny --coordinate-space cylinder -t cylinder --width 1024 -o pano.png
      cips-deploy render --checkpoint model.safetensors -t foveated -p gaze_x=0.3 -p radius=0.15
      cips-deploy render --checkpoint model.safetensors --seeds 0-8 --truncation 0.7 -o grid.png
      cips-deploy render --seeds 0-31 --outdir seeds/                (one PNG per seed)
      cips-deploy render --topology cylinder --viewer pano.html      (drag to look around)
      cips-deploy render -t cylinder --height 8192 --width 32768 --workers 2 -o pano.dzi   (streamed)
    """
    if width is None:  # a cylinder's whole turn is four 90-degree views, the training default
        width = 4 * height if topology == "cylinder" else height
    seed_list = parse_seeds(seed, seeds) if outdir is None else parse_seeds(seed, seeds, MAX_BATCH_SEEDS, "a batch")
    registry = get_registry()
    if output.is_dir():
        raise CipsError(f"Cannot write {output}: it is a directory.")
    chosen = format_for(output, output_format, {name: entry.item for name, entry in registry.outputs.items()})
    topology_params = parse_assignments(params, "topology parameter")
    model = choose_model(checkpoint, preset, arch, coordinate_space, model_seed)
    # Flags such as --precision are backend options (cli/backend_flags.py).
    options = merge_backend_flags(parse_assignments(backend_options, "backend option"), backend_flags)
    if chosen.streaming or resume or workers != 1:  # gigapixel: tiles streamed to disk (cips_deploy.runtime.gigapixel)
        if outdir is not None or viewer is not None:
            raise CipsError("--outdir and --viewer go with in-memory renders, not with streamed outputs, --resume or --workers.")
        check_output(output, force, chosen.extensions)
        from cips_deploy.cli.gigapixel import stream_render

        stream_render(
            model, output, chosen.name, seed_list, topology, topology_params, height, width, truncation, chunker,
            chunk_size, memory_budget, backend, device, options, blend_seed, resume, workers, quiet, registry,
        )
        return
    # With --outdir the grid is written only where -o is given: a batch wants its seeds' files.
    grid_output = output if outdir is None or click.get_current_context().get_parameter_source("output").name != "DEFAULT" else None
    if grid_output is not None:
        check_output(grid_output, force, chosen.extensions)
        if len(seed_list) > 1:  # every seed's image is kept until the grid is tiled: count them all, and the grid
            check_memory(2 * len(seed_list) * height * width * 3, f"{len(seed_list)} {height:,} x {width:,} renders and their grid")
        grid_columns = math.ceil(math.sqrt(len(seed_list)))  # the grid that tile() assembles
        grid_rows = math.ceil(len(seed_list) / grid_columns)
        # One seed: the render's own check, early; a grid: the assembled grid image.
        check_in_memory(grid_rows * height, grid_columns * width, registry.get("topology", topology) if len(seed_list) == 1 else None)
    files = RenderFiles(
        model, topology, topology_params, registry, height=height, width=width, truncation=truncation,
        backend=backend, backend_options=options, blend_seed=blend_seed, outdir=outdir, viewer=viewer, overwrite=force,
    )
    files.check(seed_list)
    try:
        runner = make_backend(registry, backend, model, device, options)
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
                    chunk_size=chunk_size, memory_budget=memory_budget, blend_seed=blend_seed,
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
        runner.close()
    grid = tile([rendering.image for rendering in renderings]) if grid_output is not None else None
    if chosen.name == "png":  # with provenance in its text chunks
        files.finish(renderings, grid, grid_output)
    else:  # a plugin's in-memory format
        files.finish(renderings, None, None)
        if grid is not None:
            with atomic_path(grid_output, overwrite=force) as temporary:
                chosen.save(grid, temporary)
    click.echo(summary(output if grid_output is not None else outdir, renderings, height, width))
    if viewer is not None:
        click.echo(f"Wrote {viewer}: open it in a browser and drag to look around.")


def choose_model(checkpoint: Path | None, preset: str | None, arch: str, coordinate_space: str, model_seed: int) -> Any:
    """A checkpoint path (the backend reads it) or a random-weight Generator of a preset."""
    if checkpoint is not None and preset is not None:
        raise CipsError("Give either --checkpoint or --preset, not both.")
    if checkpoint is not None:
        return checkpoint
    if preset is None:
        if not DEMO_MODEL.exists():
            raise CipsError(f"No --checkpoint given and the bundled demo model {DEMO_MODEL} is missing; reinstall cips-deploy.")
        return DEMO_MODEL
    from cips_deploy import create

    return create(preset, arch=arch, coordinate_space=coordinate_space, seed=model_seed)


def parse_seeds(seed: int | None, seeds: str | None, limit: int = MAX_SEEDS, what: str = "a grid") -> list[int]:
    """[seed] or the seeds of a list such as ``0-3,7`` (at most ``limit``, for ``what``)."""
    if seed is not None and seeds is not None:
        raise CipsError("Give either --seed or --seeds, not both.")
    if seeds is None:
        return [0 if seed is None else seed]
    found: list[int] = []
    for part in seeds.replace(" ", "").split(","):
        try:
            if "-" in part[1:]:
                first, last = part.split("-", 1)
                low, high = int(first), int(last)
                if high < low:
                    raise ValueError
                found.extend(range(low, min(high, low + limit) + 1))
            else:
                found.append(int(part))
        except ValueError:
            raise CipsError(f"--seeds takes seeds and ranges such as 0-3 or 1,5,9, not {seeds!r}.") from None
    if len(found) > limit:
        raise CipsError(f"--seeds lists {len(found)} seeds; {what} takes at most {limit:,}.")
    return found


def parse_assignments(items: tuple[str, ...], what: str) -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}``; values stay strings for the plugin to convert."""
    parsed: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise CipsError(f"A {what} is written NAME=VALUE, not {item!r}.")
        parsed[name.strip()] = value.strip()
    return parsed


def check_output(output: Path, force: bool = False, extensions: tuple[str, ...] = (".png",)) -> None:
    """Refuse an output we cannot write (or must not replace) before spending time on the render."""
    if output.is_dir():
        raise CipsError(f"Cannot write {output}: it is a directory.")
    if output.exists() and not force:
        raise CipsError(f"{output} already exists; pass --force to replace it.")
    if output.suffix.lower() not in extensions:
        raise CipsError(f"The output {output} must be a {' or '.join(extensions)} file.")
    folder = output.parent
    if not folder.is_dir():
        raise CipsError(f"Cannot write {output}: the folder {folder} does not exist.")
    try:  # the only reliable test of writability (permissions, read-only mounts, root) is to try
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CipsError(f"Cannot write {output}: {error.strerror or error}.") from None


def tile(images: list[np.ndarray]) -> np.ndarray:
    """One image, or several uint8 [H, W, 3] as a near-square grid, row by row."""
    if len(images) == 1:
        return images[0]
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    height, width, _ = images[0].shape
    grid = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return grid


def summary(output: Path, renderings: list[Rendering], height: int, width: int) -> str:
    first = renderings[0]
    seeds = ", ".join(str(rendering.seed) for rendering in renderings)
    points = sum(rendering.points_evaluated for rendering in renderings)
    chunks = sum(rendering.chunks for rendering in renderings)
    text = (
        f"Wrote {output}: {height}x{width} {first.topology} render of seed{'s' if len(renderings) > 1 else ''} {seeds}; "
        f"evaluated {points:,} points in {chunks:,} chunk{'s' if chunks != 1 else ''}"
    )
    pixels = height * width * len(renderings)
    if points != pixels:
        text += f" ({points / pixels:.1%} of {pixels:,} pixels)"
    return text + "."


class ChunkProgress:
    """``render_detailed``'s progress callback as a click progress bar on stderr."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.bar = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
