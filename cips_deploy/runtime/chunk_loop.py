"""The chunk loop: spans of a layout's points -> backend -> colours back into the layout.

Shared by the in-memory renderer (:func:`cips_deploy.runtime.render.render_detailed`) and the
streamed one (:mod:`cips_deploy.runtime.gigapixel`, one cell at a time). Only one chunk of points,
styles and activations exists at a time, so memory follows the chunk, not the image.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator

import numpy as np

from cips_deploy.contracts.backend import Backend, run_chunks
from cips_deploy.contracts.topology import check_points
from cips_deploy.errors import CipsError
from cips_deploy.runtime.backend_arrays import from_backend, to_backend
from cips_deploy.runtime.plugin_calls import call, guarded_iter
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.styles import blend_styles

Progress = Callable[[int, int], None]


def synthesize(
    layout: Any,
    spans: Iterator[tuple[int, int]],
    n_points: int,
    runner: Backend,
    w: np.ndarray,
    w_blend: np.ndarray | None,
    topology: Registered,
    backend: Registered,
    progress: Progress | None,
) -> int:
    """The chunk loop: points -> (checked) coords float32 ``[1, n, 2]`` -> rgb float32 ``[1, n, 3]``
    -> layout. ``w``, ``w_blend``: float32 ``[1, S]``; or ``w`` per-layer styles ``[1, L, S]``
    (no blend), run through the backend's ``run_layers``. Returns the chunk count.

    Chunks go to the backend as a lazy stream (``run_many``), so a backend may keep a few in
    flight; colours come back in chunk order and are accepted one by one.
    """
    chunks = 0
    if progress is not None:
        progress(0, n_points)
    sent: deque[tuple[int, int]] = deque()  # spans given to the backend, oldest first

    def batches() -> Iterator[tuple[Any, Any]]:
        for start, stop in spans:
            points = call(topology, "points", layout.points, start, stop)
            coords = check_points(points, stop - start, topology.label)[None]  # [1, n, 2]
            sent.append((start, stop))
            styles = w if w_blend is None else blend_styles(w, w_blend, coords)  # [1, S] or [1, n, S]
            yield to_backend(runner, coords, styles)

    if w.ndim == 3:  # per-layer styles (style mixing, a per-layer --w): one call per chunk
        results = call(backend, "run", lambda: (runner.run_layers(coords, ws) for coords, ws in batches()))
    else:
        results = call(backend, "run", run_chunks, runner, batches())
    for rgb in guarded_iter(results, backend, "run"):
        if not sent:
            raise CipsError(f"{backend.label} returned more colour chunks than it was given.")
        start, stop = sent.popleft()
        rgb = from_backend(rgb, backend.label, "run")
        if rgb.shape != (1, stop - start, 3):
            raise CipsError(f"{backend.label} returned colours of shape {list(rgb.shape)} for {stop - start} points.")
        if not np.isfinite(rgb).all():  # NaN would become black pixels without a word
            raise CipsError(
                f"{backend.label} computed NaN or infinite colours (points {start:,} to {stop:,}): the model or "
                "its inputs overflow; nothing was written."
            )
        call(topology, "accept", layout.accept, start, rgb[0])
        chunks += 1
        if progress is not None:
            progress(stop, n_points)
    return chunks
