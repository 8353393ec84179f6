"""The built-in chunkers: ``fixed`` (N points), ``rows`` (k image rows) and ``memory`` (a budget).

Whatever the cut, the CPU torch backend gives bitwise the same image (every point's colour
depends on its coordinate and the style alone, and the backend keeps every batch on the
same matrix-product code path); chunking only trades memory against per-chunk overhead.
"""

from __future__ import annotations

import math
from typing import Iterator

from cips_deploy.contracts.chunking import Chunker, ChunkRequest
from cips_deploy.errors import CipsError
from cips_deploy.contracts.hookspecs import hookimpl

DEFAULT_POINTS = 65_536
DEFAULT_ROWS = 64
DEFAULT_BUDGET_MB = 256.0


def even_spans(n_points: int, size: int) -> Iterator[tuple[int, int]]:
    """(0, size), (size, 2 size), ... the last one shorter when size does not divide n_points."""
    for start in range(0, n_points, size):
        yield start, min(start + size, n_points)


class FixedChunker(Chunker):
    name = "fixed"
    description = f"Chunks of --chunk-size points (default {DEFAULT_POINTS:,})."
    settings = ("chunk_size",)

    def spans(self, request: ChunkRequest) -> Iterator[tuple[int, int]]:
        return even_spans(request.n_points, request.chunk_size or DEFAULT_POINTS)


class RowsChunker(Chunker):
    name = "rows"
    description = f"Chunks of --chunk-size whole image rows (default {DEFAULT_ROWS})."
    settings = ("chunk_size",)

    def spans(self, request: ChunkRequest) -> Iterator[tuple[int, int]]:
        if request.row_boundaries is None:
            raise CipsError("The rows chunker needs a topology whose points come in image rows; use --chunker fixed or memory.")
        rows = request.chunk_size or DEFAULT_ROWS
        cuts = [int(cut) for cut in request.row_boundaries[::rows]] + [request.n_points]
        # Rows without any points (possible in sparse layouts) would give empty spans: skip them.
        return ((start, stop) for start, stop in zip(cuts, cuts[1:]) if stop > start)


class MemoryChunker(Chunker):
    name = "memory"
    description = "The largest chunks whose working memory fits --memory-budget MB (default: the backend's choice)."
    settings = ("memory_budget",)

    def spans(self, request: ChunkRequest) -> Iterator[tuple[int, int]]:
        budget = request.memory_budget or request.preferred_memory_budget or DEFAULT_BUDGET_MB
        points = math.floor(budget * 2**20 / request.bytes_per_point)
        if points < 1:
            need = request.bytes_per_point / 2**20
            raise CipsError(
                f"A memory budget of {budget:g} MB cannot hold one point of this model ({request.bytes_per_point:,} "
                f"bytes); give at least {need:.4f} MB."
            )
        return even_spans(request.n_points, points)


@hookimpl
def register_chunkers(register):
    register(FixedChunker())
    register(RowsChunker())
    register(MemoryChunker())
