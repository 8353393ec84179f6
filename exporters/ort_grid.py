"""A line-factored model's line and compose engines on onnxruntime (:mod:`.grid_runtime`).

``OnnxGridEngines.open(engine)`` finds ``model.lines.onnx`` and ``model.compose.onnx`` beside
an opened per-point engine ``model.onnx``, verifies them as the per-point engine was verified,
refuses files of other weights, and runs them on the same execution providers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cips_deploy.errors import CipsError

from . import integrity
from .line_engines import ROLES, line_engine_path
from .metadata import read_onnx_metadata
from .ort_runtime import OnnxEngine, _check_session_names, _provider_options
from .spec import COMPOSE, LINES, compose_spec, lines_spec


def grid_engine_files(path: Path) -> dict[str, Path] | None:
    """{role: file} when both grid engines lie beside ``path``, else None."""
    files = {role: line_engine_path(Path(path), role) for role in ROLES}
    return files if all(file.is_file() for file in files.values()) else None


class OnnxGridEngines:
    """lines, compose (onnxruntime sessions) and the per-point engine they came with."""

    def __init__(self, engine: OnnxEngine, files: dict[str, Path], *, verify: str = "if-recorded") -> None:
        import onnxruntime as ort

        self.engine = engine
        main = engine.metadata
        options = ort.SessionOptions()
        options.log_severity_level = 3
        pairs = _provider_options(list(engine.providers), engine.device_id)
        self.sessions, self.specs = {}, {}
        for role, file in files.items():
            if verify != "no":
                integrity.verify(file, required=verify == "required")
            meta = read_onnx_metadata(file)
            meta.check_role(role, source=str(file))
            if meta.weights_sha256 != main.weights_sha256 or meta.config != main.config:
                raise CipsError(f"{file} belongs to a different model than {engine.path}; export them together again.")
            features = int(meta.io["outputs"][0]["shape"][2]) if role == LINES else int(meta.io["inputs"][0]["shape"][2])
            spec = (lines_spec if role == LINES else compose_spec)(main.config, features)
            session = ort.InferenceSession(
                str(file), options, providers=[name for name, _ in pairs], provider_options=[opts for _, opts in pairs]
            )
            _check_session_names(session, spec.input_names, spec.output_names, file)
            self.sessions[role], self.specs[role] = session, spec

    @classmethod
    def open(cls, engine: OnnxEngine, *, verify: str = "if-recorded") -> "OnnxGridEngines | None":
        """The grid engines beside ``engine`` (one style per sample only), or None."""
        files = grid_engine_files(engine.path)
        if files is None or engine.spatial_style:
            return None
        return cls(engine, files, verify=verify)

    def lines(self, v: Tensor, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """v [B, H], u [B, W], w [B, S] -> row_lines [B, H, F], column_lines [B, W, F]."""
        rows, columns = self.sessions[LINES].run(self.specs[LINES].output_names, {"v": _numpy(v), "u": _numpy(u), "w": _numpy(w)})
        return torch.from_numpy(rows), torch.from_numpy(columns)

    def compose(self, rows: Tensor, columns: Tensor, w: Tensor) -> Tensor:
        """row_lines [B, H, F], column_lines [B, W, F], w [B, S] -> rgb [B, H W, 3]."""
        inputs = {"row_lines": _numpy(rows), "column_lines": _numpy(columns), "w": _numpy(w)}
        (rgb,) = self.sessions[COMPOSE].run(self.specs[COMPOSE].output_names, inputs)
        return torch.from_numpy(rgb)

    def per_point(self, coords: Tensor, w: Tensor) -> Tensor:
        """coords [B, N, 2], w [B, S] -> rgb [B, N, 3] through the per-point engine."""
        return self.engine.synthesize(coords, w)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()
