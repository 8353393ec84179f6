"""The ``video`` command: latent walks, zooms and 360-degree pans as animated WebP or MP4.

Registered through the ``register_commands`` hook like any third-party command; the
animation itself is :mod:`cips_deploy.media.video`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from cips_deploy.cli.options import model_options, synthesis_options
from cips_deploy.contracts.config import PRESETS
from cips_deploy.errors import CipsError
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.media.video import MODES

DEFAULT_FPS = 24.0


@click.command("video")
@model_options("Animate", sorted(PRESETS))
@click.option("--mode", default="walk", show_default=True, metavar="|".join(MODES), help="walk: through the seeds' styles (looped); zoom: into a flat render; pan: once around a cylinder model (looped).")
@click.option("--seeds", default="0-3", show_default=True, metavar="LIST", help="Seeds whose styles the clip walks through, e.g. 0-7 or 1,5,9 (one seed: a fixed style).")
@click.option("--frames", type=int, default=48, show_default=True, help="Number of frames (at least 2).")
@click.option("--fps", type=float, default=None, help=f"Frames per second (default {DEFAULT_FPS:g}).")
@click.option("--duration", type=float, default=None, help="Length of the clip in seconds (instead of --fps).")
@click.option("-t", "--topology", default=None, help="Topology of every frame (default: cylinder for a cylinder model's walk, else flat).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE|NAME=START:END", help="A topology parameter, fixed or animated linearly over the clip; repeatable.")
@click.option("--height", type=int, default=256, show_default=True, help="Frame height in pixels.")
@click.option("--width", type=int, default=None, help="Frame width (default: the height; 4x for a cylinder walk; height x fov / 90 for a pan).")
@click.option("--zoom", type=float, default=4.0, show_default=True, help="zoom mode: total magnification (0.5 zooms out).")
@click.option("--centre", default="0,0", show_default=True, metavar="U,V", help="zoom mode: the point zoomed into.")
@click.option("--fov", type=float, default=90.0, show_default=True, help="pan mode: horizontal field of view in degrees.")
@synthesis_options
@click.option("--quality", type=click.IntRange(0, 100), default=80, show_default=True, help="WebP quality (lossy).")
@click.option("--lossless", is_flag=True, help="Lossless WebP (larger).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("animation.webp"), show_default=True, help=".webp (animated, Pillow) or .mp4 (needs the video extra).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def video_command(**options: Any) -> None:
    """Render an animation: a latent walk, a zoom or a 360-degree pan, as animated WebP or MP4.

    \b
    Examples:
      cips-deploy video --seeds 0-7 --frames 96 -o walk.webp           (the demo panorama model)
      cips-deploy video --mode pan --seeds 3 --frames 72 -o pan.webp
      cips-deploy video --preset tiny --mode zoom --seeds 1 --zoom 8 -o zoom.mp4
      cips-deploy video --mode walk --seeds 0-1 -p heading=0:90 -o turn.webp
    """
    run_video(**options)


def run_video(
    checkpoint: Path | None, preset: str | None, arch: str, coordinate_space: str, model_seed: int, mode: str,
    seeds: str, frames: int, fps: float | None, duration: float | None, topology: str | None, params: tuple[str, ...],
    height: int, width: int | None, zoom: float, centre: str, fov: float, truncation: float, chunker: str | None,
    chunk_size: int | None, memory_budget: float | None, backend: str, device: str, backend_options: tuple[str, ...],
    quality: int, lossless: bool, output: Path, quiet: bool, **backend_flags: Any,
) -> None:
    # The render command's helpers, imported here: this module is loaded with the plugin
    # registry, which the command line package itself loads while it is being imported.
    from cips_deploy.cli.backend_flags import merge_backend_flags
    from cips_deploy.cli.render import ChunkProgress, choose_model, parse_assignments, parse_seeds
    from cips_deploy.runtime.plugin_manager import get_registry
    from cips_deploy.media.provenance import model_identity, render_provenance
    from cips_deploy.runtime.render import check_size, make_backend
    from cips_deploy.media.video import Animation, check_animation, check_video_output, render_frames, write_video

    if mode not in MODES:  # checked here, not by click.Choice, to answer in one sentence
        raise CipsError(f"Unknown animation mode {mode!r}; choose one of {', '.join(MODES)}.")
    seed_list = parse_seeds(None, seeds)
    if frames < 2:
        raise CipsError(f"An animation needs at least 2 frames, not {frames}.")
    rate = frame_rate(fps, duration, frames)
    fixed, ramps = split_ramps(parse_assignments(params, "topology parameter"))
    centre_uv = parse_centre(centre)
    if not (math.isfinite(fov) and 0 < fov <= 360):
        raise CipsError(f"The field of view must be more than 0 and at most 360 degrees, not {fov:g}.")
    model = choose_model(checkpoint, preset, arch, coordinate_space, model_seed)
    registry = get_registry()
    options = merge_backend_flags(parse_assignments(backend_options, "backend option"), backend_flags)
    runner = make_backend(registry, backend, model, device, options)
    try:
        space = runner.config.coordinate_space
        if topology is None:
            topology = "cylinder" if mode == "walk" and space == "cylinder" else "flat"
        if width is None:
            width = default_width(mode, topology, height, fov)
        check_size(height, width)
        check_video_output(output, frames, height, width, rate)
        animation = Animation(
            mode=mode, seeds=tuple(seed_list), frames=frames, topology=topology, params=fixed, ramps=ramps,
            zoom=zoom, centre=centre_uv, fov=fov,
        )
        provenance = render_provenance(
            model_identity(model), seed=seed_list, truncation=truncation, topology=topology,
            parameters={**fixed, **{name: f"{a}:{b}" for name, (a, b) in ramps.items()}}, height=height, width=width,
            backend=backend, animation=mode, frames=frames, fps=rate,
            zoom=zoom if mode == "zoom" else None, centre=list(centre_uv) if mode == "zoom" else None,
            fov=fov if mode == "pan" else None,
        )
        check_animation(animation, space, registry)  # before the output's temporary file exists
        progress = ChunkProgress("frames", enabled=not quiet and sys.stderr.isatty())
        try:
            written = write_video(
                render_frames(
                    runner, animation, height, width, truncation=truncation, registry=registry, progress=progress,
                    chunker=chunker, chunk_size=chunk_size, memory_budget=memory_budget,
                ),
                output, height=height, width=width, fps=rate, provenance=provenance, quality=quality, lossless=lossless,
            )
        finally:
            progress.close()
    finally:
        runner.close()
    click.echo(f"Wrote {output}: {written} frames of {height}x{width} ({mode}, {topology}), {written / rate:.2f} s at {rate:g} fps.")


def frame_rate(fps: float | None, duration: float | None, frames: int) -> float:
    """Frames per second from --fps or --duration (not both)."""
    if fps is not None and duration is not None:
        raise CipsError("Give either --fps or --duration, not both.")
    if duration is not None:
        if not (math.isfinite(duration) and duration > 0):
            raise CipsError(f"The duration must be a positive number of seconds, not {duration:g}.")
        return frames / duration
    rate = DEFAULT_FPS if fps is None else fps
    if not (math.isfinite(rate) and rate > 0):
        raise CipsError(f"The frame rate must be a positive number of frames per second, not {rate:g}.")
    return rate


def split_ramps(assignments: dict[str, str]) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """``{"a": "1", "b": "0:2"}`` -> fixed ``{"a": "1"}`` and animated ``{"b": ("0", "2")}``."""
    fixed: dict[str, str] = {}
    ramps: dict[str, tuple[str, str]] = {}
    for name, value in assignments.items():
        start, colon, end = value.partition(":")
        if colon:
            if not start.strip() or not end.strip():
                raise CipsError(f"An animated parameter is written NAME=START:END, not {name}={value}.")
            ramps[name] = (start.strip(), end.strip())
        else:
            fixed[name] = value
    return fixed, ramps


def parse_centre(text: str) -> tuple[float, float]:
    try:
        u, v = (float(part) for part in text.split(","))
    except ValueError:
        raise CipsError(f"--centre takes two numbers U,V such as 0.2,-0.1, not {text!r}.") from None
    if not (math.isfinite(u) and math.isfinite(v)):
        raise CipsError(f"--centre must be finite, not {text!r}.")
    return u, v


def default_width(mode: str, topology: str, height: int, fov: float) -> int:
    """Square pixels in the training framing: a cylinder's full turn is 4 heights wide."""
    if mode == "pan":
        return max(1, round(height * fov / 90.0))
    return 4 * height if topology == "cylinder" else height


@hookimpl
def register_commands(cli):
    from cips_deploy.cli.backend_flags import with_backend_flags  # the CLI package is loaded by now

    cli.add_command(with_backend_flags(video_command))  # --precision and the other backend options
