"""Grid rendering through a line-factored model's line and compose engines (any runtime), in numpy.

:class:`GridRenderer` does with engines what the torch backend's line cache
(:mod:`cips_deploy.plugins.line_cache`) does with the torch model: each distinct row and
column value of a grid layout goes through the line engine once per image and style (in
padded groups), every chunk composes its block of rows x columns through the compose
engine, and chunks whose points share too few rows and columns (rotated, foveated,
scattered layouts) go to the per-point engine in bounded batches. Memory follows the chunk
plus the bounded line tables, not the image. Host numpy arrays throughout, so the
torch-free runtime renders CREPS grids as fast as the torch fast path's scheme allows.

A runtime supplies :class:`GridEngines`, every array host float32:
``lines(v [B, H], u [B, W], w [B, S]) -> row_lines [B, H, F], column_lines [B, W, F]``,
``compose(row_lines [B, H, F], column_lines [B, W, F], w [B, S]) -> rgb [B, H W, 3]`` (row-major),
``per_point(coords [B, N, 2], w [B, S]) -> rgb [B, N, 3]``, and ``features`` (F).

Chunk invariance, as in the line cache: values are keyed exactly (float32 equality), new
values go through the line engine in groups padded to a multiple of ``pad // line_slots``
values (the other axis gets one throw-away value), and compose blocks are padded to a
multiple of :data:`PAD_COLUMNS` columns; so a pixel's value never depends on the chunking.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.contracts.families import family_of

# Compose blocks are padded to a multiple of this many columns (repeating the last one), so
# the engine's matrix products see row counts that are multiples of 64, as for points.
PAD_COLUMNS = 64
# Values per line-engine call at most (the line cache's group; TensorRT's line plans are built for it).
GROUP_VALUES = 64


class GridEngines(Protocol):
    features: int

    def lines(self, v: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def compose(self, rows: np.ndarray, columns: np.ndarray, w: np.ndarray) -> np.ndarray: ...

    def per_point(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray: ...


def compose_floats_per_point(config: GeneratorConfig) -> int:
    """Peak floats per point of composing a pixel from cached lines: the family's figure (no framework)."""
    return family_of(config.arch).compose_floats_per_point(config)


