"""Engines that take coordinate batches: ONNX export and validation, TensorRT, Triton.

- :func:`export_onnx`: generator -> ``model.onnx`` (synthesis) + ``model.mapping.onnx``,
  metadata inside, ``onnx.checker`` full check, validated against torch (max abs <= 1e-4).
- :mod:`.tensorrt`: ``build_engine`` (ONNX -> plan + sidecar JSON) and ``TensorRTEngine``
  (runs a plan on torch CUDA tensors); needs the ``tensorrt`` package and a GPU.
- :class:`OnnxEngine`: runs an exported model through onnxruntime, on numpy arrays.
- :func:`write_triton_model`: a Triton Inference Server model repository entry
  (onnxruntime, TensorRT or Python backend; :mod:`.triton`).
- :mod:`.triton_plugin`: the ``triton`` render backend (:mod:`.triton_backend`, one
  :mod:`.triton_client` connection per server) and the ``serve`` command, which runs a
  local server (:mod:`.triton_server`); docs/serving.md.
- :mod:`.backends`: the ``onnxruntime`` and ``tensorrt`` render backends (plugin hooks).

The engine I/O is declared once, in :mod:`.spec`.

Two halves with different needs. Running engines (:mod:`.ort_runtime`, :mod:`.ort_grid`,
:mod:`.grid_runtime`, :mod:`.metadata`, :mod:`.integrity`, :mod:`.backends`, the Triton
client and backend) needs numpy and onnxruntime only: the base install. Exporting
(:mod:`.onnx_export`, :mod:`.validate`, :mod:`.pipeline`, :mod:`.quantize`) traces PyTorch
models and writes with ``onnx``: the ``build`` extra. So this package imports nothing on its
own; each name below is imported on first use, and importing a runtime module never pulls in
the export half.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "EngineMetadata": ".metadata",
    "read_onnx_metadata": ".metadata",
    "weights_sha256": ".metadata",
    "DEFAULT_OPSET": ".spec",
    "SUPPORTED_OPSETS": ".spec",
    "EngineSpec": ".spec",
    "TensorSpec": ".spec",
    "mapping_spec": ".spec",
    "synthesis_spec": ".spec",
    "OnnxEngine": ".ort_runtime",
    "choose_providers": ".ort_runtime",
    "OnnxExport": ".onnx_export",
    "estimated_weight_bytes": ".onnx_export",
    "export_onnx": ".onnx_export",
    "needs_external_data": ".onnx_export",
    "export_checkpoint": ".pipeline",
    "write_triton_model": ".triton",
    "ATOL": ".validate",
    "ValidationError": ".validate",
    "ValidationReport": ".validate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
