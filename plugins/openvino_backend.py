"""The ``openvino`` backend: exported ONNX engines on Intel's OpenVINO runtime (CPU).

``model`` is an exported ``.onnx`` synthesis engine (its ``.mapping.onnx`` beside it, as
``cips-deploy export`` writes them), or a checkpoint / Generator, which is exported once
into the onnxruntime backend's export cache (:func:`cips_deploy.exporters.backends.exported_engine`)
and run from there (exporting needs the ``build`` extra: torch). I/O is the engine contract:
host float32 numpy arrays, coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3]; OpenVINO
takes the dynamic B and N as they are. Running an engine needs numpy and OpenVINO only.

Precision. On CPUs with AVX512-BF16 or AMX, OpenVINO's default ``INFERENCE_PRECISION_HINT``
is bf16 for the whole graph, coordinate stage included, which ruins our output (max abs
error 1.5 on the demo model, 9.5 on a random small one). So this backend forces ``f32``
unless asked otherwise (``precision=bf16``), and says what bf16 costs when it is asked.

OpenVINO is an optional dependency (``pip install 'cips-deploy[openvino]'``): this module
imports without it, so the plugin always loads; constructing the backend without it ends
in one sentence that says what to install.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError, first_line
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import Parameter
from cips_deploy.exporters.host_arrays import host_float32
from cips_deploy.exporters.spec import mapping_feeds

# OpenVINO's names for the precisions we allow, from the names users type.
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16"}
BF16_CAVEAT = (
    "openvino precision=bf16: every layer, the coordinate features included, runs in bfloat16; "
    "expect visible errors (max abs 1.5 on the bundled demo model against f32) and check the images."
)


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise CipsError("The openvino backend needs OpenVINO: pip install 'cips-deploy[openvino]'.") from None
    return openvino


class OpenVinoBackend(Backend):
    name = "openvino"
    description = "OpenVINO on exported .onnx engines or checkpoints (exported on the fly); CPU; float32 unless precision=bf16."
    # The options this backend takes (``--backend-option NAME=VALUE``), declared as topologies
    # declare theirs.
    options = (
        Parameter("precision", str, "f32", "f32 (forced by default) or bf16 (faster, with visible errors)", choices=("f32", "fp32", "bf16")),
        Parameter("threads", int, 0, "inference threads; 0: OpenVINO's choice", minimum=0),
        Parameter("opset", int, 17, "ONNX opset when a checkpoint is exported on the fly", minimum=13, maximum=20),
    )

    def __init__(self, model: Any, *, device: str = "cpu", precision: Any = "f32", threads: Any = 0, opset: Any = 17, **options: Any) -> None:
        if options:
            raise CipsError(f"The openvino backend has no option {sorted(options)[0]!r} (its options: precision, threads, opset).")
        self.precision = _check_precision(precision)
        threads, opset = _integer("threads", threads, 0, None), _integer("opset", opset, 13, 20)
        if str(device).strip().partition(":")[0] != "cpu":
            raise CipsError(f"The openvino backend runs on the CPU here, not on {device!r}.")
        ov = import_openvino()
        from cips_deploy.exporters import integrity
        from cips_deploy.exporters.backends import exported_engine
        from cips_deploy.exporters.engine_files import mapping_path_for
        from cips_deploy.exporters.metadata import PRECISION_KEY, EngineMetadata, read_onnx_metadata, read_onnx_props

        if isinstance(model, (str, Path)) and Path(model).suffix == ".onnx":
            path = Path(model)
            integrity.verify(path, required=False)  # as onnxruntime does: an engine given as it is
        else:
            path = exported_engine(model, opset=opset)
        props = read_onnx_props(path)
        self.metadata = EngineMetadata.from_strings(props, source=str(path))
        self.metadata.check_role("synthesis", source=str(path))
        # bench's peak is that of the kernel doing the products. OpenVINO computes an fp16 engine,
        # and a dynamic int8 one (its MatMulIntegers become conversions around f32
        # FullyConnected), in its inference precision; the QDQ products of a static int8 engine
        # its low-precision transformations run in int8 (checked on the demo's runtime models).
        self.engine_precision = props.get(PRECISION_KEY, "fp32")
        self.product_precision = "int8" if self.engine_precision == "int8-static" else self.precision
        self.config = self.metadata.config
        self.path = path
        if self.precision == "bf16":
            print(BF16_CAVEAT, file=sys.stderr)
        properties = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            self._synthesis = core.compile_model(str(path), "CPU", properties).create_infer_request()
            mapping = mapping_path_for(path)
            self._mapping = None
            if mapping.is_file():
                integrity.verify(mapping, required=False)
                mapping_meta = read_onnx_metadata(mapping)
                if mapping_meta.weights_sha256 != self.metadata.weights_sha256:
                    raise CipsError(f"{mapping} belongs to a different model than {path}; export them together again.")
                self._mapping = core.compile_model(str(mapping), "CPU", properties).create_infer_request()
        except RuntimeError as error:  # OpenVINO reports unreadable models and bad properties so
            first = first_line(error) or type(error).__name__
            raise CipsError(f"OpenVINO cannot compile {path.name}: {first}") from None

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] (and c [B, C] for a class-conditional model) -> w [B, S] (host float32) through
        the mapping engine, truncated towards w_avg."""
        if self._mapping is None:
            raise CipsError(f"{self.path} has no mapping engine beside it; export the checkpoint again.")
        feeds = mapping_feeds(self.config, host_float32(z), None if c is None else host_float32(c), source=self.path.name)
        w = self._infer(self._mapping, feeds, "w")
        return self.metadata.truncate(w, truncation)

    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] or [B, N, S] (host float32) -> rgb [B, N, 3] (host float32)."""
        expected = 3 if self.metadata.spatial_style else 2
        if len(w.shape) != expected:
            kind = "per-point styles w [B, N, S]" if self.metadata.spatial_style else "one style per sample w [B, S]"
            raise CipsError(f"{self.path.name} takes {kind}, not w of shape {list(w.shape)}.")
        return self._infer(self._synthesis, {"coords": host_float32(coords), "w": host_float32(w)}, "rgb")

    @staticmethod
    def _infer(request, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        results = request.infer(inputs)
        for port, value in results.items():
            if output in port.get_names():
                return np.array(value, dtype=np.float32, copy=True)  # the request reuses its buffer
        raise CipsError(f"The OpenVINO model has no output {output!r}.")

    def close(self) -> None:
        self._synthesis = self._mapping = None


def _check_precision(value: Any) -> str:
    name = str(value).strip().lower()
    if name not in PRECISIONS:
        raise CipsError(f"The openvino backend's precision is f32 or bf16, not {value!r}.")
    return PRECISIONS[name]


def _integer(name: str, value: Any, minimum: int, maximum: int | None) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise CipsError(f"The openvino backend's option {name} is a whole number, not {value!r}.") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise CipsError(f"The openvino backend's option {name} must be {bound}, not {number}.")
    return number


@hookimpl
def register_backends(register):
    register(OpenVinoBackend)
