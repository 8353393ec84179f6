"""CREPS: Column-Row Entangled Pixel Synthesis (Nguyen, Le and Tran, CVPR 2023).

CIPS runs a deep MLP at every pixel. CREPS runs its deep, wide, modulated layers on *lines*
instead: a row branch on the v coordinate and a column branch on the u coordinate. After
every layer l the two are composed into a per-pixel feature by a "thick" bi-line product::

    f_l(u, v) = sum_{d < D} r_l(v)[d] * c_l(u)[d] / sqrt(D)     r_l, c_l: [D, C_l / D]

so a layer of width C_l yields a composed feature of width K_l = C_l / D (D = ``line_rank``).
Layer-wise feature composition fuses the composed features of all layers through narrow
decoders (fully connected + leaky ReLU)::

    g_0 = f_0,    g_l = (decoder_l(g_{l-1}) + f_l) / sqrt(2)

so the features of early layers pass through more decoders ("are processed deeper"), and
an output head (a modulated layer and ToRGB on K_last channels) turns g into colour.

Layout of the modules, reading the paper's description (its code could not be consulted
where this was written): each branch has Fourier features of its coordinate and the same
layer widths as a CIPSskip of the config (first layer, then two layers per block), so that
CIPS and CREPS compare at equal width. On a cylinder the column branch takes
(cos pi*u, sin pi*u) and is periodic in u; the row branch takes v.

Costs. Per pixel only the composition, the decoders and the head run: sum_l (C_l + K_{l-1} K_l)
multiply-adds, about 1/15 of a CIPSskip of equal width. The line layers run once per distinct
row and column: for an H x W grid that is H + W line evaluations instead of H * W, which
:class:`LineCache` exploits (the fast path); an arbitrary set of points (the per-point path,
and every exported engine) evaluates both lines at every point.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GeneratorConfig
from .errors import CipsError
from .generator import Generator
from .layers import EqualLinear, StyledLayer, ToRGB, scaled_leaky_relu, sine_layer_parameters

SQRT2 = math.sqrt(2.0)


class AxisFourier(nn.Module):
    """One coordinate axis [B, K] -> sin(features @ A.T + b) [B, K, hidden].

    ``periodic``: the axis is an angle (a cylinder's u), the features are (cos pi*x, sin pi*x).
    Initialised like CIPS's Fourier layer: U(-sqrt(9/in), sqrt(9/in)).
    """

    def __init__(self, hidden: int, periodic: bool = False) -> None:
        super().__init__()
        self.periodic = periodic
        self.weight, self.bias = sine_layer_parameters(hidden, 2 if periodic else 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(-1)
        if self.periodic:
            x = torch.cat([torch.cos(math.pi * x), torch.sin(math.pi * x)], dim=-1)
        return torch.sin(F.linear(x, self.weight, self.bias))


class LineBranch(nn.Module):
    """The row or the column branch: Fourier features, then modulated layers of ``widths``.

    ``forward`` yields the features of every layer, [B, K, C_l] each, for K coordinate values.
    """

    def __init__(self, hidden: int, layer_widths: list[int], style_dim: int, periodic: bool) -> None:
        super().__init__()
        self.fourier = AxisFourier(hidden, periodic)
        in_features = hidden
        layers = []
        for width in layer_widths:
            layers.append(StyledLayer(in_features, width, style_dim))
            in_features = width
        self.layers = nn.ModuleList(layers)

    def forward(self, values: Tensor, w: Tensor) -> list[Tensor]:
        """values [B, K], w [B, S] or [B, K, S] -> [[B, K, C_l] for every layer l]."""
        x = self.fourier(values)
        features = []
        for layer in self.layers:
            x = layer(x, w)
            features.append(x)
        return features


def bi_line(row: Tensor, column: Tensor, rank: int) -> Tensor:
    """The thick bi-line product: row, column [B, N, C] -> [B, N, C / rank].

    Channel k of the result is sum_d row[d * K + k] * column[d * K + k] / sqrt(rank), K = C / rank:
    unit-variance lines give a unit-variance composition. Written as D elementwise products
    summed in order (no reduction kernel), so that :func:`block_bi_line` computes every
    pixel with exactly the same operations: the grid fast path is bitwise the per-point path.
    """
    k = row.shape[-1] // rank
    composed = row[..., :k] * column[..., :k]
    for d in range(1, rank):
        composed = composed.add_(row[..., d * k : (d + 1) * k] * column[..., d * k : (d + 1) * k])
    return composed.mul_(1 / math.sqrt(rank))


def block_bi_line(rows: Tensor, columns: Tensor, rank: int) -> Tensor:
    """:func:`bi_line` of every (row, column) pair: rows [B, h, C], columns [B, w, C] -> [B, h * w, C / rank].

    The products broadcast a row against all columns, so per pixel only K = C / rank floats
    (and one K-wide term) exist, where composing each pixel from gathered lines holds 3 C.
    """
    batch, h, channels = rows.shape
    k = channels // rank
    rows, columns = rows[:, :, None, :], columns[:, None, :, :]
    composed = rows[..., :k] * columns[..., :k]
    for d in range(1, rank):
        composed = composed.add_(rows[..., d * k : (d + 1) * k] * columns[..., d * k : (d + 1) * k])
    return composed.mul_(1 / math.sqrt(rank)).view(batch, -1, k)


class CrepsGenerator(Generator):
    """A CREPS generator with the same contract as CIPS: coords [B, N, 2], w -> rgb [B, N, 3].

    Modules: ``mapping``; ``rows`` and ``columns`` (:class:`LineBranch`); ``decoders``
    (one per layer after the first: K_{l-1} -> K_l, fully connected + leaky ReLU);
    ``head`` (a modulated layer K -> K) and ``to_rgb``.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        c = config
        self.layer_widths = [c.widths[0]] + [width for width in c.widths for _ in range(2)]
        self.composed_widths = [width // c.line_rank for width in self.layer_widths]
        periodic_u = c.coordinate_space == "cylinder"
        self.rows = LineBranch(c.hidden, self.layer_widths, c.style_dim, periodic=False)
        self.columns = LineBranch(c.hidden, self.layer_widths, c.style_dim, periodic=periodic_u)
        self.decoders = nn.ModuleList(
            EqualLinear(k_in, k_out) for k_in, k_out in zip(self.composed_widths, self.composed_widths[1:])
        )
        k_last = self.composed_widths[-1]
        self.head = StyledLayer(k_last, k_last, c.style_dim)
        self.to_rgb = ToRGB(k_last, c.style_dim)

    # -------------------------------------------------------------- per-point path

    def _synthesize(self, coords: Tensor, w: Tensor, noise: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        """Both lines at every point, one layer at a time (only one layer's lines are alive)."""
        if dtype != torch.float32:
            raise CipsError(f"CREPS synthesizes in float32 only, not {dtype}.")
        row = self.rows.fourier(coords[..., 1])
        column = self.columns.fourier(coords[..., 0])
        fused = None
        for index, (row_layer, column_layer) in enumerate(zip(self.rows.layers, self.columns.layers)):
            row, column = row_layer(row, w), column_layer(column, w)
            fused = self.fuse(index, fused, bi_line(row, column, self.config.line_rank))
        return self.output(fused, w, noise)

    # ------------------------------------------------------------------ the parts

    def line_features(self, axis: str, values: Tensor, w: Tensor) -> list[Tensor]:
        """Line features of ``axis`` (``"row"``: v values, ``"column"``: u values).

        values [B, K], w [B, S] -> [[B, K, C_l] for every layer l].
        """
        branch = self.rows if axis == "row" else self.columns
        return branch(values, w)

    def compose(self, rows: list[Tensor], columns: list[Tensor], w: Tensor, noise: bool = False) -> Tensor:
        """Per-point line features of every layer ([B, N, C_l] each) -> rgb [B, N, 3]."""
        fused = None
        for index, (row, column) in enumerate(zip(rows, columns)):
            fused = self.fuse(index, fused, bi_line(row, column, self.config.line_rank))
        return self.output(fused, w, noise)

    def fuse(self, index: int, fused: Tensor | None, composed: Tensor) -> Tensor:
        """Layer-wise composition: g_0 = f_0, g_l = (decoder_l(g_{l-1}) + f_l) / sqrt(2)."""
        if fused is None:
            return composed
        decoded = scaled_leaky_relu(self.decoders[index - 1](fused))
        if torch.is_grad_enabled():
            return (decoded + composed) * (1 / SQRT2)
        return decoded.add_(composed).mul_(1 / SQRT2)  # inference: no new per-pixel buffers

    def output(self, fused: Tensor, w: Tensor, noise: bool = False) -> Tensor:
        """The output head: g [B, N, K] -> rgb [B, N, 3]."""
        return self.to_rgb(self.head(fused, w, noise), w)

    # ------------------------------------------------------------------- figures

    def flops_per_point(self) -> int:
        """FLOPs of the per-point path (both lines at every point; what an engine runs)."""
        return 2 * (2 * self.line_macs() + self.pixel_macs())

    def grid_flops_per_point(self, height: int, width: int) -> float:
        """FLOPs per pixel of the fast path on a height x width grid: lines once per row and column."""
        return 2 * (self.line_macs() * (height + width) / (height * width) + self.pixel_macs())

    def line_macs(self) -> int:
        """Multiply-adds of one line (one branch at one coordinate value)."""
        return self.rows.fourier.weight.numel() + sum(layer.linear.weight.numel() for layer in self.rows.layers)

    def pixel_macs(self) -> int:
        """Multiply-adds per pixel after the lines: compositions, decoders, head, ToRGB."""
        composition = sum(self.layer_widths)
        decoders = sum(decoder.weight.numel() for decoder in self.decoders)
        return composition + decoders + self.head.linear.weight.numel() + self.to_rgb.linear.weight.numel()


class LineCache:
    """The fast path: line features computed once per distinct coordinate value and style.

    A grid render of H x W pixels meets H distinct v and W distinct u values however it is
    chunked; their line features are computed the first time a chunk meets them and every
    chunk after that only composes: the h x w (row, column) block of a chunk by broadcast
    products, or point by point where a chunk's points are scattered; both run the same
    operations per pixel as the per-point path, so the fast path is bitwise that path. Values are keyed exactly (their float32 bit
    patterns), so the cache never changes a pixel. A new style empties the cache. Layouts
    without shared rows and columns (rotated grids, scattered points) gain nothing, so each
    axis holds at most ``max_bytes`` of features (256 MB: about 10,000 values of paper256,
    whose lines are 25.6 kB); past the cap the cache starts afresh.

    New values are evaluated in batches padded to a multiple of ``pad`` rows (the torch
    backend's rule for chunk invariance): a value's features do not depend on its companions.
    """

    def __init__(self, generator: CrepsGenerator, *, max_bytes: int = 256 << 20, pad: int = 64) -> None:
        self.generator = generator
        self.max_bytes = max_bytes
        self.pad = pad
        self.w: Tensor | None = None
        self.axes: dict[str, _AxisTable] = {}

    def synthesize(self, coords: Tensor, w: Tensor) -> Tensor:
        """coords [B, N, 2] (the same points in every sample), w [B, S] -> rgb [B, N, 3].

        A chunk that shares too few rows and columns for the cache to pay (a grid chunk of
        h rows and w columns has h + w distinct values against h * w points; scattered points,
        such as a rotated grid, about 2N) takes the per-point path, which holds no lines
        beyond the chunk.
        """
        points = coords[0]
        v_values, row_of_point = torch.unique(points[:, 1], return_inverse=True)  # sorted
        u_values, column_of_point = torch.unique(points[:, 0], return_inverse=True)
        if v_values.numel() + u_values.numel() > 1.5 * points.shape[0]:
            return self.generator.synthesize(coords, w)
        if self.w is None or self.w.shape != w.shape or not torch.equal(self.w, w):
            self.w = w.clone()
            self.axes = {axis: _AxisTable() for axis in ("row", "column")}
        rows = self._slots("row", v_values)  # [h]: each distinct v's place in the tables
        columns = self._slots("column", u_values)  # [w]
        rank = self.generator.config.line_rank
        fused = None
        for index, (row_table, column_table) in enumerate(zip(self.axes["row"].tables, self.axes["column"].tables)):
            row_lines = row_table.index_select(1, rows)  # [B, h, C]
            column_lines = column_table.index_select(1, columns)  # [B, w, C]
            # A block writes 8 K floats per (row, column) pair; composing point by point
            # gathers and reads 2 C = 8 K per point before the same 8 K: blocks up to 3 N pay.
            if rows.numel() * columns.numel() <= 3 * points.shape[0]:
                block = block_bi_line(row_lines, column_lines, rank)  # [B, h * w, K]
                composed = _select_points(block, row_of_point, column_of_point, columns.numel())
            else:  # compose each point from its own row and column
                composed = bi_line(row_lines[:, row_of_point], column_lines[:, column_of_point], rank)
            fused = self.generator.fuse(index, fused, composed)
        return self.generator.output(fused, w)

    def _slots(self, axis: str, values: Tensor) -> Tensor:
        """Distinct sorted values [K] -> their rows in the axis's tables [K] (computing new ones)."""
        table = self.axes[axis]
        new = values[~table.contains(values)]
        if new.numel():
            bytes_per_value = 4 * self.w.shape[0] * sum(self.generator.layer_widths)
            if (table.count + new.numel()) * bytes_per_value > self.max_bytes:
                table = self.axes[axis] = _AxisTable()
                new = values
            table.add(new, self._evaluate(axis, new))
        return table.slots_of(values)

    def _evaluate(self, axis: str, values: Tensor) -> list[Tensor]:
        """values [K] -> [[B, K, C_l]]: the new values' line features, in padded batches."""
        count = values.numel()
        missing = -count % self.pad
        padded = torch.cat([values, values[-1:].expand(missing)]) if missing else values
        batch = self.w.shape[0]
        features = self.generator.line_features(axis, padded.expand(batch, -1), self.w)
        return [feature[:, :count] for feature in features]


def _select_points(block: Tensor, row_of_point: Tensor, column_of_point: Tensor, width: int) -> Tensor:
    """block [B, h * w, K] (row-major) -> [B, N, K]: each point's (row, column) entry."""
    index = row_of_point * width + column_of_point
    if index.numel() == block.shape[1] and bool((index == torch.arange(index.numel(), device=index.device)).all()):
        return block  # the chunk is the whole block in row-major order (a whole image)
    return block.index_select(1, index)


class _AxisTable:
    """The cached values of one axis: sorted keys, where each lives, and the feature tables."""

    def __init__(self) -> None:
        self.keys = torch.empty(0)
        self.slots = torch.empty(0, dtype=torch.long)
        self.tables: list[Tensor] = []  # [B, capacity, C_l] per layer
        self.count = 0

    def contains(self, values: Tensor) -> Tensor:
        """values [K] (sorted) -> bool [K]."""
        if self.count == 0:
            return torch.zeros_like(values, dtype=torch.bool)
        position = torch.searchsorted(self.keys, values).clamp(max=self.count - 1)
        return self.keys[position] == values

    def slots_of(self, values: Tensor) -> Tensor:
        """values [K], all present -> their rows in the tables [K]."""
        return self.slots[torch.searchsorted(self.keys, values)]

    def add(self, values: Tensor, features: list[Tensor]) -> None:
        """Append K new values and their features ([B, K, C_l] per layer)."""
        new_count = self.count + values.numel()
        capacity = self.tables[0].shape[1] if self.tables else 0
        if new_count > capacity:  # grow geometrically: amortised O(1) copies per value
            capacity = max(new_count, 2 * capacity, 256)
            grown = []
            for index, feature in enumerate(features):
                table = feature.new_empty(feature.shape[0], capacity, feature.shape[2])
                if self.tables:
                    table[:, : self.count] = self.tables[index][:, : self.count]
                grown.append(table)
            self.tables = grown
        for table, feature in zip(self.tables, features):
            table[:, self.count : new_count] = feature
        slots = torch.arange(self.count, new_count, device=values.device)
        keys = torch.cat([self.keys.to(values), values])
        order = torch.argsort(keys)
        self.keys, self.slots = keys[order], torch.cat([self.slots.to(values.device), slots])[order]
        self.count = new_count
