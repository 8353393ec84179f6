"""One cell of a streamed render: its points through chunker and backend to uint8 pixels.

A cell is a rectangle ``(top, bottom, left, right)`` of the image on the output format's
tile grid. :class:`CellRenderer` renders the cells of one :class:`Job` with one backend:
in the parent for a serial render, in each process for ``--workers``
(:mod:`cips_deploy.runtime.cell_workers`). The layout gives the cell's points
(:meth:`~cips_deploy.contracts.topology.Layout.rectangle_points`), the chunker cuts them, the backend
colours them (the renderer's own chunk loop, :func:`cips_deploy.runtime.chunk_loop.synthesize`) and
the layout turns the colours into pixels; memory follows the cell and the chunk, never the
image.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cips_deploy.contracts.backend import Backend
from cips_deploy.runtime.backend_arrays import inference_mode
from cips_deploy.runtime.backend_use import backend_in_use
from cips_deploy.runtime.chunk_loop import Progress, synthesize
from cips_deploy.contracts.chunking import ChunkRequest, checked_spans
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_calls import call, guarded_iter
from cips_deploy.runtime.plugin_manager import Registry
from cips_deploy.runtime.render_setup import Controls, prepare


@dataclass(frozen=True)
class Job:
    """What decides a cell's pixels, picklable so that worker processes can rebuild it."""

    model: Any  # a Generator or a checkpoint path (each worker builds its own backend)
    topology: str
    params: dict[str, Any]
    height: int
    width: int
    seed: int
    truncation: float
    blend_seed: int | None
    chunker: str
    chunk_size: int | None
    memory_budget: float | None
    backend: str | None  # the registered backend's name (None only with a constructed backend)
    device: str
    backend_options: dict[str, Any] = field(default_factory=dict)
    controls: Controls = field(default_factory=Controls)  # transform, style mixing, class, a saved style


class CellRenderer:
    """Renders cells of one :class:`Job` with one backend: one in the parent (serial or not),
    one in each spawned worker process."""

    def __init__(self, job: Job, registry: Registry, runner: Backend | None = None) -> None:
        self.job = job
        self.topology = registry.get("topology", job.topology)
        self.chunker = registry.get("chunker", job.chunker)
        self._backend = contextlib.ExitStack()  # closes the backend if it was built here
        runner, self.backend_entry = self._backend.enter_context(
            backend_in_use(registry, job.model if runner is None else runner, job.backend, job.device, dict(job.backend_options))
        )
        self.runner = runner
        try:
            self.layout, self.w, self.w_blend = prepare(
                runner, self.backend_entry, self.topology, job.height, job.width, job.params, job.seed, job.truncation,
                job.blend_seed, controls=job.controls,
            )
            if not getattr(self.layout, "pixel_grid", False):
                raise CipsError(
                    f"The {job.topology} topology cannot stream its output (its image needs every sample at once); "
                    "render it in memory, as a PNG."
                )
            if (getattr(self.layout, "height", None), getattr(self.layout, "width", None)) != (job.height, job.width):
                raise CipsError(f"{self.topology.label} returned a layout of another size than {job.height} x {job.width}.")
            self.bytes_per_point = runner.bytes_per_point(per_point_style=self.w_blend is not None)
        except BaseException:
            self.close()
            raise

    def render(self, cell: tuple[int, int, int, int], progress: Progress | None = None) -> np.ndarray:
        """The pixels of one cell ``(top, bottom, left, right)``: uint8 ``[bottom - top, right - left, 3]``."""
        top, bottom, left, right = cell
        rows, columns = bottom - top, right - left
        n_points = rows * columns
        points = call(self.topology, "points", self.layout.rectangle_points, top, bottom, left, right)
        if len(points) != n_points:
            raise CipsError(f"{self.topology.label} returned {len(points)} points for a {rows} x {columns} rectangle.")
        buffer = _CellBuffer(points, n_points)
        request = ChunkRequest(
            n_points=n_points,
            chunk_size=self.job.chunk_size,
            memory_budget=self.job.memory_budget,
            bytes_per_point=self.bytes_per_point,
            row_boundaries=np.arange(rows + 1, dtype=np.int64) * columns,
            # Asked per cell: a backend's choice may follow the thread count, which workers set.
            preferred_memory_budget=call(self.backend_entry, "preferred_memory_budget", self.runner.preferred_memory_budget),
        )
        spans = call(self.chunker, "spans", self.chunker.item.spans, request)
        spans = checked_spans(guarded_iter(spans, self.chunker), n_points, self.chunker.label)
        with inference_mode():
            synthesize(buffer, spans, n_points, self.runner, self.w, self.w_blend, self.topology, self.backend_entry, progress)
        pixels = call(self.topology, "rectangle_pixels", self.layout.rectangle_pixels, buffer.rgb, top, bottom, left, right)
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.shape != (rows, columns, 3):
            raise CipsError(f"{self.topology.label} assembled a rectangle that is not uint8 [{rows}, {columns}, 3].")
        return pixels

    def close(self) -> None:
        self._backend.close()
        self.runner = None


class _CellBuffer:
    """The layout interface the chunk loop needs, over one cell: its points ``[n, 2]`` and
    a float32 ``[n, 3]`` buffer for their colours."""

    def __init__(self, points: np.ndarray, n_points: int) -> None:
        self._points = points  # [n, 2], as the layout's rectangle_points gave them (check_points checks each chunk)
        self.rgb = np.empty((n_points, 3), dtype=np.float32)

    def points(self, start: int, stop: int) -> np.ndarray:
        return self._points[start:stop]

    def accept(self, start: int, rgb: np.ndarray) -> None:
        self.rgb[start : start + len(rgb)] = rgb
