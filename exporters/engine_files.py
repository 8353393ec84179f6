"""Where an exported model's engines lie beside each other: file names only, no imports.

``cips-deploy export`` writes one model as several files named after the synthesis engine
``model.onnx`` (or ``model.plan``): the mapping engine ``model.mapping.onnx`` (ONNX for
plans too: it runs on the host) and, for line-factored families, the grid engines
``model.lines.onnx`` and ``model.compose.onnx`` (docs/line-engines.md). An engine for
per-point styles (``export --spatial-style``) of the same weights may lie beside it as
``model.spatial.onnx``: a runtime given ``model.onnx`` takes it for w [B, N, S] (the bundled
demo ships one, so ``render --blend-seed`` needs no export). The exporters and the runtimes
find each other's files through these functions.
"""

from __future__ import annotations

from pathlib import Path

from .spec import COMPOSE, LINES

ROLES = (LINES, COMPOSE)  # the grid engines' roles, in the order they run


def mapping_path_for(path: Path) -> Path:
    """``model.onnx`` -> ``model.mapping.onnx`` (also for ``model.plan``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.mapping.onnx")


def line_engine_path(path: Path, role: str) -> Path:
    """``model.onnx`` -> ``model.lines.onnx`` / ``model.compose.onnx`` (also for ``.plan``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{role}{path.suffix}")


def spatial_path_for(path: Path) -> Path:
    """``model.onnx`` -> ``model.spatial.onnx``: the same weights exported for per-point styles."""
    path = Path(path)
    return path.with_name(f"{path.stem}.spatial{path.suffix}")


def grid_engine_files(path: Path) -> dict[str, Path] | None:
    """{role: file} when both grid engines lie beside ``path``, else None."""
    files = {role: line_engine_path(Path(path), role) for role in ROLES}
    return files if all(file.is_file() for file in files.values()) else None
