"""Grid rendering through a line-factored model's line and compose engines (any runtime).

:class:`GridRenderer` is the torch backend's line cache (:mod:`cips_deploy.plugins.line_cache`)
driven by engines instead of the torch model: each distinct row and column value of a grid
layout goes through the line engine once per image (in padded groups), every chunk composes
its block of rows x columns through the compose engine, and chunks whose points share too
few rows and columns (rotated, foveated, scattered layouts) go to the per-point engine in
bounded batches. Memory follows the chunk plus the bounded line tables, not the image.

A runtime supplies :class:`GridEngines`: ``lines(v [B, H], u [B, W], w) -> [B, H, F], [B, W, F]``,
``compose(rows [B, H, F], columns [B, W, F], w) -> rgb [B, H W, 3]`` and
``per_point(coords [B, N, 2], w) -> rgb [B, N, 3]``, host float32 tensors.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.families.generator import Generator
from cips_deploy.plugins.line_cache import LineCache

# Compose blocks are padded to a multiple of this many columns (repeating the last one), so
# the engine's matrix products see row counts that are multiples of 64, as for points.
PAD_COLUMNS = 64


class GridEngines(Protocol):
    def lines(self, v: Tensor, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]: ...

    def compose(self, rows: Tensor, columns: Tensor, w: Tensor) -> Tensor: ...

    def per_point(self, coords: Tensor, w: Tensor) -> Tensor: ...


def family_facts(config: GeneratorConfig) -> Generator:
    """The family's shape facts (line slots, floats per line value and per composed point)
    from a weightless instance: an engine carries the config, not the module."""
    with torch.device("meta"):
        return Generator(config)


class _EngineFamily:
    """What :class:`LineCache` asks of a generator, answered by engines. A line value is kept
    flat ([B, K, F], one table) rather than per block: the engines take it that way."""

    line_factored = True

    def __init__(self, engines: GridEngines, facts: Generator) -> None:
        self.engines = engines
        self.line_slots = facts.line_slots
        self._features = facts.line_floats_per_value()

    def line_floats_per_value(self) -> int:
        return self._features

    def layer_styles(self, w: Tensor) -> Tensor:
        return w  # the engines take w [B, S] and expand it themselves

    def folded_bytes_per_sample(self) -> int:
        return 0  # the engines fold the modulated weights inside each call; nothing is kept

    def line_features(self, axis: str, coordinate: Tensor, ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None) -> list[Tensor]:
        """coordinate [B, K] -> [lines [B, K, F]]; the other axis gets one throw-away value."""
        other = coordinate[:, :1]
        rows, columns = self.engines.lines(coordinate, other, ws) if axis == "row" else self.engines.lines(other, coordinate, ws)
        return [rows if axis == "row" else columns]

    def compose_block(
        self, rows: list[Tensor], columns: list[Tensor], ws: Tensor, *, dtype: torch.dtype = torch.float32, folds: dict | None = None
    ) -> Tensor:
        """[rows [B, h, F]], [columns [B, w, F]] -> rgb [B, h w, 3], row-major."""
        (row_lines,), (column_lines,) = rows, columns
        width = column_lines.shape[1]
        missing = -width % PAD_COLUMNS
        if missing:
            column_lines = torch.cat([column_lines, column_lines[:, -1:].expand(-1, missing, -1)], dim=1)
        rgb = self.engines.compose(row_lines.contiguous(), column_lines.contiguous(), ws)
        if missing:
            rgb = rgb.reshape(rgb.shape[0], row_lines.shape[1], width + missing, 3)[:, :, :width].reshape(rgb.shape[0], -1, 3)
        return rgb

    def compose_points(self, *args, **kwargs) -> Tensor:  # GridRenderer never lets LineCache get here
        raise AssertionError("gathered composition goes through the per-point engine")

    def synthesize(self, coords: Tensor, w: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.engines.per_point(coords, w)


class GridRenderer(LineCache):
    """``synthesize(coords [B, N, 2], w [B, S]) -> rgb [B, N, 3]`` through grid engines.

    ``max_bytes`` bounds the line tables, ``point_batch`` (a multiple of ``pad``) the
    per-point engine's batches; ``coords`` must hold the same points in every sample. A chunk
    whose block of distinct rows x columns is much larger than the chunk (a rotated or foveated
    grid) goes to the per-point engine: the compose engine only composes whole blocks.
    """

    gathers = False

    def __init__(self, engines: GridEngines, config: GeneratorConfig, *, max_bytes: int, pad: int, point_batch: int) -> None:
        super().__init__(_EngineFamily(engines, family_facts(config)), max_bytes=max_bytes, pad=pad, point_batch=point_batch)


def same_points(coords: Tensor) -> bool:
    """Whether every sample of coords [B, N, 2] has the same points (always so for B = 1)."""
    return coords.shape[0] == 1 or bool((coords == coords[:1]).all())
