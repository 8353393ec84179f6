"""CREPS (Column-Row Entangled Pixel Synthesis, Nguyen, Le and Tran, CVPR 2023) as published.

The architecture of the official code (VinAIResearch/CREPS, ``training/networks_creps.py``),
written independently for pixel-major activations; ``docs/creps.md`` states the formulas.
The module tree mirrors the official one, so state-dict keys map one to one onto the
official keys (dead parameters ``synthesis.b4.tores.*`` and ``synthesis.decoder_8.*``
included) with one renaming: the official ``mapping.w_avg`` is our top-level ``w_avg``
(every family keeps its centre of truncation there).

Notation: R = size, blocks q = 4, 8, ..., R with widths C_q (``config.widths``), r = rank 8
slots per axis, bc = ``biline_channels``, num_ws = 2 log2(R) - 1 per-layer styles.

A pixel at (u, v) depends on two *lines*: the row line of its v and the column line of its u.
Official coordinates t in [0, 1] are ours through ``u = 2 t_col - 1`` (columns) and
``v = 2 t_row - 1`` (rows). Per axis a and coordinate t, the line part runs the input layer
and the modulated line blocks on r "slot vectors" of C channels and yields, per block q >= 8,
the scaled cumulative bi-line ``L_q(t) [r, bc]``; the pixel part composes
``F_q = sum_k L_q(t_row)[k] * L_q(t_col)[k]`` ([bc]) and runs the decoders and the two
per-pixel modulated blocks. :meth:`CrepsGenerator.line_features` and
:meth:`CrepsGenerator.compose_points` / :meth:`~CrepsGenerator.compose_block` are those two
parts: the per-point path evaluates both lines at every point, the torch backend's line
cache evaluates each distinct row and column once, and a line engine can export them.

Mixed precision (``dtype=torch.float16``): as the official default (without ``force_fp32``),
block0/block1 and the line blocks at q >= max(2^(log2 R + 1 - num_fp16_res), 8) run their
products, bias, activation and clamp in float16, with the official pre-normalisation of
weight and style; everything else stays float32. ``dtype=torch.bfloat16`` (our option, for
CPUs with bfloat16 products): every line block, decoder and per-pixel block runs its products
in bfloat16 (float32 accumulation); the input layer's phases and sines, the bi-lines and the
colours stay float32.

Cylinder (our extension, not in the paper): u is an angle; the coordinate is wrapped into
[-1, 1) and the input frequencies are integers, so every column line is exactly periodic in u.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.creps_layers import (  # noqa: F401  (ModulatedFC, to_unit: importers find them here)
    AXES,
    to_unit,
    _decode,
    ModulatedFC,
    CrepsSynthesis,
    CrepsMapping,
)
from cips_deploy.families.creps_spec import RANK
from cips_deploy.families.generator import Generator

# ------------------------------------------------------------------------ generator


class CrepsGenerator(Generator):
    """The official CREPS generator behind the common contract: coords [B, N, 2], w -> rgb [B, N, 3].

    Styles: ``w [B, S]`` (every layer), ``w [B, N, S]`` (one per point) or, through
    :meth:`synthesize_ws`, per-layer styles ``ws [B, num_ws, S]`` (style mixing).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__(config)
        self.mapping = CrepsMapping(config.style_dim, config.n_mlp, config.lr_mlp, z_dim=config.z_dim, c_dim=config.c_dim)
        self.synthesis = CrepsSynthesis(config)
        self.num_ws = 2 * len(config.widths) + 1
        log2 = int(math.log2(config.size))
        first_fp16 = max(2 ** (log2 + 1 - config.num_fp16_res), 8)
        self.fp16_blocks = {q for q in self.synthesis.resolutions if q >= first_fp16}

    # ------------------------------------------------------------------ synthesis

    def _synthesize(self, coords: Tensor, w: Tensor, noise: bool, dtype: torch.dtype = torch.float32) -> Tensor:
        """The per-point path: both lines at every point, then the pixel part."""
        return self._points(coords, self.layer_styles(w), dtype)

    def synthesize_ws(self, coords: Tensor, ws: Tensor, *, dtype: torch.dtype | None = None) -> Tensor:
        """coords [B, N, 2] and per-layer styles ws [B, num_ws, S] (official ``ws``) -> rgb [B, N, 3]."""
        if ws.dim() != 3 or ws.shape[1] != self.num_ws or ws.shape[0] != coords.shape[0]:
            raise CipsError(f"Per-layer styles must have shape [B, {self.num_ws}, S] matching the coordinates, not {list(ws.shape)}.")
        self._check_width(ws, "ws")
        if coords.dim() != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        return self._points(coords, ws, self._dtype(dtype))

    def _synthesize_layers(self, coords: Tensor, ws: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-layer styles ws [B, num_ws, S] (the official ``ws``): :meth:`synthesize_ws`."""
        return self._points(coords, ws, dtype)

    def _points(self, coords: Tensor, ws: Tensor, dtype: torch.dtype | None) -> Tensor:
        dtype = self._dtype(dtype)
        folds: dict = {}  # both axes and the pixel part fold each layer's weight once
        rows = self.line_features("row", coords[..., 1], ws, dtype=dtype, folds=folds)
        columns = self.line_features("column", coords[..., 0], ws, dtype=dtype, folds=folds)
        return self.compose_points(rows, columns, ws, dtype=dtype, folds=folds)

    def _dtype(self, dtype: torch.dtype | None) -> torch.dtype:
        if dtype is None:
            return torch.float32
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise CipsError(f"CREPS synthesizes in float32, bfloat16 or the official float16 mixed precision, not {dtype}.")
        return dtype

    def layer_styles(self, w: Tensor) -> Tensor:
        """w [B, S] -> ws [B, num_ws, S]; w [B, N, S] (per point) -> [B, N, num_ws, S] (views)."""
        return w.unsqueeze(-2).expand(*w.shape[:-1], self.num_ws, w.shape[-1])

    def line_features(
        self, axis: str, coordinate: Tensor, ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> list[Tensor]:
        """Lines of one axis (``"row"``: v values, ``"column"``: u values).

        coordinate [B, K] in our [-1, 1] convention; ws [B, num_ws, S] (per sample) or
        [B, K, num_ws, S] (per point) -> ``[L_q [B, K, r, bc] for q = 8 .. R]``, the scaled
        cumulative bi-lines (float32). ``folds``: an empty dict per style that calls for the
        same ``ws`` share (each layer's folded weight is computed once; the same bits).
        """
        if self.config.coordinate_space == "cylinder" and axis == "column":
            coordinate = torch.remainder(coordinate + 1, 2) - 1  # u is an angle: wrap it
        t = to_unit(coordinate)
        s = self.synthesis
        per_point = ws.dim() == 4
        style = (lambda i: ws[:, :, i]) if per_point else (lambda i: ws[:, i])

        def slot_style(i: int) -> Tensor:  # a point's style serves its r slots
            return style(i)[:, :, None] if per_point else style(i)

        x = s.b4.input(AXES.index(axis), t, style(0), folds)  # [B, K, r, C]
        lines, res = [], None
        for index, q in enumerate(s.resolutions):
            block = getattr(s, f"b{q}")
            block_dtype = _block_dtype(dtype, q in self.fp16_blocks)
            x = x.to(block_dtype)
            if q == 4:
                x = block.fc1(x, slot_style(1), folds)
                continue
            x = block.fc0(x, slot_style(2 * index - 1), folds)
            x = block.fc1(x, slot_style(2 * index), folds)
            y = block.tores(x, slot_style(2 * index + 1), folds).float()  # [B, K, r, bc]
            res = y if res is None else res.add(y)
            lines.append(res * np.sqrt(0.5))
        return lines

    def compose_points(
        self, rows: list[Tensor], columns: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """Per-point lines (each [B, N, r, bc]) -> rgb [B, N, 3]."""
        return self.pixels([_bi_line(row, column) for row, column in zip(rows, columns)], ws, dtype=dtype, folds=folds)

    def compose_block(
        self, rows: list[Tensor], columns: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """Lines of h rows and w columns (each [B, h, r, bc], [B, w, r, bc]) -> rgb [B, h * w, 3], row-major.

        Every pixel takes exactly the operations of :meth:`compose_points`, so the two agree bitwise.
        """
        composed = [_bi_line(row[:, :, None], column[:, None, :]).flatten(1, 2) for row, column in zip(rows, columns)]
        return self.pixels(composed, ws, dtype=dtype, folds=folds)

    def pixels(
        self, composed: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """The pixel part: F_q [B, N, bc] for q = 8 .. R -> rgb [B, N, 3] (float32)."""
        s = self.synthesis
        # The decoders (90% of the per-pixel products at paper256) run in bfloat16 when asked;
        # float16 is the official mixed precision, whose decoders stay float32.
        decoder_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        feature = composed[0].to(decoder_dtype)
        for q, new in zip(s.resolutions[2:], composed[1:]):
            feature = _decode(getattr(s, f"decoder_{q}"), feature) + new.to(decoder_dtype)
        feature = _decode(s.decoder_last, feature)
        img = s.decoder_img(feature.float())
        w_last = ws[:, :, -1] if ws.dim() == 4 else ws[:, -1]
        x = feature.to(dtype).contiguous()
        for block in (s.block0, s.block1):
            x = block.fc1(block.fc0(x, w_last, folds), w_last, folds)
            img = img.add(block.tores(x, w_last, folds).float())
        return img

    # --------------------------------------------------------------- the interface

    line_factored = True

    line_slots = RANK  # rows of the line products per coordinate value

    def compose_floats_per_point(self) -> int:
        return self.config.family.compose_floats_per_point(self.config)

    def folded_bytes_per_sample(self) -> int:
        """Bytes a ``folds`` dict holds per sample at most: every modulated layer's folded
        float32 weight (paper256: 40.6 MiB, a third of the model) and the input layer's modulation."""
        layers = sum(module.weight.numel() for module in self.modules() if isinstance(module, ModulatedFC))
        return 4 * (layers + 2 * RANK * self.config.widths[0])

    def line_floats_per_value(self) -> int:
        return self.config.family.line_floats_per_value(self.config)

    def supported_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.bfloat16, torch.float16)

    def line_macs(self) -> int:
        """Multiply-adds of one line position (r slots through every line block; the official count)."""
        widths, s = self.config.widths, self.synthesis
        macs = widths[0] // 2 * RANK  # the phase products t x freqs (the official 4,096 at paper256)
        per_slot = widths[0] ** 2  # b4.fc1
        for index in range(1, len(s.resolutions)):
            per_slot += widths[index - 1] * widths[index] + widths[index] ** 2 + widths[index] * self.config.biline_channels
        return macs + RANK * per_slot

    def pixel_macs(self) -> int:
        """Multiply-adds per pixel after the lines: bi-line products, decoders, decoder_img, block0/1."""
        bc, blocks = self.config.biline_channels, len(self.config.widths) - 1
        decoder = 2 * bc * bc + 8 * bc * bc + 8 * bc * bc + 2 * bc * bc
        pixel_blocks = bc * 4 * bc + 16 * bc * bc + 4 * bc * 3 + 4 * bc * 2 * bc + 4 * bc * bc + 2 * bc * 3
        return blocks * bc * RANK + blocks * decoder + bc * 3 + pixel_blocks

    def flops_per_point(self) -> int:
        """FLOPs of the per-point path (both lines at every point: what a per-point engine runs)."""
        return 2 * (2 * self.line_macs() + self.pixel_macs())

    def grid_flops_per_point(self, height: int, width: int) -> float:
        """FLOPs per pixel of a height x width grid with lines shared: (H + W) lines, H W pixels."""
        return 2 * (self.line_macs() * (height + width) / (height * width) + self.pixel_macs())

    def reference_synthesize(self, coords: Tensor, w: Tensor) -> Tensor:
        """The official way of computing (:mod:`cips_deploy.families.creps_reference`): coords [B, 2, N, N] -> rgb [B, 3, N, N]."""
        from cips_deploy.families.creps_reference import creps_reference

        return creps_reference(self, coords, w)

    def info_facts(self) -> dict:
        c = self.config
        return {
            "biline_channels": c.biline_channels,
            "line_rank": RANK,
            "num_ws": self.num_ws,
            "fp16_line_blocks": sorted(self.fp16_blocks),
            "line_flops_per_position": 2 * self.line_macs(),
            "pixel_flops_per_pixel": 2 * self.pixel_macs(),
            "grid_flops_per_pixel_at_training_size": round(self.grid_flops_per_point(c.size, c.size)),
        }


def _block_dtype(dtype: torch.dtype, official_fp16_block: bool) -> torch.dtype:
    """The dtype of a line block's products: float16 in the official mixed precision's
    blocks, bfloat16 in every block when asked (our option: bfloat16 keeps float32's range,
    so no block needs float32 to avoid overflow), float32 otherwise."""
    if dtype == torch.bfloat16:
        return dtype
    return torch.float16 if dtype == torch.float16 and official_fp16_block else torch.float32


def _bi_line(row: Tensor, column: Tensor) -> Tensor:
    """sum_k row[..., k, :] * column[..., k, :] in a fixed order: [..., r, bc] x [..., r, bc] -> [..., bc].

    Elementwise products added one slot at a time (no reduction kernel whose order could
    depend on the shape), so a pixel composed alone or in a block gets the same bits.
    """
    total = row[..., 0, :] * column[..., 0, :]
    for k in range(1, RANK):
        total = total.add_(row[..., k, :] * column[..., k, :]) if not torch.is_grad_enabled() else total + row[..., k, :] * column[..., k, :]
    return total
