"""Chunked sequential synthesis: topology -> chunker -> backend -> image.

    image = cips_deploy.render(generator, "cylinder", height=256, width=1024, seed=3)

One render: the topology turns the request into a :class:`~cips_deploy.contracts.topology.Layout`;
the seed gives z (:func:`cips_deploy.runtime.seeds.seed_latent`), the backend maps it to w; the
chunker cuts the layout's points into spans; for each span the points are fetched and
checked, the backend turns them into colours and the layout takes them back; the layout
finally assembles the image. Only one chunk of points, styles and activations exists at a
time, so memory follows the chunk, not the image (the uint8 image itself excepted). Points,
styles and colours are numpy arrays: rendering needs torch only for a torch backend.

This module is the entry point; the parts have their own modules: the chunk loop
(:mod:`.chunk_loop`), request checks (:mod:`.render_request`), plugin-call guarding
(:mod:`.plugin_calls`), seeds (:mod:`.seeds`), styles and their blending (:mod:`.styles`),
arrays across the backend boundary (:mod:`.backend_arrays`), constructing and closing
backends (:mod:`.backend_use`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cips_deploy.runtime.backend_arrays import inference_mode
from cips_deploy.runtime.backend_use import backend_in_use, make_backend
from cips_deploy.runtime.chunk_loop import Progress, synthesize
from cips_deploy.contracts.chunking import ChunkRequest, checked_spans
from cips_deploy.contracts.limits import check_in_memory
from cips_deploy.runtime.plugin_calls import call, guarded_iter
from cips_deploy.runtime.plugin_manager import Registry, get_registry
from cips_deploy.runtime.render_request import MAX_SEED, check_chunk_settings, check_seed, check_size, check_truncation, checked_count, checked_image
from cips_deploy.runtime.render_setup import Controls, prepare
from cips_deploy.runtime.styles import latent
from cips_deploy.contracts.topology import resolve_parameters

# Besides the renderer, callers import these helpers from here (their homes are named above).
__all__ = ["MAX_SEED", "Progress", "Rendering", "check_seed", "check_size", "latent", "make_backend", "render",
           "render_detailed", "render_pil"]


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
    backend: str | None = None,
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
    blend_seed: int | None = None,
    style: Any = None,
    transform: Any = None,
    mix_seed: int | None = None,
    mix_from: int | None = None,
    class_index: int | None = None,
    controls: Controls | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    **topology_params: Any,
) -> Rendering:
    """Render one image and say what it took.

    model:           a Generator, a checkpoint path, or a constructed Backend (reused, not closed).
    topology:        a registered topology's name; ``topology_params`` are its parameters.
    seed:            z = ``np.random.RandomState(seed).randn(1, Z)`` (:func:`cips_deploy.runtime.seeds.seed_latent`),
                     0 to 2**32 - 1, the same for every family and backend.
    chunker:         ``fixed``, ``rows``, ``memory`` or a plugin's; default ``fixed`` when
                     ``chunk_size`` is given, else ``memory``.
    chunk_size:      points (``fixed``) or image rows (``rows``) per chunk.
    memory_budget:   MB of working memory per chunk (``memory``).
    backend, device: the backend that runs synthesis, constructed as
                     ``Backend(model, device=device, **backend_options)``; None: the one the
                     model file names (``.onnx``: onnxruntime), else torch
                     (:func:`cips_deploy.runtime.backend_use.choose_backend`).
    blend_seed:      a second seed for spatially varying styles (see the module text).
    style:           a ready style w ``[1, S]`` (numpy or torch) to render instead of the seed's
                     (a latent walk interpolates styles; a projection), or per-layer styles
                     ``[1, L, S]`` (``L = config.family.style_layers(config)``); ``seed`` then only
                     names the render, and truncation does not apply to it.
    transform:       a camera move of every point the topology makes, before the backend: a
                     :class:`~cips_deploy.runtime.coords.CoordinateTransform` or
                     ``{"translate": (tx, ty), "rotate": degrees, "scale": s}`` (docs/rendering.md).
    mix_seed, mix_from: style mixing: ``mix_seed``'s w for the style inputs ``mix_from`` and later
                     (per-layer styles: the backend must run them, ``Backend.run_layers``).
    class_index:     the class of a class-conditional model.
    controls:        all four at once (:class:`~cips_deploy.runtime.render_setup.Controls`, what the
                     commands build), instead of ``transform`` ... ``class_index``.
    progress:        called as ``progress(points_done, points_total)`` after each chunk.
    """
    registry = registry or get_registry()
    check_size(height, width)
    check_seed(seed, "seed")
    if blend_seed is not None:
        check_seed(blend_seed, "blend seed")
    check_truncation(truncation)
    topology_entry = registry.get("topology", topology)
    check_in_memory(height, width, topology_entry)
    chunker_entry = registry.get("chunker", chunker or ("fixed" if chunk_size is not None else "memory"))
    check_chunk_settings(chunker_entry, chunk_size, memory_budget)
    params = resolve_parameters(topology_entry.item, topology_params, topology_entry.name)
    if controls is None:
        controls = Controls.make(transform, mix_seed, mix_from, class_index)

    with backend_in_use(registry, model, backend, device, backend_options) as (runner, backend_entry):
        layout, w, w_blend = prepare(
            runner, backend_entry, topology_entry, height, width, params, seed, truncation, blend_seed, style, controls
        )
        n_points = checked_count(layout, topology_entry)
        with inference_mode():  # only when torch is loaded: a torch backend's tensors need no autograd
            chunk_request = ChunkRequest(
                n_points=n_points,
                chunk_size=chunk_size,
                memory_budget=memory_budget,
                bytes_per_point=runner.bytes_per_point(per_point_style=w_blend is not None),
                row_boundaries=call(topology_entry, "row_boundaries", layout.row_boundaries),
                preferred_memory_budget=call(backend_entry, "preferred_memory_budget", runner.preferred_memory_budget),
            )
            spans = call(chunker_entry, "spans", chunker_entry.item.spans, chunk_request)
            spans = checked_spans(guarded_iter(spans, chunker_entry), n_points, chunker_entry.label)
            chunks = synthesize(layout, spans, n_points, runner, w, w_blend, topology_entry, backend_entry, progress)
            image = checked_image(call(topology_entry, "image", layout.image), height, width, topology_entry)
            report = call(topology_entry, "report", layout.report)
    return Rendering(image, topology, seed, n_points, chunks, dict(report or {}))
