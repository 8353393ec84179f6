"""Run exported engines with onnxruntime, on numpy arrays: no torch, no onnx.

:class:`OnnxEngine` opens ``model.onnx`` (and ``model.mapping.onnx`` beside it, when there)
and runs coordinate batches: coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3], host
float32 numpy arrays. Execution providers are chosen automatically (TensorRT EP, then CUDA
EP, then CPU: the first that this onnxruntime build has) or by name.

One path keeps torch: given torch CUDA tensors while running on a GPU provider,
:meth:`OnnxEngine.synthesize` binds them in place (I/O binding, no host round trip) and
returns a torch CUDA tensor. It is taken only for such inputs, so torch is imported only
where the caller already has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cips_deploy.errors import CipsError

from . import integrity
from .engine_files import mapping_path_for
from .host_arrays import host_float32, is_torch_cuda
from .metadata import PRECISION_KEY, EngineMetadata, read_onnx_metadata, read_onnx_props
from .spec import MAPPING, SYNTHESIS, mapping_feeds, mapping_spec, synthesis_spec

if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator

# Short names accepted on the command line, in the automatic order of preference.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")

# The precision an engine's metadata records (written by .quantize; fp32 when absent) and the
# precision of the onnxruntime kernel that does its per-point products, the bulk of its FLOPs
# (bench measures a case against that kernel's peak: cips_deploy.measure.peaks). Read off the
# graphs that .quantize writes for the demo model, as onnxruntime 1.32 optimises them on a CPU
# (tests/tools/test_bench_engine.py checks the graphs):
# - fp16: float16 MatMuls (on a CPU without an fp16 kernel onnxruntime casts around its fp32
#   one, and so does the fp16 peak's graph: the peaks module says why that is the right peak);
# - int8 (dynamic): every per-point product is a MatMulInteger (the export traces the style
#   on the inputs, so their weights are constants: .quantize), the int8 kernel. (Older int8
#   engines, whose export folded the style into run-time weights, left their products
#   float32: against the int8 peak their figure is a floor);
# - int8-static: its QDQ products become QLinearMatMul, the int8 kernel (about half of them
#   on the demo, the rest float32: against the int8 peak the figure is a floor).
PRODUCT_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8-static": "int8"}


def choose_providers(requested: str | Sequence[str] | None = None, available: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use, best first, always ending with the CPU.

    ``requested``: None or ``"auto"`` (every available one of TensorRT, CUDA, CPU), or
    names (``"cuda"``, ``"CUDAExecutionProvider"``, or a comma-separated list); a name that
    this onnxruntime lacks is an error rather than a silent CPU fallback.
    """
    import onnxruntime as ort

    available = list(available if available is not None else ort.get_available_providers())
    if requested is None or requested == "auto":
        return [name for name in PROVIDERS.values() if name in available]
    if isinstance(requested, str):
        requested = [part.strip() for part in requested.split(",") if part.strip()]
    chosen = []
    for name in requested:
        full = PROVIDERS.get(name.lower(), name)
        if full not in PROVIDERS.values():
            raise CipsError(f"Unknown onnxruntime provider {name!r}; choose from auto, {', '.join(PROVIDERS)}.")
        if full not in available:
            hint = " (install onnxruntime-gpu for the GPU providers)" if full in GPU_PROVIDERS else ""
            raise CipsError(
                f"This onnxruntime has no {full}; it offers {', '.join(available)}{hint}."
            )
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # for any node a GPU provider does not take
    return chosen


def _provider_options(providers: list[str], device_id: int) -> list[tuple[str, dict]]:
    """Options that keep fp32 engines fp32: the CUDA EP would use TF32 matrix products on
    Ampere and newer, which breaks the 1e-4 agreement with torch."""
    options = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            options.append((name, {"device_id": device_id, "use_tf32": 0}))
        elif name == "TensorrtExecutionProvider":
            options.append((name, {"device_id": device_id, "trt_fp16_enable": False}))
        else:
            options.append((name, {}))
    return options


