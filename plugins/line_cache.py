"""The torch backend's grid fast path for line-factored generators (CREPS).

A line-factored generator computes a pixel at (u, v) from the row line of v and the column
line of u (``Generator.line_factored``; ``line_features`` / ``compose_block`` /
``compose_points``; ``line_slots`` line-product rows per value). A grid render of H x W pixels meets H distinct v and W distinct u
values however it is chunked: :class:`LineCache` computes each one's lines the first time a
chunk meets it and every later chunk only composes. Both compositions (the h x w block of a
chunk, or point by point) run the same operations per pixel as the per-point path, and new values' lines are computed in batches
padded to a multiple of ``pad`` line-product rows (8 values of 8 slots: the torch backend's
rule for chunk invariance, as for points), so the fast path gives the same bits for any
chunking.

Values are keyed exactly (their float32 bit patterns): the cache never changes a pixel. A new
style empties it. Its bytes count against the backend's memory budget: its tables (which grow
geometrically, so up to twice the values held) stay within ``max_bytes``; past that it starts
afresh. A line value holds
``generator.line_floats_per_value()`` floats per sample (paper256: 6 KB).

Per style the cache also keeps the generator's per-style work (``folds``: every modulated
layer's folded weight, ``generator.folded_bytes_per_sample()`` per sample, paper256 40.6 MiB),
so that line batches and chunks after the first do not fold again; past ``max_fold_bytes``
(large batches) it folds per call, as the per-point path does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cips_deploy.families.generator import Generator


class LineCache:
    """Lines per distinct coordinate value and style: ``synthesize(coords, w)`` like the generator's."""

    def __init__(
        self, generator: Generator, *, max_bytes: int, pad: int = 64, point_batch: int = 1 << 30,
        dtype: torch.dtype = torch.float32, max_fold_bytes: int = 128 << 20,
    ) -> None:
        self.generator = generator
        self.max_bytes = max_bytes
        self.max_fold_bytes = max_fold_bytes
        # New values are evaluated in batches of a multiple of ``values_pad`` values: a multiple
        # of ``pad`` rows of line products (the torch backend's rule for chunk invariance).
        self.values_pad = max(1, pad // generator.line_slots)
        self.group = max(self.values_pad, 64 // self.values_pad * self.values_pad)  # values per batch, at most
        self.point_batch = point_batch  # points per call of the per-point path (a multiple of pad)
        self.dtype = dtype
        self.w: Tensor | None = None
        self.axes: dict[str, _AxisTable] = {}

    @property
    def nbytes(self) -> int:
        """Bytes the cached lines occupy now (allocated capacity)."""
        return sum(table.nbytes for table in self.axes.values())

    # Whether the generator composes gathered points (compose_points); engines that only
    # compose blocks send such chunks through the per-point path instead.
    gathers = True

    def synthesize(self, coords: Tensor, w: Tensor, *, layered: bool = False) -> Tensor:
        """coords [B, N, 2] (the same points in every sample), w [B, S] -> rgb [B, N, 3];
        with ``layered``, w is per-layer styles ws [B, L, S] (style mixing; keyed like a w).

        A chunk whose points share too few rows and columns for lines to pay (scattered
        points, a rotated grid: about 2N distinct values) takes the per-point path.
        """
        points = coords[0]
        v_values, row_of_point = torch.unique(points[:, 1], return_inverse=True)  # sorted
        u_values, column_of_point = torch.unique(points[:, 0], return_inverse=True)
        if v_values.numel() + u_values.numel() > 1.5 * points.shape[0]:
            return self.per_point(coords, w, layered=layered)
        if not self.gathers and v_values.numel() * u_values.numel() > 3 * points.shape[0]:
            return self.per_point(coords, w, layered=layered)  # a block would be mostly unasked pixels, and this cache cannot gather
        if self.w is None or self.w.shape != w.shape or not torch.equal(self.w, w):
            self.w = w.clone()
            self.ws = self.w if layered else self.generator.layer_styles(self.w)
            fold_bytes = w.shape[0] * self.generator.folded_bytes_per_sample()
            self.folds: dict | None = {} if fold_bytes <= self.max_fold_bytes else None  # per-style work, done once
            self.axes = {"row": _AxisTable(), "column": _AxisTable()}
        self._ensure(v_values, u_values)
        rows = [table.index_select(1, self.axes["row"].slots_of(v_values)) for table in self.axes["row"].tables]
        columns = [table.index_select(1, self.axes["column"].slots_of(u_values)) for table in self.axes["column"].tables]
        g, n_points = self.generator, points.shape[0]
        # A block composes h * w pixels; worth it while it is not much larger than the chunk.
        if v_values.numel() * u_values.numel() <= 3 * n_points:
            rgb = g.compose_block(rows, columns, self.ws, dtype=self.dtype, folds=self.folds)  # [B, h * w, 3]
            index = row_of_point * u_values.numel() + column_of_point
            if index.numel() == rgb.shape[1] and bool((index == torch.arange(index.numel())).all()):
                return rgb
            return rgb.index_select(1, index)
        rows = [line.index_select(1, row_of_point) for line in rows]
        columns = [line.index_select(1, column_of_point) for line in columns]
        return g.compose_points(rows, columns, self.ws, dtype=self.dtype, folds=self.folds)

    def per_point(self, coords: Tensor, w: Tensor, *, layered: bool = False) -> Tensor:
        """The per-point path (both lines at every point), ``point_batch`` points at a time:
        coords [B, N, 2], w [B, S] or [B, N, S] (or, ``layered``, ws [B, L, S]) -> rgb [B, N, 3]."""
        parts = []
        for start in range(0, coords.shape[1], self.point_batch):
            stop = start + self.point_batch
            if layered:
                parts.append(self.generator.synthesize_layers(coords[:, start:stop], w, dtype=self.dtype))
                continue
            parts.append(self.generator.synthesize(coords[:, start:stop], w if w.dim() == 2 else w[:, start:stop], dtype=self.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _ensure(self, v_values: Tensor, u_values: Tensor) -> None:
        """Compute the lines of values not cached yet; start afresh if they would pass ``max_bytes``."""
        new = {axis: values[~self.axes[axis].contains(values)] for axis, values in (("row", v_values), ("column", u_values))}
        value_bytes = 4 * self.w.shape[0] * self.generator.line_floats_per_value()
        total = sum(table.count for table in self.axes.values()) + sum(values.numel() for values in new.values())
        if 2 * total * value_bytes > self.max_bytes:  # tables grow geometrically: up to twice the count
            self.axes = {"row": _AxisTable(), "column": _AxisTable()}
            new = {"row": v_values, "column": u_values}
        for axis, values in new.items():
            for start in range(0, values.numel(), self.group):
                group = values[start : start + self.group]
                self.axes[axis].add(group, self._evaluate(axis, group))

    def _evaluate(self, axis: str, values: Tensor) -> list[Tensor]:
        """values [K <= group] -> lines [[B, K, r, bc]], computed padded to a multiple of ``values_pad``."""
        count = values.numel()
        missing = -count % self.values_pad
        padded = torch.cat([values, values[-1:].expand(missing)]) if missing else values
        lines = self.generator.line_features(
            axis, padded.expand(self.w.shape[0], -1), self.ws, dtype=self.dtype, folds=self.folds
        )
        return [line[:, :count] for line in lines]


class _AxisTable:
    """The cached values of one axis: sorted keys, where each lives, and the line tables."""

    def __init__(self) -> None:
        self.keys = torch.empty(0)
        self.slots = torch.empty(0, dtype=torch.long)
        self.tables: list[Tensor] = []  # [B, capacity, r, bc] per block
        self.count = 0

    @property
    def nbytes(self) -> int:
        return sum(table.numel() * table.element_size() for table in self.tables)

    def contains(self, values: Tensor) -> Tensor:
        """values [K] (sorted) -> bool [K]."""
        if self.count == 0:
            return torch.zeros_like(values, dtype=torch.bool)
        position = torch.searchsorted(self.keys, values).clamp(max=self.count - 1)
        return self.keys[position] == values

    def slots_of(self, values: Tensor) -> Tensor:
        """values [K], all present -> their rows in the tables [K]."""
        return self.slots[torch.searchsorted(self.keys, values)]

    def add(self, values: Tensor, lines: list[Tensor]) -> None:
        """Append K new values and their lines ([B, K, r, bc] per block)."""
        new_count = self.count + values.numel()
        capacity = self.tables[0].shape[1] if self.tables else 0
        if new_count > capacity:  # grow geometrically: amortised O(1) copies per value
            capacity = max(new_count, 2 * capacity, 64)
            grown = []
            for index, line in enumerate(lines):
                table = line.new_empty(line.shape[0], capacity, *line.shape[2:])
                if self.tables:
                    table[:, : self.count] = self.tables[index][:, : self.count]
                grown.append(table)
            self.tables = grown
        for table, line in zip(self.tables, lines):
            table[:, self.count : new_count] = line
        slots = torch.arange(self.count, new_count, device=values.device)
        keys = torch.cat([self.keys.to(values), values])
        order = torch.argsort(keys)
        self.keys, self.slots = keys[order], torch.cat([self.slots.to(values.device), slots])[order]
        self.count = new_count
