"""Chunked sequential synthesis: topology -> chunker -> backend -> image.

    image = cips_deploy.render(generator, "cylinder", height=256, width=1024, seed=3)

One render: the topology turns the request into a :class:`~cips_deploy.topology.Layout`;
the seed gives z (``torch.Generator().manual_seed(seed)``), the backend maps it to w; the
chunker cuts the layout's points into spans; for each span the points are fetched and
checked, the backend turns them into colours and the layout takes them back; the layout
finally assembles the image. Only one chunk of points, styles and activations exists at a
time, so memory follows the chunk, not the image (the uint8 image itself excepted).

Spatially varying styles (``blend_seed``): each point gets its own
``w = lerp(w_seed, w_blend, (1 - cos(pi * u)) / 2)``: the seed's style at u = 0, the blend
seed's at u = +-1, smooth in between and periodic in u with period 2, so a cylinder
panorama stays seamless.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .backend import Backend, resolve_options, run_chunks
from .chunking import ChunkRequest, checked_spans
from .errors import CipsError
from .limits import check_memory
from .plugin_manager import Registered, Registry, get_registry, owner_of
from .topology import TopologyRequest, check_points, resolve_parameters

MAX_SIDE = 1 << 20
# The largest image assembled in memory (e.g. 16384 x 16384 or 32768 x 8192: 768 MiB of
# uint8 pixels, about twice that while the PNG is encoded); larger ones stream to disk.
MAX_IN_MEMORY_PIXELS = 1 << 28
MAX_SEED = (1 << 63) - 1

Progress = Callable[[int, int], None]


@dataclass
class Rendering:
    """A finished render: the image and what it took."""

    image: np.ndarray  # uint8 [H, W, 3]
    topology: str
    seed: int
    points_evaluated: int
    chunks: int
    report: dict[str, Any] = field(default_factory=dict)


def render(model: Any, topology: str = "flat", height: int = 256, width: int = 256, **options: Any) -> np.ndarray:
    """Render one image, uint8 ``[height, width, 3]``; takes every argument of :func:`render_detailed`."""
    return render_detailed(model, topology, height, width, **options).image


def render_pil(model: Any, topology: str = "flat", height: int = 256, width: int = 256, **kwargs: Any) -> Image.Image:
    """:func:`render` as a PIL image."""
    return Image.fromarray(render(model, topology, height, width, **kwargs), mode="RGB")


def render_detailed(
    model: Any,
    topology: str = "flat",
    height: int = 256,
    width: int = 256,
    *,
    seed: int = 0,
    truncation: float = 1.0,
    chunker: str | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    backend: str = "torch",
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
    blend_seed: int | None = None,
    style: Tensor | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    **topology_params: Any,
) -> Rendering:
    """Render one image and say what it took.

    model:           a Generator, a checkpoint path, or a constructed Backend (reused, not closed).
    topology:        a registered topology's name; ``topology_params`` are its parameters.
    seed:            z by the family's convention (``Generator.seed_latent``; CIPS: torch, CREPS: numpy).
    chunker:         ``fixed``, ``rows``, ``memory`` or a plugin's; default ``fixed`` when
                     ``chunk_size`` is given, else ``memory``.
    chunk_size:      points (``fixed``) or image rows (``rows``) per chunk.
    memory_budget:   MB of working memory per chunk (``memory``).
    backend, device: the backend that runs synthesis, constructed as
                     ``Backend(model, device=device, **backend_options)``.
    blend_seed:      a second seed for spatially varying styles (see the module text).
    style:           a ready style w [1, S] to render instead of the seed's (a latent walk
                     interpolates styles); ``seed`` then only names the render.
    progress:        called as ``progress(points_done, points_total)`` after each chunk.
    """
    registry = registry or get_registry()
    check_size(height, width)
    check_seed(seed, "seed")
    if blend_seed is not None:
        check_seed(blend_seed, "blend seed")
    if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not math.isfinite(truncation):
        raise CipsError(f"The truncation must be a finite number, not {truncation!r}.")
    topology_entry = registry.get("topology", topology)
    check_in_memory(height, width, topology_entry)
    working = getattr(topology_entry.item, "working_bytes_per_pixel", 24)
    check_memory(height * width * (3 + int(working)), f"A {height:,} x {width:,} {topology} render")
    chunker_entry = registry.get("chunker", chunker or ("fixed" if chunk_size is not None else "memory"))
    check_chunk_settings(chunker_entry, chunk_size, memory_budget)
    params = resolve_parameters(topology_entry.item, topology_params)

    owns_backend = not isinstance(model, Backend)
    if owns_backend:
        backend_entry = registry.get("backend", backend)
        runner = make_backend(registry, backend, model, device, backend_options or {})
    else:
        runner = model
        # A constructed backend is named after the plugin that registered its class.
        backend_entry = owner_of(registry, "backend", model) or Registered(
            "backend", getattr(model, "name", type(model).__name__), model, "given by the caller"
        )
    try:
        config = runner.config
        if config.coordinate_space not in topology_entry.item.coordinate_spaces:
            raise CipsError(topology_entry.item.unsupported_space(config.coordinate_space))
        request = TopologyRequest(height, width, config.coordinate_space, params)
        layout = _call(topology_entry, "layout", topology_entry.item.layout, request)
        n_points = _checked_count(layout, topology_entry)
        with torch.inference_mode():
            if style is None:
                w = _call(backend_entry, "map", runner.map, latent(seed, config), truncation)  # [1, S]
            else:
                w = check_style(style, config.style_dim)
            w_blend = None
            if blend_seed is not None:
                w_blend = _call(backend_entry, "map", runner.map, latent(blend_seed, config), truncation)
            chunk_request = ChunkRequest(
                n_points=n_points,
                chunk_size=chunk_size,
                memory_budget=memory_budget,
                bytes_per_point=runner.bytes_per_point(per_point_style=w_blend is not None),
                row_boundaries=_call(topology_entry, "row_boundaries", layout.row_boundaries),
                preferred_memory_budget=_call(backend_entry, "preferred_memory_budget", runner.preferred_memory_budget),
            )
            spans = _call(chunker_entry, "spans", chunker_entry.item.spans, chunk_request)
            spans = checked_spans(_guarded_iter(spans, chunker_entry), n_points, chunker_entry.label)
            chunks = _synthesize(layout, spans, n_points, runner, w, w_blend, topology_entry, backend_entry, progress)
            image = _checked_image(_call(topology_entry, "image", layout.image), height, width, topology_entry)
            report = _call(topology_entry, "report", layout.report)
    finally:
        if owns_backend:
            runner.close()
    return Rendering(image, topology, seed, n_points, chunks, dict(report or {}))


def _synthesize(
    layout: Any,
    spans: Iterator[tuple[int, int]],
    n_points: int,
    runner: Backend,
    w: Tensor,
    w_blend: Tensor | None,
    topology: Registered,
    backend: Registered,
    progress: Progress | None,
) -> int:
    """The chunk loop: points -> (checked) coords [1, n, 2] -> rgb [1, n, 3] -> layout. Returns the chunk count.

    Chunks go to the backend as a lazy stream (``run_many``), so a backend may keep a few in
    flight; colours come back in chunk order and are accepted one by one.
    """
    chunks = 0
    if progress is not None:
        progress(0, n_points)
    sent: deque[tuple[int, int]] = deque()  # spans given to the backend, oldest first

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start, stop in spans:
            points = _call(topology, "points", layout.points, start, stop)
            coords = check_points(points, stop - start, topology.label)[None]  # [1, n, 2]
            sent.append((start, stop))
            yield coords, (w if w_blend is None else blend_styles(w, w_blend, coords))  # w [1, S] or [1, n, S]

    results = _call(backend, "run", run_chunks, runner, batches())
    for rgb in _guarded_iter(results, backend, "run"):
        if not sent:
            raise CipsError(f"{backend.label} returned more colour chunks than it was given.")
        start, stop = sent.popleft()
        if tuple(rgb.shape) != (1, stop - start, 3):
            raise CipsError(f"{backend.label} returned colours of shape {list(rgb.shape)} for {stop - start} points.")
        if not bool(torch.isfinite(rgb).all()):  # NaN would become black pixels without a word
            raise CipsError(
                f"{backend.label} computed NaN or infinite colours (points {start:,} to {stop:,}): the model or "
                "its inputs overflow; nothing was written."
            )
        _call(topology, "accept", layout.accept, start, rgb[0])
        chunks += 1
        if progress is not None:
            progress(stop, n_points)
    return chunks


def latent(seed: int, config: Any) -> Tensor:
    """z [1, S] for ``seed`` by the family's convention (``Generator.seed_latent``): the same
    numbers on every machine and every backend."""
    from .generator import family_class

    return family_class(config.arch).seed_latent(seed, config.style_dim)


def blend_styles(w: Tensor, w_blend: Tensor, coords: Tensor) -> Tensor:
    """Per-point styles [1, n, S] from w, w_blend [1, S] and coords [1, n, 2]: periodic in u."""
    t = (1.0 - torch.cos(math.pi * coords[..., 0:1])) / 2.0  # [1, n, 1]: 0 at u = 0, 1 at u = +-1
    return w[:, None, :] + t * (w_blend - w)[:, None, :]


def make_backend(registry: Registry, name: str, model: Any, device: str, options: dict[str, Any]) -> Backend:
    """Construct the registered backend ``name`` for ``model``; plugin failures are named."""
    entry = registry.get("backend", name)
    return _call(entry, "construction", entry.item, model, device=device, **resolve_options(entry.item, options))


def check_size(height: Any, width: Any) -> None:
    """Positive integer sides no longer than MAX_SIDE."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise CipsError(f"The image {name} must be a positive whole number of pixels, not {value!r}.")
        if value > MAX_SIDE:
            raise CipsError(f"The image {name} of {value:,} pixels exceeds the limit of {MAX_SIDE:,}.")