class OnnxEngine:
    """An exported synthesis engine (plus its mapping engine, when present) on onnxruntime."""

    def __init__(
        self,
        path: str | Path,
        *,
        providers: str | Sequence[str] | None = None,
        device_id: int = 0,
        generator: "Generator | None" = None,
        checkpoint_sha256: str | None = None,
        verify: str = "if-recorded",
        threads: int = 0,
    ) -> None:
        """``threads``: onnxruntime's intra-op threads (0: its own choice). ``verify``: ``required`` (the content hash must be there and match: engines that
        stand in for a checkpoint), ``if-recorded`` (engines given as they are) or ``no``
        (an export validating what it has just written)."""
        import onnxruntime as ort

        self.path = Path(path)
        if verify != "no":
            integrity.verify(self.path, required=verify == "required")
        props = read_onnx_props(self.path)
        self.metadata: EngineMetadata = EngineMetadata.from_strings(props, source=str(self.path))
        self.precision = props.get(PRECISION_KEY, "fp32")  # fp32, fp16, int8, int8-static
        self.metadata.check_role(SYNTHESIS, source=str(self.path))
        if generator is not None or checkpoint_sha256 is not None:
            self.metadata.check_matches(source=str(self.path), generator=generator, checkpoint_sha256=checkpoint_sha256)
        chosen = choose_providers(providers)
        self.threads = int(threads)
        options = session_options(self.threads)
        pairs = _provider_options(chosen, device_id)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=[name for name, _ in pairs], provider_options=[opts for _, opts in pairs]
        )
        self.providers = self.session.get_providers()
        self.spec = synthesis_spec(self.metadata.config, self.metadata.spatial_style, self.metadata.layer_styles)
        _check_session_names(self.session, self.spec.input_names, self.spec.output_names, self.path)
        self.device_id = device_id
        mapping_file = mapping_path_for(self.path)
        self.mapping_session = None
        if mapping_file.is_file():
            if verify != "no":
                integrity.verify(mapping_file, required=verify == "required")
            mapping_meta = read_onnx_metadata(mapping_file)
            mapping_meta.check_role(MAPPING, source=str(mapping_file))
            if mapping_meta.weights_sha256 != self.metadata.weights_sha256:
                raise CipsError(f"{mapping_file} belongs to a different model than {self.path}; export them together again.")
            # The mapping engine is a few small products per sample: the CPU is the right place.
            self.mapping_session = ort.InferenceSession(str(mapping_file), options, providers=["CPUExecutionProvider"])
            self.mapping_spec = mapping_spec(self.metadata.config)
            _check_session_names(
                self.mapping_session, self.mapping_spec.input_names, self.mapping_spec.output_names, mapping_file
            )

    @property
    def spatial_style(self) -> bool:
        return self.metadata.spatial_style

    @property
    def product_precision(self) -> str:
        """The precision of the kernel that does this engine's per-point products (fp32 for a
        precision this version does not know)."""
        return PRODUCT_PRECISION.get(self.precision, "fp32")

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in GPU_PROVIDERS

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] float32 (and c [B, C], a class-conditional model's one-hot labels) -> w [B, S]
        float32 through the mapping engine, truncated towards w_avg in W."""
        if self.mapping_session is None:
            raise CipsError(f"{self.path} has no mapping engine beside it ({mapping_path_for(self.path).name}).")
        feeds = mapping_feeds(self.metadata.config, host_float32(z), None if c is None else host_float32(c), source=self.path.name)
        (w,) = self.mapping_session.run(self.mapping_spec.output_names, feeds)
        return self.metadata.truncate(w, truncation)

    def synthesize(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] (or [B, N, S]) float32 -> rgb [B, N, 3] float32 on the host
        (torch CUDA tensors in on a GPU provider: a torch CUDA tensor out, see the module text)."""
        self._check_shapes(coords, w)
        if self.on_gpu and is_torch_cuda(coords):
            return self._run_on_device(coords, w)
        inputs = dict(zip(self.spec.input_names, (host_float32(coords), host_float32(w))))
        (rgb,) = self.session.run(self.spec.output_names, inputs)
        return rgb

    __call__ = synthesize

    def _run_on_device(self, coords: Any, w: Any) -> Any:
        """Bind torch CUDA tensors directly (no host round trip) through an I/O binding."""
        import torch  # the caller gave torch CUDA tensors: torch is there

        w = w.to(coords.device) if hasattr(w, "to") else torch.from_numpy(host_float32(w)).to(coords.device)
        coords = coords.float().contiguous()
        w = w.float().contiguous()
        rgb = torch.empty(coords.shape[0], coords.shape[1], 3, device=coords.device)
        binding = self.session.io_binding()
        index = coords.device.index or 0
        for name, tensor in zip(self.spec.input_names, (coords, w)):
            binding.bind_input(name, "cuda", index, np.float32, list(tensor.shape), tensor.data_ptr())
        binding.bind_output(self.spec.output_names[0], "cuda", index, np.float32, list(rgb.shape), rgb.data_ptr())
        # onnxruntime runs on its own stream: the inputs must be complete before it starts.
        torch.cuda.current_stream(coords.device).synchronize()
        self.session.run_with_iobinding(binding)
        return rgb

    def _check_shapes(self, coords: Any, w: Any) -> None:
        style = self.metadata.style_dim
        if len(coords.shape) != 3 or coords.shape[-1] != 2:
            raise CipsError(f"Coordinates must have shape [B, N, 2], not {list(coords.shape)}.")
        expected = [coords.shape[0], coords.shape[1], style] if self.spatial_style else [coords.shape[0], style]
        if self.metadata.layer_styles:
            expected = [coords.shape[0], self.spec.inputs[1].shape[1], style]
        if list(w.shape) != expected:
            kind = "per-point styles [B, N, S]" if self.spatial_style else "one style per sample [B, S]"
            kind = "per-layer styles [B, L, S]" if self.metadata.layer_styles else kind
            raise CipsError(f"{self.path.name} takes {kind}: w must have shape {expected}, not {list(w.shape)}.")


def _check_session_names(session, inputs: list[str], outputs: list[str], path: Path) -> None:
    """Refuse an engine whose graph does not declare the spec's inputs and outputs."""
    got_inputs = [value.name for value in session.get_inputs()]
    got_outputs = [value.name for value in session.get_outputs()]
    if got_inputs != inputs or got_outputs != outputs:
        raise CipsError(
            f"{path.name} takes {got_inputs} -> {got_outputs}, not the engine contract's {inputs} -> {outputs}."
        )


def session_options(threads: int = 0):
    """onnxruntime session options of every engine session: warnings and errors only, and
    ``threads`` intra-op threads when given (bench runs a case on the thread count of the peak beside it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options
