"""Animations: latent walks, zooms, 360-degree pans and animated topology parameters.

    animation = Animation(mode="walk", seeds=[0, 1, 2, 3], frames=96)
    for frame in render_frames(backend, animation, height=256, width=256):  # uint8 [H, W, 3]
        ...

Every frame is one ordinary render (:func:`cips_deploy.runtime.render.render_detailed`: topology ->
chunker -> backend -> image), so frames are chunked like any render and, on the CPU torch
backend, bitwise the same for any chunking. What changes from frame to frame:

- the style. Each seed gives a style w = map(z(seed), truncation) (z by the one seed rule,
  :func:`cips_deploy.runtime.seeds.seed_latent`); frame k of N sits at position
  ``x = k * n / N`` along the closed loop through the n seeds' styles and gets the uniform
  Catmull-Rom spline through them, interpolated in W (numpy float32). Frame N would be frame 0
  again, so the clip loops without a jump and without a pause at the seeds (a
  piecewise-linear walk would kink there). One seed keeps one style.
- the camera, by mode: ``walk`` none; ``zoom`` shrinks the viewport (the fixed u/v
  parameters, default [-1, 1]^2) geometrically towards a centre by a total ``zoom`` factor
  (frame 0 the start view, frame N-1 the end view); ``pan`` turns a ``fov``-degree window once around a cylinder-space model
  (frame k looks at ``360 k / N`` degrees, so it loops).
- any topology parameter given as ``NAME=START:END``: linear from frame 0 to frame N-1.

What every frame shares: the render controls (:class:`~cips_deploy.runtime.render_setup.Controls`):
a coordinate transform (``--translate/--rotate/--scale``, on top of the mode's camera), style
mixing (the mix seed's w for the later style inputs of every frame's style) and a class.

A grid of walks (``grid=(R, C)``, ``video --grid RxC``, as StyleGAN3's ``gen_video.py``): the
seeds are dealt out in order, ``len(seeds) / (R C)`` consecutive seeds to each cell, row by row;
every cell walks its own seeds (same frames, same loop), and frame k is the R x C tiling of the
cells' frames k.

Writers: animated WebP through Pillow (no extra dependency), MP4 (H.264) through the
optional ``video`` extra (imageio-ffmpeg, which bundles an ffmpeg binary).

A whole clip in one call, everything the ``video`` command does after parsing its options:
:func:`make_video`. The command itself (its options, and registering it through the
``register_commands`` hook as a third-party plugin would) is :mod:`cips_deploy.plugins.video`.
Importing this module never imports torch: backends take and return numpy arrays
(:mod:`cips_deploy.contracts.backend`), and styles are numpy float32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from cips_deploy.runtime.backend_arrays import from_backend, to_backend
from cips_deploy.contracts.topology import resolve_parameters
from cips_deploy.errors import CipsError
from cips_deploy.media.provenance import model_identity, render_provenance, xmp_packet
from cips_deploy.runtime.atomic import atomic_path, guard_outputs
from cips_deploy.runtime.backend_use import choose_backend
from cips_deploy.runtime.plugin_manager import Registry, get_registry
from cips_deploy.runtime.render import check_size, make_backend, render_detailed
from cips_deploy.runtime.render_setup import Controls
from cips_deploy.runtime.styles import class_label
from cips_deploy.runtime.seeds import seed_latent

MODES = ("walk", "zoom", "pan")
MAX_FRAMES = 10_000
# Animated WebP is assembled in memory by Pillow (it needs every frame before encoding).
MAX_WEBP_BYTES = 1 << 30
VIEWPORT = ("u_min", "u_max", "v_min", "v_max")
FORMATS = (".webp", ".mp4")
DEFAULT_FPS = 24.0
MAX_GRID_SIDE = 64  # cells per row or column of --grid


@dataclass(frozen=True)
class Animation:
    """What moves in a clip (see the module text).

    mode:      walk, zoom or pan.
    seeds:     the styles to walk through (one seed: a fixed style).
    frames:    number of frames, at least 2.
    topology:  the topology every frame renders (pan and zoom need u/v viewport parameters).
    params:    fixed topology parameters (values as the topology takes them, strings allowed).
    ramps:     animated ones, name -> (start, end), linear over the frames.
    zoom:      zoom mode: total magnification (2 zooms in 2x; 0.5 zooms out).
    centre:    zoom mode: (u, v) the zoom closes in on.
    fov:       pan mode: horizontal field of view in degrees.
    """

    mode: str = "walk"
    seeds: tuple[int, ...] = (0, 1)
    frames: int = 48
    topology: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)
    ramps: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    zoom: float = 4.0
    centre: tuple[float, float] = (0.0, 0.0)
    fov: float = 90.0


def check_animation(animation: Animation, coordinate_space: str, registry: Registry | None = None) -> None:
    """Refuse, in one sentence, an animation that cannot be rendered (before any frame is)."""
    registry = registry or get_registry()
    if animation.mode not in MODES:
        raise CipsError(f"Unknown animation mode {animation.mode!r}; choose one of {', '.join(MODES)}.")
    frames = animation.frames
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames < 2:
        raise CipsError(f"An animation needs at least 2 frames, not {frames!r}.")
    if frames > MAX_FRAMES:
        raise CipsError(f"{frames:,} frames is more than the limit of {MAX_FRAMES:,}.")
    if not animation.seeds:
        raise CipsError("An animation needs at least one seed.")
    if animation.mode == "walk" and len(animation.seeds) < 2:
        raise CipsError("A latent walk needs at least two seeds, e.g. --seeds 0-3.")
    entry = registry.get("topology", animation.topology)
    topology = entry.item
    if animation.mode == "pan" and coordinate_space != "cylinder":
        raise CipsError(
            f"The pan mode turns around a cylinder-space model, but this model's coordinate space is {coordinate_space}; "
            "use --mode walk or --mode zoom."
        )
    if coordinate_space not in topology.coordinate_spaces:
        raise CipsError(topology.unsupported_space(coordinate_space))
    controlled = mode_parameters(animation)
    declared = {parameter.name for parameter in topology.parameters}
    missing = [name for name in controlled if name not in declared]
    if missing:
        raise CipsError(
            f"The {animation.mode} mode moves the viewport ({', '.join(missing)}), which the {entry.name} topology "
            "does not have; use --topology flat."
        )
    # A zoom starts from the viewport given as fixed parameters; a pan sets its u range itself.
    given = set(animation.ramps) if animation.mode == "zoom" else set(animation.params) | set(animation.ramps)
    clash = sorted(set(controlled) & given)
    if clash:
        raise CipsError(f"The {animation.mode} mode sets {', '.join(clash)} itself; do not give {'it' if len(clash) == 1 else 'them'} as --param.")
    both = sorted(set(animation.params) & set(animation.ramps))
    if both:
        raise CipsError(f"The topology parameter {both[0]} is given both fixed and animated.")
    if animation.mode == "zoom":
        if not (isinstance(animation.zoom, (int, float)) and math.isfinite(animation.zoom) and animation.zoom > 0 and animation.zoom != 1):
            raise CipsError(f"The zoom must be a positive factor other than 1 (2 zooms in 2x, 0.5 out), not {animation.zoom!r}.")
        if not all(math.isfinite(value) for value in animation.centre):
            raise CipsError(f"The zoom centre must be finite, not {animation.centre!r}.")
    if animation.mode == "pan" and not (isinstance(animation.fov, (int, float)) and 0 < animation.fov <= 360):
        raise CipsError(f"The pan's field of view must be more than 0 and at most 360 degrees, not {animation.fov!r}.")
    # Both ends of every ramp (and every fixed value) must be values the topology accepts;
    # this also names unknown parameters with the topology's list.
    for end in (0, 1):
        resolve_parameters(topology, {**animation.params, **{name: pair[end] for name, pair in animation.ramps.items()}}, entry.name)
    for name, (start, end) in animation.ramps.items():
        kind = next(parameter.type for parameter in topology.parameters if parameter.name == name)
        if kind not in (int, float):
            raise CipsError(f"The {entry.name} topology's parameter {name} is not a number, so it cannot be animated.")


def mode_parameters(animation: Animation) -> tuple[str, ...]:
    """The topology parameters a mode drives itself."""
    return {"walk": (), "zoom": VIEWPORT, "pan": ("u_min", "u_max")}[animation.mode]


def frame_parameters(animation: Animation, index: int, registry: Registry | None = None) -> dict[str, Any]:
    """Topology parameters of frame ``index`` (0 .. frames - 1), fixed ones included."""
    registry = registry or get_registry()
    entry = registry.get("topology", animation.topology)
    topology = entry.item
    fixed = resolve_parameters(topology, animation.params, entry.name)  # converted, defaults filled in
    params = dict(animation.params)
    progress = index / (animation.frames - 1)  # 0 at the first frame, 1 at the last
    for name, (start, end) in animation.ramps.items():
        parameter = next(p for p in topology.parameters if p.name == name)
        low = parameter.convert(start, entry.name)
        high = parameter.convert(end, entry.name)
        value = low + (high - low) * progress
        params[name] = int(round(value)) if parameter.type is int else float(value)
    if animation.mode == "zoom":
        # Geometric: each frame magnifies by the same ratio, which reads as a steady zoom.
        scale = animation.zoom ** (-progress)
        cu, cv = animation.centre
        params["u_min"] = cu + (fixed["u_min"] - cu) * scale
        params["u_max"] = cu + (fixed["u_max"] - cu) * scale
        params["v_min"] = cv + (fixed["v_min"] - cv) * scale
        params["v_max"] = cv + (fixed["v_max"] - cv) * scale
    elif animation.mode == "pan":
        # u is an angle of period 2 on a cylinder-space model: 360 degrees = 2 units of u.
        centre = 2.0 * index / animation.frames
        half = animation.fov / 360.0
        params["u_min"], params["u_max"] = centre - half, centre + half
    return params


def seed_styles(runner: Any, seeds: Iterable[int], truncation: float, class_index: int | None = None) -> np.ndarray:
    """The seeds' styles, float32 [n, S]: each seed's z [1, Z] (and the class label of a
    conditional model) mapped on its own.

    One seed at a time, as a single render maps its seed, so that a walk's frame on a seed
    is bitwise that seed's render (a batched mapping may round differently).
    """
    c = class_label(runner.config, class_index)
    return np.concatenate([map_latent(runner, seed_latent(seed, runner.config), truncation, c) for seed in seeds])


def map_latent(runner: Any, z: np.ndarray, truncation: float, c: np.ndarray | None = None) -> np.ndarray:
    """``runner.map(z [1, Z], truncation)`` (with ``c=`` the label [1, C] of a conditional model)
    as host float32 [1, S], for either flavour of backend.

    Backends of the old contract (``arrays == "torch"``, :mod:`cips_deploy.backend`) take and
    return torch tensors; torch is imported only for them, and they exist only where it is.
    """
    label = getattr(runner, "name", "The backend")
    if c is None:
        return from_backend(runner.map(*to_backend(runner, z), truncation), label, "map")
    z, c = to_backend(runner, z, c)
    return from_backend(runner.map(z, truncation, c=c), label, "map")


def walk_styles(keys: np.ndarray, frames: int) -> Iterator[np.ndarray]:
    """Styles float32 [1, S] of a closed uniform Catmull-Rom loop through ``keys`` float32 [n, S], ``frames`` of them.

    Frame k sits at x = k n / frames: it passes through key i at x = i and is C1 everywhere,
    including where the loop closes; one key gives that key for every frame. Every operation
    is float32 array by Python float, so each style is rounded exactly as the torch version
    of this function rounded it.
    """
    keys = np.asarray(keys, dtype=np.float32)
    n = keys.shape[0]
    for index in range(frames):
        if n == 1:
            yield keys[0:1].copy()
            continue
        x = index * n / frames
        i = int(math.floor(x))
        t = x - i
        p0, p1, p2, p3 = (keys[(i + offset) % n] for offset in (-1, 0, 1, 2))
        t2, t3 = t * t, t * t * t
        style = 0.5 * (
            (2.0 * p1) + (-p0 + p2) * t + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * t2 + (-p0 + 3.0 * p1 - 3.0 * p2 + p3) * t3
        )
        yield style[None].astype(np.float32, copy=False)


def render_frames(
    runner: Any,
    animation: Animation,
    height: int,
    width: int,
    *,
    truncation: float = 1.0,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
    controls: Controls | None = None,
    **render_options: Any,
) -> Iterator[np.ndarray]:
    """The clip's frames, uint8 [height, width, 3] each, rendered one after another.

    runner: a constructed Backend (reused for every frame). ``render_options`` go to every
    :func:`render_detailed` call (chunker, chunk_size, memory_budget); ``controls`` (transform,
    style mixing, class) to every frame.
    """
    registry = registry or get_registry()
    check_animation(animation, runner.config.coordinate_space, registry)
    controls = controls or Controls()
    styles = None
    if len(animation.seeds) > 1:
        keys = seed_styles(runner, animation.seeds, truncation, controls.class_index)  # [n, S]
        styles = walk_styles(keys, animation.frames)
    if progress is not None:
        progress(0, animation.frames)
    for index in range(animation.frames):
        style = next(styles) if styles is not None else None  # [1, S], or the seed's own style
        rendering = render_detailed(
            runner, animation.topology, height, width, seed=animation.seeds[0], truncation=truncation,
            style=style, controls=controls, registry=registry, **render_options, **frame_parameters(animation, index, registry),
        )
        yield rendering.image
        if progress is not None:
            progress(index + 1, animation.frames)


def parse_grid(text: str) -> tuple[int, int]:
    """``"2x3"`` -> (2, 3): rows and columns of a grid of walks (``video --grid``), each 1 to MAX_GRID_SIDE."""
    match = re.fullmatch(r"\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*", text or "")
    if match is None:
        raise CipsError(f"--grid takes ROWSxCOLUMNS such as 2x3, not {text!r:.40}.")
    rows, columns = int(match.group(1)), int(match.group(2))
    if not (1 <= rows <= MAX_GRID_SIDE and 1 <= columns <= MAX_GRID_SIDE):
        raise CipsError(f"--grid takes 1 to {MAX_GRID_SIDE} rows and columns, not {rows}x{columns}.")
    return rows, columns


def grid_animations(animation: Animation, grid: tuple[int, int]) -> list[Animation]:
    """The cells' animations, row by row: ``len(seeds) / (R C)`` consecutive seeds each (gen_video's rule)."""
    rows, columns = grid
    cells = rows * columns
    seeds = tuple(animation.seeds)
    if len(seeds) % cells:
        raise CipsError(
            f"A {rows}x{columns} grid deals the seeds out to {cells} cells, so --seeds must list a multiple of {cells} "
            f"seeds, not {len(seeds)}."
        )
    per_cell = len(seeds) // cells
    if animation.mode == "walk" and per_cell < 2:
        raise CipsError(f"A {rows}x{columns} grid of latent walks needs at least 2 seeds per cell: {2 * cells} seeds, e.g. --seeds 0-{2 * cells - 1}.")
    return [dataclasses.replace(animation, seeds=seeds[i * per_cell : (i + 1) * per_cell]) for i in range(cells)]


def grid_frames(
    runner: Any,
    animation: Animation,
    height: int,
    width: int,
    grid: tuple[int, int],
    *,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
    **frame_options: Any,
) -> Iterator[np.ndarray]:
    """The frames of a grid of walks, uint8 [R height, C width, 3] each: cell (r, c)'s frame k
    (:func:`render_frames` of its :func:`grid_animations` entry) at row r, column c. Checked
    before the first frame is asked for."""
    registry = registry or get_registry()
    cells = grid_animations(animation, grid)
    for cell in cells:
        check_animation(cell, runner.config.coordinate_space, registry)
    rows, columns = grid

    def frames() -> Iterator[np.ndarray]:
        streams = [render_frames(runner, cell, height, width, registry=registry, **frame_options) for cell in cells]
        if progress is not None:
            progress(0, animation.frames)
        for index in range(animation.frames):
            frame = np.empty((rows * height, columns * width, 3), dtype=np.uint8)
            for number, stream in enumerate(streams):
                row, column = divmod(number, columns)
                frame[row * height : (row + 1) * height, column * width : (column + 1) * width] = next(stream)
            yield frame
            if progress is not None:
                progress(index + 1, animation.frames)

    return frames()


# --------------------------------------------------------------------------- writers


def check_video_output(path: Path, frames: int, height: int, width: int, fps: float) -> None:
    """The output's format is one we write, its frame timing is valid, and it fits: before rendering."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CipsError(f"The video {path} must be a .webp (animated WebP) or .mp4 file.")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise CipsError(f"The frame rate must be a positive number of frames per second, not {fps!r}.")
    if suffix == ".webp":
        if round(1000.0 / fps) < 1:
            raise CipsError(f"At {fps:g} frames per second a WebP frame lasts under 1 ms, which WebP cannot store; use at most 1000.")
        if round(1000.0 / fps) > 0xFFFFFF:
            raise CipsError(f"At {fps:g} frames per second a WebP frame lasts longer than WebP can store.")
        needed = frames * height * width * 3
        if needed > MAX_WEBP_BYTES:
            raise CipsError(
                f"An animated WebP of {frames:,} frames of {height} x {width} is assembled in memory ({needed / 2**30:.1f} GiB, "
                f"limit {MAX_WEBP_BYTES / 2**30:.0f} GiB); write .mp4 (streamed) or fewer or smaller frames."
            )
    if suffix == ".mp4":
        load_ffmpeg()
        if height % 2 or width % 2:
            raise CipsError(f"MP4 (H.264, yuv420p) needs an even width and height, not {height} x {width}.")