def check_in_memory(height: int, width: int, topology: Registered | None = None) -> None:
    """An in-memory render fits: at most MAX_IN_MEMORY_PIXELS, and its working memory (the
    topology's ``memory_per_pixel`` times the pixels) within the memory available now.

    Larger images stream to disk tile by tile (cips_deploy.gigapixel), which the sentence says.
    """
    pixels = int(height) * int(width)
    per_pixel = float(getattr(topology.item, "memory_per_pixel", 8.0)) if topology is not None else 8.0
    needed = pixels * per_pixel
    available = _available_memory()
    streaming = "render it to a streaming format instead, a tiled BigTIFF (-o out.tif) or a Deep Zoom pyramid (-o out.dzi)"
    if pixels > MAX_IN_MEMORY_PIXELS:
        raise CipsError(
            f"A {height:,} x {width:,} image ({pixels / 1e6:,.0f} megapixels) is over the in-memory limit of "
            f"{MAX_IN_MEMORY_PIXELS / 1e6:,.0f} megapixels; {streaming}."
        )
    if available is not None and needed > available:
        raise CipsError(
            f"A {height:,} x {width:,} image rendered in memory needs about {needed / 2**30:.1f} GiB, more than the "
            f"{available / 2**30:.1f} GiB of memory available; {streaming}."
        )