class GridRenderer:
    """``synthesize(coords [B, N, 2], w [B, S]) -> rgb [B, N, 3]`` through grid engines (``w``
    may be per-layer styles [B, L, S] where the engines take them: ``export --layer-styles``).

    ``max_bytes`` bounds the line tables, ``point_batch`` (a multiple of ``pad``) the
    per-point engine's batches; ``coords`` must hold the same points in every sample. A chunk
    whose block of distinct rows x columns is much larger than the chunk (a rotated or foveated
    grid) goes to the per-point engine: the compose engine only composes whole blocks.
    """

    def __init__(self, engines: GridEngines, config: GeneratorConfig, *, max_bytes: int, pad: int, point_batch: int) -> None:
        self.engines = engines
        self.max_bytes = max_bytes
        self.point_batch = point_batch
        self.features = int(engines.features)
        # New values are evaluated in groups of a multiple of ``values_pad`` values: a multiple
        # of ``pad`` rows of line products (the torch backend's rule for chunk invariance).
        self.values_pad = max(1, pad // family_of(config.arch).line_slots(config))
        self.group = max(self.values_pad, GROUP_VALUES // self.values_pad * self.values_pad)
        self.w: np.ndarray | None = None
        self.axes: dict[str, _AxisTable] = {}

    @property
    def nbytes(self) -> int:
        """Bytes the cached lines occupy now (allocated capacity)."""
        return sum(table.nbytes for table in self.axes.values())

    def synthesize(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2] (the same points in every sample), w [B, S] -> rgb [B, N, 3], float32.

        A chunk whose points share too few rows and columns for lines to pay (scattered
        points, a rotated grid: about 2N distinct values), or whose block of rows x columns
        would be mostly pixels nobody asked for, takes the per-point path.
        """
        points = coords[0]
        n_points = points.shape[0]
        v_values, row_of_point = np.unique(points[:, 1], return_inverse=True)  # sorted
        u_values, column_of_point = np.unique(points[:, 0], return_inverse=True)
        if v_values.size + u_values.size > 1.5 * n_points or v_values.size * u_values.size > 3 * n_points:
            return self.per_point(coords, w)
        if self.w is None or self.w.shape != w.shape or not np.array_equal(self.w, w):
            self.w = w.copy()  # a new style: every cached line belonged to the old one
            self.axes = {"row": _AxisTable(), "column": _AxisTable()}
        self._ensure(v_values, u_values)
        rows = self.axes["row"].lines_of(v_values)  # [B, h, F]
        columns = self.axes["column"].lines_of(u_values)  # [B, w, F]
        rgb = self._compose_block(rows, columns)  # [B, h * w, 3]
        index = row_of_point.reshape(-1) * u_values.size + column_of_point.reshape(-1)
        if index.size == rgb.shape[1] and np.array_equal(index, np.arange(index.size)):
            return rgb  # the chunk is its block, in order (a rows chunk of a grid)
        return rgb[:, index]

    def per_point(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The per-point engine, ``point_batch`` points at a time: coords [B, N, 2], w [B, S]
        (or per-layer styles ws [B, L, S]: every point's, passed whole) -> rgb [B, N, 3]."""
        parts = []
        for start in range(0, coords.shape[1], self.point_batch):
            stop = start + self.point_batch
            parts.append(self.engines.per_point(coords[:, start:stop], w))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _compose_block(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """rows [B, h, F], columns [B, w, F] -> rgb [B, h w, 3] (row-major), columns padded to PAD_COLUMNS."""
        width = columns.shape[1]
        missing = -width % PAD_COLUMNS
        if missing:
            columns = np.concatenate([columns, np.repeat(columns[:, -1:], missing, axis=1)], axis=1)
        rgb = self.engines.compose(rows, columns, self.w)
        if missing:
            batch, height = rgb.shape[0], rows.shape[1]
            rgb = rgb.reshape(batch, height, width + missing, 3)[:, :, :width].reshape(batch, height * width, 3)
        return rgb

    def _ensure(self, v_values: np.ndarray, u_values: np.ndarray) -> None:
        """Compute the lines of values not cached yet; start afresh if they would pass ``max_bytes``."""
        new = {axis: values[~self.axes[axis].contains(values)] for axis, values in (("row", v_values), ("column", u_values))}
        value_bytes = 4 * self.w.shape[0] * self.features
        total = sum(table.count for table in self.axes.values()) + sum(values.size for values in new.values())
        if 2 * total * value_bytes > self.max_bytes:  # tables grow geometrically: up to twice the count
            self.axes = {"row": _AxisTable(), "column": _AxisTable()}
            new = {"row": v_values, "column": u_values}
        for axis, values in new.items():
            for start in range(0, values.size, self.group):
                group = values[start : start + self.group]
                self.axes[axis].add(group, self._evaluate(axis, group))

    def _evaluate(self, axis: str, values: np.ndarray) -> np.ndarray:
        """values [K <= group] -> lines [B, K, F], computed padded to a multiple of ``values_pad``."""
        count = values.size
        missing = -count % self.values_pad
        padded = np.concatenate([values, np.repeat(values[-1:], missing)]) if missing else values
        batch = self.w.shape[0]
        coordinate = np.ascontiguousarray(np.broadcast_to(padded, (batch, padded.size)), dtype=np.float32)
        other = coordinate[:, :1].copy()  # the other axis: one throw-away value
        if axis == "row":
            lines, _ = self.engines.lines(coordinate, other, self.w)
        else:
            _, lines = self.engines.lines(other, coordinate, self.w)
        return lines[:, :count]


class _AxisTable:
    """The cached values of one axis: sorted keys, where each lives, and the line table."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.float32)
        self.slots = np.empty(0, dtype=np.int64)
        self.table: np.ndarray | None = None  # [B, capacity, F]
        self.count = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.table is None else self.table.nbytes

    def contains(self, values: np.ndarray) -> np.ndarray:
        """values [K] (sorted) -> bool [K]."""
        if self.count == 0:
            return np.zeros(values.shape, dtype=bool)
        position = np.minimum(np.searchsorted(self.keys, values), self.count - 1)
        return self.keys[position] == values

    def lines_of(self, values: np.ndarray) -> np.ndarray:
        """values [K], all present -> their lines [B, K, F]."""
        return self.table[:, self.slots[np.searchsorted(self.keys, values)]]

    def add(self, values: np.ndarray, lines: np.ndarray) -> None:
        """Append K new values and their lines [B, K, F]."""
        new_count = self.count + values.size
        capacity = 0 if self.table is None else self.table.shape[1]
        if new_count > capacity:  # grow geometrically: amortised O(1) copies per value
            capacity = max(new_count, 2 * capacity, 64)
            grown = np.empty((lines.shape[0], capacity, lines.shape[2]), dtype=np.float32)
            if self.table is not None:
                grown[:, : self.count] = self.table[:, : self.count]
            self.table = grown
        self.table[:, self.count : new_count] = lines
        keys = np.concatenate([self.keys, values.astype(np.float32, copy=False)])
        slots = np.concatenate([self.slots, np.arange(self.count, new_count, dtype=np.int64)])
        order = np.argsort(keys, kind="stable")
        self.keys, self.slots = keys[order], slots[order]
        self.count = new_count
