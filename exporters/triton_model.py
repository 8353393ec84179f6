"""Triton Python-backend model written by cips-deploy: the ONNX engine beside it, run by onnxruntime.

``cips-deploy export --triton-repo DIR --triton-backend python`` copies this file as
``DIR/<name>/1/model.py`` next to ``model.onnx``. It is self-contained (numpy, onnxruntime
and the server's ``triton_python_backend_utils``), so any Triton server with the Python
backend runs it, such as the CPU-only one bundled in the ``nvidia-pytriton`` wheel.

Tensors: the inputs and outputs named in ``config.pbtxt`` (synthesis: coords [B, N, 2],
w [B, S] -> rgb [B, N, 3]; mapping: z [B, S] -> w [B, S]), float32, passed to the ONNX
session by name. Requests of equal shape that the dynamic batcher hands over together are
concatenated along B and run as one session call, then split again in request order.

numpy: Triton's Python backend stub (built against numpy 1) reads tensors wrongly, and
without any error, when numpy 2 is imported in its environment. Colours would be silently
wrong, so the model refuses to load there (``cips-deploy serve`` prepares an environment
with numpy < 2 for the stub).
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def check_numpy():
    """Refuse numpy 2 and any numpy whose tensors do not survive the stub unchanged."""
    major = int(np.__version__.split(".")[0])
    probe = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3.0  # [3, 4]
    back = pb_utils.Tensor("probe", probe).as_numpy()
    if major >= 2 or back.shape != probe.shape or back.dtype != probe.dtype or not np.array_equal(back, probe):
        raise pb_utils.TritonModelException(
            f"cips-deploy refuses to load this model: the Python backend's environment has numpy {np.__version__}, "
            "with which Triton's Python backend stub reads tensors wrongly without an error; "
            "serve it from an environment with numpy<2 (cips-deploy serve prepares one)."
        )


class TritonPythonModel:
    def initialize(self, args):
        check_numpy()
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = parameters.get("cips_deploy.threads", "")
        if threads.isdigit():
            options.intra_op_num_threads = int(threads)
        engine = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs] for request in requests]
        responses = [None] * len(requests)
        groups = {}
        for index, tensors in enumerate(arrays):
            groups.setdefault(tuple(tensor.shape[1:] for tensor in tensors), []).append(index)
        for members in groups.values():
            try:
                feeds = {
                    name: np.ascontiguousarray(np.concatenate([arrays[index][k] for index in members]), dtype=np.float32)
                    for k, name in enumerate(self.inputs)
                }
                results = self.session.run(self.outputs, feeds)
                offset = 0
                for index in members:
                    batch = arrays[index][0].shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(result[offset : offset + batch]))
                        for name, result in zip(self.outputs, results)
                    ]
                    responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                    offset += batch
            except Exception as error:  # one request's bad input must not take the others down
                message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                for index in members:
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
        return responses