def check_video_name(path: Path, overwrite: bool) -> None:
    """The output guard (:func:`cips_deploy.runtime.atomic.guard_outputs`) for a video, before
    the model is loaded: a name the file system holds, an existing folder, no existing file
    unless ``overwrite``; then its format."""
    guard_outputs(path, overwrite=overwrite, probe=True)
    if path.suffix.lower() not in FORMATS:
        raise CipsError(f"The video {path} must be a .webp (animated WebP) or .mp4 file.")


def load_ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise CipsError("MP4 output needs the video extra: pip install 'cips-deploy[video]' (or write .webp).") from None
    return imageio_ffmpeg


def write_video(
    frames: Iterable[np.ndarray],
    path: str | Path,
    *,
    height: int,
    width: int,
    fps: float,
    provenance: dict[str, str] | None = None,
    quality: int = 80,
    lossless: bool = False,
    overwrite: bool = True,
) -> int:
    """Write frames (uint8 [H, W, 3]) as a looping animated WebP or an MP4, atomically; returns the count.

    WebP carries the provenance in an XMP packet, MP4 as its ``comment`` metadata (JSON).
    ``overwrite`` False (no ``--force``): an existing file, or one that appears while the
    frames render, is never replaced (the final rename is a no-clobber link).
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as temporary:
        if path.suffix.lower() == ".webp":
            pictures = [Image.fromarray(frame, mode="RGB") for frame in frames]
            if len(pictures) < 2:
                raise CipsError("An animated WebP needs at least 2 frames.")
            pictures[0].save(
                temporary, format="WEBP", save_all=True, append_images=pictures[1:], duration=round(1000.0 / fps),
                loop=0, quality=quality, lossless=lossless, method=4, xmp=provenance_xmp(provenance).encode("utf-8"),
            )
            return len(pictures)
        ffmpeg = load_ffmpeg()
        comment = json.dumps(provenance or {}, sort_keys=True)
        writer = ffmpeg.write_frames(
            str(temporary), (width, height), fps=fps, codec="libx264", macro_block_size=2, quality=7,
            output_params=["-f", "mp4", "-metadata", f"comment={comment}"],
        )
        writer.send(None)  # start ffmpeg
        count = 0
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
                count += 1
        finally:
            writer.close()
        return count


CIPS_NS = "urn:cips-deploy:provenance:1"


def provenance_xmp(provenance: dict[str, str] | None) -> str:
    """An XMP packet with the provenance as ``cips:`` properties (for WebP, which has no text chunks)."""
    from xml.sax.saxutils import escape

    packet = xmp_packet({})
    body = "".join(f"   <cips:{key.replace('_', '-')}>{escape(value)}</cips:{key.replace('_', '-')}>\n" for key, value in (provenance or {}).items())
    return packet.replace(
        'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/">\n',
        f'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" xmlns:cips="{CIPS_NS}">\n{body}',
    )


def read_webp_provenance(path: str | Path) -> dict[str, str]:
    """The provenance of a WebP written by :func:`write_video`."""
    import xml.etree.ElementTree as ET

    with Image.open(path) as image:
        xmp = image.info.get("xmp", b"")
    text = xmp.decode("utf-8") if isinstance(xmp, bytes) else str(xmp)
    start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    root = ET.fromstring(text[start : end + len("</x:xmpmeta>")])
    prefix = "{" + CIPS_NS + "}"
    return {
        element.tag[len(prefix):].replace("-", "_"): element.text or ""
        for element in root.iter()
        if isinstance(element.tag, str) and element.tag.startswith(prefix)
    }


# --------------------------------------------------------------------------- a whole clip


@dataclass(frozen=True)
class Clip:
    """What :func:`make_video` wrote: ``frames`` frames of ``height x width`` at ``fps``."""

    path: Path
    frames: int
    height: int
    width: int
    topology: str
    mode: str
    fps: float


def make_video(
    model: Any,
    output: str | Path,
    *,
    mode: str = "walk",
    seeds: Iterable[int] = (0, 1, 2, 3),
    frames: int = 48,
    fps: float | None = None,
    duration: float | None = None,
    topology: str | None = None,
    params: dict[str, Any] | None = None,
    ramps: dict[str, tuple[Any, Any]] | None = None,
    height: int = 256,
    width: int | None = None,
    zoom: float = 4.0,
    centre: tuple[float, float] = (0.0, 0.0),
    fov: float = 90.0,
    truncation: float = 1.0,
    chunker: str | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
    quality: int = 80,
    lossless: bool = False,
    registry: Registry | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = True,
    controls: Controls | None = None,
    grid: tuple[int, int] | None = None,
) -> Clip:
    """Render and write one clip, everything the ``video`` command does after parsing its options.

    model: a checkpoint or engine path or a Generator, for the backend ``backend`` (None: the
    one the model file names, :func:`~cips_deploy.runtime.backend_use.choose_backend`), built on
    ``device`` with ``backend_options`` and closed here. ``topology`` defaults to cylinder
    for a cylinder-space model's walk, else flat; ``width`` to :func:`default_width`;
    ``fps`` to 24, or ``frames / duration``. Every check runs before the output's temporary
    file exists, and the cheap ones before the backend is built. ``overwrite`` (``--force``):
    replace an existing output; without it one is refused before any frame is rendered.
    ``controls``: transform, style mixing and class of every frame; ``grid`` (rows, columns):
    a grid of walks (module text), frames ``rows * height`` x ``columns * width``.
    """
    registry = registry or get_registry()
    seeds = tuple(seeds)
    if mode not in MODES:
        raise CipsError(f"Unknown animation mode {mode!r}; choose one of {', '.join(MODES)}.")
    if not isinstance(frames, (int, np.integer)) or isinstance(frames, bool) or frames < 2:
        raise CipsError(f"An animation needs at least 2 frames, not {frames!r}.")
    rate = frame_rate(fps, duration, frames)
    if not (isinstance(fov, (int, float)) and math.isfinite(fov) and 0 < fov <= 360):
        raise CipsError(f"The field of view must be more than 0 and at most 360 degrees, not {fov!r}.")
    params, ramps = dict(params or {}), dict(ramps or {})
    output = Path(output)
    check_video_name(output, overwrite)
    backend = choose_backend(registry, model, backend)  # one name from here on: the provenance says it
    runner = make_backend(registry, backend, model, device, dict(backend_options or {}))
    try:
        space = runner.config.coordinate_space
        if topology is None:
            topology = "cylinder" if mode == "walk" and space == "cylinder" else "flat"
        if width is None:
            width = default_width(mode, topology, height, fov)
        rows, columns = grid or (1, 1)
        check_size(height, width)
        check_size(rows * height, columns * width)
        check_video_output(output, frames, rows * height, columns * width, rate)
        animation = Animation(
            mode=mode, seeds=seeds, frames=frames, topology=topology, params=params, ramps=ramps, zoom=zoom,
            centre=tuple(centre), fov=fov,
        )
        if grid is None:
            check_animation(animation, space, registry)
        provenance = render_provenance(
            model_identity(model), seed=list(seeds), truncation=truncation, topology=topology,
            parameters={**params, **{name: f"{a}:{b}" for name, (a, b) in ramps.items()}}, height=height, width=width,
            backend=backend, animation=mode, frames=frames, fps=rate,
            zoom=zoom if mode == "zoom" else None, centre=list(centre) if mode == "zoom" else None,
            fov=fov if mode == "pan" else None, grid=None if grid is None else f"{rows}x{columns}",
            **(controls.fields() if controls is not None else {}),
        )
        options = dict(truncation=truncation, controls=controls, chunker=chunker, chunk_size=chunk_size, memory_budget=memory_budget)
        if grid is None:
            clip = render_frames(runner, animation, height, width, registry=registry, progress=progress, **options)
        else:
            clip = grid_frames(runner, animation, height, width, grid, registry=registry, progress=progress, **options)
        written = write_video(
            clip, output, height=rows * height, width=columns * width, fps=rate, provenance=provenance, quality=quality, lossless=lossless,
            overwrite=overwrite,
        )
    finally:
        runner.close()
    return Clip(output, written, rows * height, columns * width, topology, mode, rate)


def frame_rate(fps: float | None, duration: float | None, frames: int) -> float:
    """Frames per second from ``fps`` or ``duration`` in seconds (not both; default 24 fps)."""
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
    """``"0.2,-0.1"`` -> (0.2, -0.1): the zoom's centre (u, v)."""
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
