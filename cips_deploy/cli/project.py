"""``cips-deploy project``: find the style that reproduces a photograph (StyleGAN's ``projector.py``).

Writes the style, its trajectory and losses as ``.npz`` (format: :mod:`cips_deploy.media.projection`),
which ``render --w`` renders with any topology and size; optionally a video of the
optimisation and the reconstruction as a PNG. The optimisation is
:mod:`cips_deploy.families.projector` (torch: the build extra; without it the command says so
in one sentence, :mod:`cips_deploy.cli.group`).
"""

from __future__ import annotations

from pathlib import Path

import click

from cips_deploy._compat import require_build_extra
from cips_deploy.cli.common import ChunkProgress
from cips_deploy.cli.group import cli
from cips_deploy.contracts.command_options import SEED, real, usable_path, whole
from cips_deploy.contracts.limits import regular_file
from cips_deploy.errors import CipsError, printable
from cips_deploy.media.projection import RESIZE_MODES
from cips_deploy.models import DEMO_MODEL


class Heading(click.ParamType):
    """A heading in degrees (-360 to 360), or ``auto``."""

    name = "degrees|auto"
    degrees = real(-360.0, 360.0)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return self.degrees.convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{str(value)[:40]!r} is neither a number of degrees nor auto.", param, ctx)


HEADING = Heading()
MAX_SIZE = 2048  # the view's side; the backward pass keeps every layer of every point
MAX_STEPS = 1_000_000
VIDEO_HEIGHT = 256  # a video's frames are enlarged (nearest) to at least this height


