"""What a chunker is: it cuts the N sample points of a render into consecutive batches.

A :class:`Chunker` returns ``(start, stop)`` spans that cover ``0 .. n_points`` in order.
It decides from a :class:`ChunkRequest`: the user's ``chunk_size`` / ``memory_budget``
(``settings`` names the ones it reads, so a renderer can reject the others), the backend's
bytes per point, and where image rows start (for chunkers that cut at row boundaries).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterable, Iterator

import numpy as np

from cips_deploy.errors import CipsError


@dataclass(frozen=True)
class ChunkRequest:
    """What a chunker may base its cut on.

    n_points:        points in the layout.
    chunk_size:      the user's ``--chunk-size`` (meaning is the chunker's), or None.
    memory_budget:   the user's ``--memory-budget`` in MB (2**20 bytes), or None.
    bytes_per_point: renderer working memory per point of a chunk (activations included).
    row_boundaries:  int64 [rows + 1], where image rows start in the point order, or None.
    preferred_memory_budget: the backend's choice of MB per chunk, for when the user gives none.
    """

    n_points: int
    chunk_size: int | None = None
    memory_budget: float | None = None
    bytes_per_point: int = 0
    row_boundaries: np.ndarray | None = None
    preferred_memory_budget: float | None = None


class Chunker(ABC):
    """Base class of chunking strategies; plugins subclass it and register an instance."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Which of the request's user settings ("chunk_size", "memory_budget") this chunker reads.
    settings: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def spans(self, request: ChunkRequest) -> Iterable[tuple[int, int]]:
        """Consecutive ``(start, stop)`` spans covering ``0 .. request.n_points``."""


def checked_spans(spans: Iterable[tuple[int, int]], n_points: int, source: str) -> Iterator[tuple[int, int]]:
    """Pass ``spans`` through, raising a CipsError naming ``source`` at the first bad one."""
    position = 0
    for span in spans:
        try:
            start, stop = (int(bound) for bound in span)
        except (TypeError, ValueError):
            raise CipsError(f"{source} produced {span!r} instead of a (start, stop) span.") from None
        if start != position:
            raise CipsError(f"{source} produced the span ({start}, {stop}), which does not start where the last one ended ({position}).")
        if stop <= start:
            raise CipsError(f"{source} produced the empty or reversed span ({start}, {stop}).")
        if stop > n_points:
            raise CipsError(f"{source} produced the span ({start}, {stop}), which runs past the last point ({n_points}).")
        position = stop
        yield start, stop
    if position != n_points:
        raise CipsError(f"{source} stopped at point {position} of {n_points}.")
