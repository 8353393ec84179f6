"""Engines that take coordinate batches: ONNX export and validation, TensorRT, Triton.

- :func:`export_onnx`: generator -> ``model.onnx`` (synthesis) + ``model.mapping.onnx``,
  metadata inside, ``onnx.checker`` full check, validated against torch (max abs <= 1e-4).
- :mod:`.tensorrt`: ``build_engine`` (ONNX -> plan + sidecar JSON) and ``TensorRTEngine``
  (runs a plan on torch CUDA tensors); needs the ``tensorrt`` package and a GPU.
- :class:`OnnxEngine`: runs an exported model through onnxruntime.
- :func:`write_triton_model`: a Triton Inference Server model repository entry
  (onnxruntime, TensorRT or Python backend; :mod:`.triton`).
- :mod:`.triton_plugin`: the ``triton`` render backend (:mod:`.triton_backend`, one
  :mod:`.triton_client` connection per server) and the ``serve`` command, which runs a
  local server (:mod:`.triton_server`); docs/serving.md.
- :mod:`.backends`: the ``onnxruntime`` and ``tensorrt`` render backends (plugin hooks).

The engine I/O is declared once, in :mod:`.spec`.
"""

from .metadata import EngineMetadata, read_onnx_metadata, weights_sha256
from .onnx_export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    OnnxExport,
    estimated_weight_bytes,
    export_onnx,
    needs_external_data,
)
from .ort_runtime import OnnxEngine, choose_providers
from .pipeline import export_checkpoint
from .spec import EngineSpec, TensorSpec, mapping_spec, synthesis_spec
from .triton import write_triton_model
from .validate import ATOL, ValidationError, ValidationReport

__all__ = [
    "ATOL",
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "EngineMetadata",
    "EngineSpec",
    "OnnxEngine",
    "OnnxExport",
    "TensorSpec",
    "ValidationError",
    "ValidationReport",
    "choose_providers",
    "estimated_weight_bytes",
    "export_checkpoint",
    "export_onnx",
    "mapping_spec",
    "needs_external_data",
    "read_onnx_metadata",
    "synthesis_spec",
    "weights_sha256",
    "write_triton_model",
]
