"""A line-factored model's line and compose engines on onnxruntime (:mod:`.grid_runtime`), numpy only.

``OnnxGridEngines.open(engine)`` finds ``model.lines.onnx`` and ``model.compose.onnx`` beside
an opened per-point engine ``model.onnx``, verifies them as the per-point engine was verified,
refuses files of other weights, and runs them on the same execution providers. Every call
takes and returns host float32 numpy arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cips_deploy.errors import CipsError

from . import integrity
from .engine_files import grid_engine_files
from .host_arrays import host_float32
from .metadata import PRECISION_KEY, EngineMetadata, read_onnx_props
from .ort_runtime import OnnxEngine, _check_session_names, _provider_options, session_options
from .spec import COMPOSE, LINES, grid_spec

__all__ = ["OnnxGridEngines", "grid_engine_files"]


class OnnxGridEngines:
    """lines, compose (onnxruntime sessions) and the per-point engine they came with."""

    def __init__(self, engine: OnnxEngine, files: dict[str, Path], *, verify: str = "if-recorded") -> None:
        import onnxruntime as ort

        self.engine = engine
        main = engine.metadata
        options = session_options(getattr(engine, "threads", 0))
        pairs = _provider_options(list(engine.providers), engine.device_id)
        self.sessions, self.specs = {}, {}
        for role, file in files.items():
            if verify != "no":
                integrity.verify(file, required=verify == "required")
            props = read_onnx_props(file)
            meta = EngineMetadata.from_strings(props, source=str(file))
            meta.check_role(role, source=str(file))
            if meta.weights_sha256 != main.weights_sha256 or meta.config != main.config:
                raise CipsError(f"{file} belongs to a different model than {engine.path}; export them together again.")
            if meta.layer_styles != main.layer_styles:  # ws [B, L, S] into an engine of w [B, S], or the reverse
                kind = "per-layer styles" if meta.layer_styles else "one style per sample"
                raise CipsError(f"{file} takes {kind}, unlike {engine.path}; export them together again.")
            # fp32 grid engines beside an fp16 engine would render grids at another precision than points.
            precision = props.get(PRECISION_KEY, "fp32")
            if precision != engine.precision:
                raise CipsError(f"{file} is an {precision} engine beside the {engine.precision} engine {engine.path}; "
                                "export them together again.")
            spec = grid_spec(role, meta)
            session = ort.InferenceSession(
                str(file), options, providers=[name for name, _ in pairs], provider_options=[opts for _, opts in pairs]
            )
            _check_session_names(session, spec.input_names, spec.output_names, file)
            self.sessions[role], self.specs[role] = session, spec
        self.features = int(self.specs[LINES].outputs[0].shape[2])  # F: floats of one line value

    @classmethod
    def open(cls, engine: OnnxEngine, *, verify: str = "if-recorded") -> "OnnxGridEngines | None":
        """The grid engines beside ``engine`` (one style per sample only), or None."""
        files = grid_engine_files(engine.path)
        if files is None or engine.spatial_style:
            return None
        return cls(engine, files, verify=verify)

    def lines(self, v: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """v [B, H], u [B, W], w [B, S] -> row_lines [B, H, F], column_lines [B, W, F]."""
        inputs = {"v": host_float32(v), "u": host_float32(u), "w": host_float32(w)}
        rows, columns = self.sessions[LINES].run(self.specs[LINES].output_names, inputs)
        return rows, columns

    def compose(self, rows: np.ndarray, columns: np.ndarray, w: np.ndarray) -> np.ndarray:
        """row_lines [B, H, F], column_lines [B, W, F], w [B, S] -> rgb [B, H W, 3]."""
        inputs = {"row_lines": host_float32(rows), "column_lines": host_float32(columns), "w": host_float32(w)}
        (rgb,) = self.sessions[COMPOSE].run(self.specs[COMPOSE].output_names, inputs)
        return rgb

    def per_point(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] -> rgb [B, N, 3] through the per-point engine."""
        return self.engine.synthesize(coords, w)
