"""The chunk loop: spans of a layout's points -> backend -> colours back into the layout.

Shared by the in-memory renderer (:func:`cips_deploy.runtime.render.render_detailed`) and the
streamed one (:mod:`cips_deploy.runtime.gigapixel`, one cell at a time). Only one chunk of points,
styles and activations exists at a time, so memory follows the chunk, not the image.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from cips_deploy.contracts.backend import Backend, run_chunks
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_calls import call, guarded_iter
from cips_deploy.runtime.plugin_manager import Registered
from cips_deploy.runtime.styles import blend_styles
from cips_deploy.contracts.topology import check_points

Progress = Callable[[int, int], None]


def synthesize(
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
            points = call(topology, "points", layout.points, start, stop)
            coords = check_points(points, stop - start, topology.label)[None]  # [1, n, 2]
            sent.append((start, stop))
            yield coords, (w if w_blend is None else blend_styles(w, w_blend, coords))  # w [1, S] or [1, n, S]

    results = call(backend, "run", run_chunks, runner, batches())
    for rgb in guarded_iter(results, backend, "run"):
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
        call(topology, "accept", layout.accept, start, rgb[0])
        chunks += 1
        if progress is not None:
            progress(stop, n_points)
    return chunks