def check_seed(seed: Any, what: str) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise CipsError(f"The {what} must be a whole number from 0 to 2**63 - 1, not {seed!r}.")


def check_style(style: Any, style_dim: int) -> Tensor:
    """A caller's style as float32 [1, style_dim] on the host, or a CipsError."""
    if not isinstance(style, Tensor) or tuple(style.shape) != (1, style_dim) or not style.is_floating_point():
        raise CipsError(f"A style must be a float tensor of shape [1, {style_dim}], not {getattr(style, 'shape', type(style).__name__)}.")
    if not bool(torch.isfinite(style).all()):
        raise CipsError("A style has NaN or infinite values.")
    return style.detach().to("cpu", torch.float32)


def check_chunk_settings(chunker: Registered, chunk_size: Any, memory_budget: Any) -> None:
    """The chunk settings are valid numbers and are ones the chosen chunker reads."""
    settings = tuple(getattr(chunker.item, "settings", ()))
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise CipsError(f"The chunk size must be a positive whole number, not {chunk_size!r}.")
        if "chunk_size" not in settings:
            raise CipsError(f"The {chunker.name} chunker takes no chunk size; use --chunker fixed or rows with --chunk-size.")
    if memory_budget is not None:
        if not isinstance(memory_budget, (int, float)) or isinstance(memory_budget, bool) or not (
            math.isfinite(memory_budget) and memory_budget > 0
        ):
            raise CipsError(f"The memory budget must be a positive number of MB, not {memory_budget!r}.")
        if "memory_budget" not in settings:
            raise CipsError(f"The {chunker.name} chunker takes no memory budget; use --chunker memory with --memory-budget.")


# --------------------------------------------------------------------------- internals


def _call(entry: Registered, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call plugin code. A CipsError passes (it is the plugin's own clear message); any other
    exception becomes one that names the plugin, so a plugin's bug reads as whose it is."""
    try:
        return function(*args, **kwargs)
    except CipsError:
        raise
    except (Exception, SystemExit) as error:  # a plugin's sys.exit() is its failure, not the user's exit
        raise CipsError(f"{entry.label} failed in {what} ({_describe(error)}).") from error


def _guarded_iter(spans: Any, entry: Registered, what: str = "spans") -> Iterator[Any]:
    """Iterate a plugin's iterable (often a generator: its code runs here), naming it on failure."""
    iterator = _call(entry, what, iter, spans)
    while True:
        try:
            span = next(iterator)
        except StopIteration:
            return
        except CipsError:
            raise
        except Exception as error:
            raise CipsError(f"{entry.label} failed in {what} ({_describe(error)}).") from error
        yield span


def _describe(error: BaseException) -> str:
    """``ValueError: first line of the message``."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _checked_count(layout: Any, entry: Registered) -> int:
    count = getattr(layout, "n_points", None)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        raise CipsError(f"{entry.label} returned a layout without a valid n_points (got {count!r}).")
    return int(count)


def _checked_image(image: Any, height: int, width: int, entry: Registered) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != (height, width, 3):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise CipsError(
            f"{entry.label} assembled an image of shape {list(shape) if shape is not None else None} and type {dtype}; "
            f"expected uint8 [{height}, {width}, 3]."
        )
    return image


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux MemAvailable), else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
