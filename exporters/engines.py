"""The built-in engines of ``cips-deploy export``: ``onnx`` and ``trt``, as a plugin.

Registered through ``register_exporters`` exactly as a third party's engine is
(:class:`cips_deploy.contracts.exporter.Exporter`); both run :func:`.pipeline.export_checkpoint`,
which checks every option of the request before doing expensive work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cips_deploy.contracts.exporter import Exporter
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.precision import PRECISIONS
from cips_deploy.errors import CipsError


class _PipelineExporter(Exporter):
    """An engine that :func:`.pipeline.export_checkpoint` builds (it checks precision itself)."""

    families = ()  # every installed family

    def export(self, source: Path, *, output: Path | None, overwrite: bool, precision: str, **options: Any):
        from cips_deploy._compat import require_build_extra

        require_build_extra("Exporting an engine")  # tracing needs the PyTorch model
        from .pipeline import export_checkpoint  # onnx and the exporters load only when exporting

        if options.pop("web_runtime", None) is not None:
            raise CipsError(f"--web-runtime is for the web engine, not {self.name}.")
        return export_checkpoint(source, engine=self.name, output=output, overwrite=overwrite, precision=precision, **options)


class OnnxExporter(_PipelineExporter):
    name = "onnx"
    description = "validated ONNX synthesis and mapping engines (coords, w -> rgb); fp16 and int8 with a quality gate"
    precisions = ("fp32", "fp16")


class TensorRTExporter(_PipelineExporter):
    name = "trt"
    description = "TensorRT plan with an optimization profile over B and N, plus sidecar JSON (needs tensorrt and a GPU)"
    precisions = PRECISIONS


@hookimpl
def register_exporters(register):
    register(OnnxExporter())
    register(TensorRTExporter())