@cli.command("project")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Model file (a cips-deploy or official checkpoint; an engine has no gradients); default: the bundled demo panorama model.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("proj.npz"), show_default=True, help="The projection (.npz): w or ws, trajectory, loss, config, source_hash, target_size, view.")
@click.option("--steps", type=whole(1, MAX_STEPS), default=1000, show_default=True, help="Optimisation steps.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the style noise added while optimising (and of the style samples behind its scale).")
@click.option("--lr", type=real(0.0, 1000.0, open_low=True), default=0.1, show_default=True, help="Adam's peak learning rate (ramped up over 5% of the steps, down over the last 25%).")
@click.option("--per-layer", is_flag=True, help="One style per layer (ws [1, L, S], W+) where the family has per-layer styles.")
@click.option("--size", type=whole(8, MAX_SIZE), default=None, help="Side in pixels of the square view matched to the target (default: the model's training size).")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default="crop", show_default=True, help="Make the target square: crop its centre square, or stretch the whole image.")
@click.option("--angle", type=HEADING, default="0", show_default=True, help="Cylinder models: the heading in degrees of the view's centre (0: u = 0, the middle of the panorama), or auto: the heading, every 3 degrees, where the average style looks most like the target.")
@click.option("--fov", type=real(0.0, 360.0, open_low=True), default=None, help="Cylinder models: the view's width in degrees (default: the model's training fov, else 90).")
@click.option("--pixel-loss", type=click.Choice(["mse", "l1"]), default="mse", show_default=True, help="The per-pixel term of the loss.")
@click.option("--ssim-weight", type=real(0.0, 1000.0), default=1.0, show_default=True, help="Weight of the (1 - MS-SSIM) term (0: pixels only).")
@click.option("--noise", type=real(0.0, 10.0), default=0.05, show_default=True, help="Style noise at the start, times the spread of the model's styles (decays to 0 at 75% of the steps).")
@click.option("--save-every", type=whole(1, MAX_STEPS), default=None, help="Save the style to the trajectory every this many steps (default: steps / 100, at least 1); the last is the final.")
@click.option("--video", type=click.Path(path_type=Path), default=None, help="Also write the optimisation as a video (.mp4 or .webp): the target beside each saved style's render.")
@click.option("--image", type=click.Path(path_type=Path), default=None, help="Also write the final reconstruction (the projected view) as a .png.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA where there is one), cpu, cuda or cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
def project_command(target, checkpoint, output, steps, seed, lr, per_layer, size, resize, angle, fov, pixel_loss,
                    ssim_weight, noise, save_every, video, image, device, quiet, force) -> None:
    """Find the style w that reproduces the TARGET image (a projection, as StyleGAN's projector.py).

    The model renders a square view: a plane model its training framing ([-1, 1]^2); a
    cylinder model a --fov-degree window of its cylinder centred at --angle (the demo: 90
    degrees, u in [-0.25, 0.25], the middle quarter of its panorama). The target is made
    square (--resize) and resized to --size. Loss: pixel (--pixel-loss) + --ssim-weight x
    (1 - MS-SSIM); no perceptual term (its weights would be a download). Then
    `cips-deploy render --w proj.npz -t cylinder` renders the projection as a panorama, at
    any size. Needs PyTorch (the build extra); uses CUDA where there is one.
    """
    _check_outputs(output, video, image, force)
    regular_file(target, "target image")  # before minutes of loading: a missing file, a folder, a FIFO
    if checkpoint is not None and checkpoint.suffix.lower() in (".onnx", ".plan"):
        raise CipsError(f"{checkpoint} is an exported engine; projection needs the model's gradients: give its checkpoint (.safetensors, .pt or .pkl).")
    require_build_extra("`cips-deploy project`")
    from cips_deploy.families.checkpoint import load
    from cips_deploy.families.projector import ProjectionSettings, best_heading, project, torch_device, view_coords, view_fov
    from cips_deploy.media.projection import read_target, write_projection
    from cips_deploy.runtime.hashing import file_sha256

    model_path = checkpoint if checkpoint is not None else DEMO_MODEL
    if not model_path.exists() and checkpoint is None:
        raise CipsError(f"No --checkpoint given and the bundled demo model {model_path} is missing; reinstall cips-deploy.")
    generator = load(model_path, device=torch_device(device))
    config = generator.config
    side = size or config.size
    if side < 8:
        raise CipsError(f"The model trained at {config.size} pixels; give --size 8 or more for the projection's view.")
    pixels = read_target(target, side, resize)
    if per_layer and not getattr(config.family, "trained_with_layer_styles", True) and config.family.style_layers(config) > 1:
        click.echo(
            f"Warning: the {config.family.name} family was trained with one style for all layers; per-layer styles fit "
            "the photograph more closely but may leave what the model learned (panoramas and zooms suffer first).", err=True,
        )
    cylinder = config.coordinate_space == "cylinder"
    width_degrees = view_fov(generator, fov)
    if angle == "auto":
        angle = best_heading(generator, pixels, width_degrees) if cylinder else 0.0
    coords = view_coords(config.coordinate_space, side, centre=angle, fov=width_degrees)
    view_box = (float(coords[0, 0, 0]), float(coords[0, -1, 0]), -1.0, 1.0)  # the first and last columns' u
    settings = ProjectionSettings(
        steps=steps, lr=lr, per_layer=per_layer, pixel=pixel_loss, ssim_weight=ssim_weight, noise=noise,
        save_every=save_every or max(1, steps // 100), seed=seed,
    )
    progress = ChunkProgress("Projecting", enabled=not quiet)
    try:
        result = project(generator, pixels, coords, settings, progress)
    finally:
        progress.close()
    write_projection(
        output, styles=result.styles, trajectory=result.trajectory, loss=result.loss, config=config.to_dict(),
        source_hash=file_sha256(model_path), target_size=(side, side), view=view_box, overwrite=force,
    )
    box = f"u {view_box[0]:.4g} to {view_box[1]:.4g}"
    view = f"the {width_degrees:g}-degree view at heading {angle:g} ({box})" if cylinder else f"its training framing ({box})"
    style = f"{result.styles.shape[1]} per-layer styles" if result.styles.ndim == 3 else "one style"
    click.echo(
        f"Wrote {printable(str(output))}: {style} after {steps:,} steps ({len(result.loss)} saved); final loss {result.loss[-1]:.5f}; "
        f"the {side}x{side} reconstruction of {view} is {result.psnr:.2f} dB PSNR from the target."
    )
    if image is not None:
        _write_png(image, result.reconstruction, force)
        click.echo(f"Wrote {printable(str(image))}: the reconstruction.")
    if video is not None:
        from cips_deploy.families.projector import trajectory_frames
        from cips_deploy.media.video import write_video

        scale = max(1, -(-VIDEO_HEIGHT // side))
        frames = trajectory_frames(generator, coords, result.trajectory, pixels, scale)
        count = write_video(frames, video, height=side * scale, width=2 * side * scale, fps=min(30.0, max(1.0, len(result.loss) / 4)), overwrite=force)
        click.echo(f"Wrote {printable(str(video))}: {count} frames, the target beside the projection every {settings.save_every} steps.")


def _check_outputs(output: Path, video: Path | None, image: Path | None, force: bool) -> None:
    """The output guard for every file the command writes, before the model is loaded."""
    from cips_deploy.media.video import check_video_name
    from cips_deploy.runtime.atomic import guard_outputs

    paths = [path for path in (output, video, image) if path is not None]
    if len({usable_path(path).resolve() for path in paths}) != len(paths):
        raise CipsError("-o, --video and --image must name different files.")
    if output.suffix.lower() != ".npz":
        raise CipsError(f"The projection {output} must be a .npz file.")
    guard_outputs(output, overwrite=force, probe=True)
    if image is not None:
        if image.suffix.lower() != ".png":
            raise CipsError(f"The reconstruction {image} must be a .png file.")
        guard_outputs(image, overwrite=force, probe=True)
    if video is not None:
        check_video_name(video, force)
        if video.suffix.lower() == ".mp4":
            from cips_deploy.media.video import load_ffmpeg

            load_ffmpeg()  # the video extra, before minutes of optimisation


def _write_png(path: Path, rgb, force: bool) -> None:
    """The reconstruction (float32 [H, W, 3] in [-1, 1]) as a PNG, atomically."""
    from PIL import Image

    from cips_deploy.runtime.atomic import atomic_path
    from cips_deploy.runtime.images import rgb_to_uint8

    with atomic_path(path, overwrite=force) as temporary:
        Image.fromarray(rgb_to_uint8(rgb), mode="RGB").save(temporary, format="PNG")
