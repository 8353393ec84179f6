"""The ``video`` command: its options, and its registration through the ``register_commands``
hook, as a third-party plugin registers a command. What it does is
:func:`cips_deploy.media.video.make_video`; this module only turns the options into its arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.errors import printable
from cips_deploy.contracts.command_options import model_options, real, style_options, synthesis_options, transform_options, whole
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.media.video import DEFAULT_FPS, MODES, make_video, parse_centre, parse_grid, split_ramps
from cips_deploy.runtime.render_request import MAX_SIDE


@click.command("video")
@model_options("Animate")
@click.option("--mode", default="walk", show_default=True, metavar="|".join(MODES), help="walk: through the seeds' styles (looped); zoom: into a flat render; pan: once around a cylinder model (looped).")
@click.option("--seeds", default="0-3", show_default=True, metavar="LIST", help="Seeds whose styles the clip walks through, e.g. 0-7 or 1,5,9 (one seed: a fixed style).")
@click.option("--frames", type=whole(None, 1_000_000), default=48, show_default=True, help="Number of frames (at least 2).")
@click.option("--fps", type=real(), default=None, help=f"Frames per second (default {DEFAULT_FPS:g}).")
@click.option("--duration", type=real(), default=None, help="Length of the clip in seconds (instead of --fps).")
@click.option("-t", "--topology", default=None, help="Topology of every frame (default: cylinder for a cylinder model's walk, else flat).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE|NAME=START:END", help="A topology parameter, fixed or animated linearly over the clip; repeatable.")
@click.option("--height", type=whole(1, MAX_SIDE), default=256, show_default=True, help="Frame height in pixels.")
@click.option("--width", type=whole(1, MAX_SIDE), default=None, help="Frame width (default: the height; 4x for a cylinder walk; height x fov / 90 for a pan).")
@click.option("--zoom", type=real(), default=4.0, show_default=True, help="zoom mode: total magnification (0.5 zooms out).")
@click.option("--centre", default="0,0", show_default=True, metavar="U,V", help="zoom mode: the point zoomed into.")
@click.option("--fov", type=real(), default=90.0, show_default=True, help="pan mode: horizontal field of view in degrees.")
@click.option("--grid", default=None, metavar="RxC", help="A grid of R x C walks, as gen_video.py: the seeds are dealt out in order, len(seeds) / (R C) to each cell.")
@style_options
@transform_options
@synthesis_options
@click.option("--quality", type=click.IntRange(0, 100), default=80, show_default=True, help="WebP quality (lossy).")
@click.option("--lossless", is_flag=True, help="Lossless WebP (larger).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("animation.webp"), show_default=True, help=".webp (animated, Pillow) or .mp4 (needs the video extra).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Replace the output if it exists.")
def video_command(
    checkpoint: Path | None, preset: str | None, arch: str, coordinate_space: str, model_seed: int, mode: str,
    seeds: str, frames: int, fps: float | None, duration: float | None, topology: str | None, params: tuple[str, ...],
    height: int, width: int | None, zoom: float, centre: str, fov: float, grid: str | None, mix_seed: int | None,
    mix_from: int | None, class_index: int | None, translate: tuple[float, float] | None, rotate: float | None,
    scale: float | None, truncation: float, chunker: str | None,
    chunk_size: int | None, memory_budget: float | None, backend: str | None, device: str,
    backend_options: tuple[str, ...], quality: int, lossless: bool, output: Path, quiet: bool, force: bool,
    **backend_flags: Any,
) -> None:
    """Render an animation: a latent walk, a zoom or a 360-degree pan, as animated WebP or MP4.

    \b
    Examples:
      cips-deploy video --seeds 0-7 --frames 96 -o walk.webp           (the demo panorama model)
      cips-deploy video --mode pan --seeds 3 --frames 72 -o pan.webp
      cips-deploy video --preset tiny --mode zoom --seeds 1 --zoom 8 -o zoom.mp4
      cips-deploy video --mode walk --seeds 0-1 -p heading=0:90 -o turn.webp
      cips-deploy video --preset tiny --grid 2x3 --seeds 0-11 --trunc 0.7 -o grid.webp   (gen_video.py's grid)
    """
    # The render command's helpers, imported here: the command-line package is loading the
    # plugins while this module is imported.
    from cips_deploy.cli.backend_flags import merge_backend_flags
    from cips_deploy.cli.common import ChunkProgress, choose_model, make_controls, parse_assignments, parse_seeds

    seed_list = parse_seeds(None, seeds)
    grid_shape = None if grid is None else parse_grid(grid)
    controls = make_controls(translate, rotate, scale, mix_seed, mix_from, class_index)
    fixed, ramps = split_ramps(parse_assignments(params, "topology parameter"))
    centre_uv = parse_centre(centre)
    options = merge_backend_flags(parse_assignments(backend_options, "backend option"), backend_flags)
    model = choose_model(checkpoint, preset, arch, coordinate_space, model_seed, backend)
    progress = ChunkProgress("frames", enabled=not quiet and sys.stderr.isatty())
    try:
        clip = make_video(
            model, output, mode=mode, seeds=seed_list, frames=frames, fps=fps, duration=duration, topology=topology,
            params=fixed, ramps=ramps, height=height, width=width, zoom=zoom, centre=centre_uv, fov=fov,
            truncation=truncation, chunker=chunker, chunk_size=chunk_size, memory_budget=memory_budget,
            backend=backend, device=device, backend_options=options, quality=quality, lossless=lossless,
            progress=progress, overwrite=force, controls=controls, grid=grid_shape,
        )
    finally:
        progress.close()
    click.echo(
        f"Wrote {printable(str(clip.path))}: {clip.frames} frames of {clip.height}x{clip.width} ({clip.mode}, {clip.topology}), "
        f"{clip.frames / clip.fps:.2f} s at {clip.fps:g} fps."
    )


@hookimpl
def register_commands(cli):
    # The command-line package is loaded by now. As for render: --precision and the other
    # backend options as flags, and no --backend means the one the model file names.
    from cips_deploy.cli.backend_flags import with_backend_flags
    from cips_deploy.cli.common import backend_from_the_model

    cli.add_command(backend_from_the_model(with_backend_flags(video_command)))
