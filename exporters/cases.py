"""One validation case's result, shared by the per-point validator (:mod:`.validate`) and
the grid engines' (:mod:`.line_engines`), so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CaseResult:
    engine: str
    case: str
    shapes: str
    max_abs: float
    atol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.atol


def compare(engine: str, case: str, shapes: str, expected, got: np.ndarray, atol: float) -> CaseResult:
    """The case's result: max abs difference of ``got`` (numpy) from ``expected`` (a CPU torch tensor or numpy)."""
    expected = np.asarray(expected.numpy() if hasattr(expected, "numpy") else expected)
    if tuple(got.shape) != tuple(expected.shape):
        return CaseResult(engine, case, f"{shapes} -> {list(got.shape)}", float("inf"), atol)
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    max_abs = float(difference.max()) if difference.size else 0.0
    return CaseResult(engine, case, shapes, max_abs, atol)
