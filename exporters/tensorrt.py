"""TensorRT engines: build a plan from the exported ONNX, and run it on torch CUDA tensors.

Written against the TensorRT 10 Python API. Building needs ``tensorrt`` and an NVIDIA GPU;
everything that decides *what* to build or whether a plan may run (profile shapes, the
sidecar and its checks) is plain Python, so it is tested everywhere.

Optimization profiles come from :mod:`.trt_profiles` (``--min/opt/max-shapes``, several
profiles, checked against the engine spec) or from ``--max-batch``/``--chunk-size``
(:class:`Profile`); ``--builder-verbosity`` sets the builder's logger, and ``--timing-cache``
is read through the bounded reader and written back through the atomic writer. An int8
plan is calibrated by :mod:`.trt_calibration`.

A plan ``model.plan`` always travels with ``model.plan.json``, its sidecar: TensorRT
version, GPU name and compute capability, precision, optimization profile, I/O, the plan's
SHA-256 and the model metadata of :mod:`.metadata`. A plan is tied to the TensorRT version
and the GPU it was built on, so :class:`TensorRTEngine` refuses a plan whose sidecar names
another one, or another model, before TensorRT sees it.

Precision: ``fp32`` clears TensorRT's default TF32 flag, so fp32 means fp32 (and agrees
with torch within 1e-4). ``fp16``/``bf16`` allow reduced-precision kernels for the MLP but
pin the coordinate path (Fourier features and the embedding read, whose texel index reaches
size**2 and is not representable in fp16) to fp32.

Why torch. The plan runs on device buffers, and this runtime uses torch CUDA tensors for
them (allocation, its own CUDA stream, host copies, ordering with the caller's stream via
``wait_stream``) rather than a second CUDA binding (cuda-python, pycuda) that would have to be
installed beside TensorRT. So it stays a ``build``-extra module: the ``tensorrt`` backend
(:mod:`.backends`) imports it only when it is constructed, and takes and returns host numpy
arrays at the contract's boundary; the torch-free runtime never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from cips_deploy.runtime.atomic import atomic_path, read_small_file
from cips_deploy.errors import CipsError
from cips_deploy.contracts.precision import PRECISIONS

if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator

from .metadata import EngineMetadata
from .spec import BATCH, POINTS, SYNTHESIS, EngineSpec, mapping_feeds, mapping_spec, synthesis_spec
from .trt_profiles import VERBOSITIES, Shapes, primary_limits, profile_text
# Piece and plan_pieces lived here before trt_select; they stay importable from here.
from .trt_select import Piece, ProfileContexts, ProfileRange, choose_profile, envelope, plan_pieces, read_profiles  # noqa: F401

SIDECAR_FORMAT = "cips-deploy/tensorrt-engine"
SIDECAR_VERSION = "1"
# ONNX node scopes that stay fp32 whatever the precision (see the module docstring).
FP32_SCOPES = ("/fourier/", "/embedding/")
DEFAULT_WORKSPACE = 4 * 2**30
MAX_TIMING_CACHE = 1 << 30  # timing caches are megabytes; a larger file is not one


def import_tensorrt():
    """The ``tensorrt`` module, or one sentence saying why there is none."""
    try:
        import tensorrt
    except ImportError:
        raise CipsError(
            "TensorRT is not installed here: TensorRT engines need the tensorrt package "
            "(pip install 'cips-deploy[tensorrt]') on a machine with an NVIDIA GPU."
        ) from None
    return tensorrt


def sidecar_path(plan: Path) -> Path:
    """``model.plan`` -> ``model.plan.json``."""
    return plan.with_name(plan.name + ".json")


def gpu_facts(device: int | str | torch.device | None = None) -> dict[str, str]:
    """Name and compute capability of a CUDA device, as the sidecar records them."""
    if not torch.cuda.is_available():
        raise CipsError("TensorRT needs a CUDA GPU, and torch sees none on this machine.")
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    properties = torch.cuda.get_device_properties(device)
    return {"name": properties.name, "compute_capability": f"{properties.major}.{properties.minor}"}


@dataclass(frozen=True)
class Profile:
    """The optimization profile: the engine accepts 1..max_batch samples of 1..max_points points."""

    max_batch: int
    max_points: int

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise CipsError(f"--max-batch must be at least 1, not {self.max_batch}.")
        if self.max_points < 1:
            raise CipsError(f"--chunk-size must be at least 1, not {self.max_points}.")

    def shapes(self, spec: EngineSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input name: (min, opt, max)}. The optimum is the largest batch: a renderer sends
        full chunks except for the last one, so that is the shape worth tuning for."""
        result = {}
        for tensor in spec.inputs:
            low = tensor.concrete(**{BATCH: 1, POINTS: 1})
            high = tensor.concrete(**{BATCH: self.max_batch, POINTS: self.max_points})
            result[tensor.name] = (low, high, high)
        return result


def check_precision(precision: str, compute_capability: str) -> None:
    """Refuse a precision the GPU cannot run: fp16 needs 5.3+, bf16 needs 8.0+ (Ampere)."""
    if precision not in PRECISIONS:
        raise CipsError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    major, minor = (int(part) for part in compute_capability.split("."))
    if precision == "fp16" and (major, minor) < (5, 3):
        raise CipsError(f"This GPU (compute capability {compute_capability}) has no fast fp16; build with --precision fp32.")
    if precision == "bf16" and major < 8:
        raise CipsError(
            f"bf16 needs compute capability 8.0 or newer, and this GPU is {compute_capability}; use fp16 or fp32."
        )


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    metadata: EngineMetadata,
    spec: EngineSpec,
    *,
    precision: str = "fp32",
    profile: Profile | None = None,
    profiles: Sequence[Shapes] | None = None,
    limits: tuple[int, int] | None = None,
    timing_cache: Path | None = None,
    verbosity: str = "warning",
    workspace: int = DEFAULT_WORKSPACE,
    calibration: list | None = None,
) -> dict[str, Any]:
    """Build ``plan_path`` and its sidecar from the ONNX engine; returns the sidecar.

    ``profiles``: the optimization profiles, ``[{input: (min, opt, max)}]`` in order
    (:mod:`.trt_profiles`; the runtime picks one per request, :mod:`.trt_select`), or ``profile``: one
    profile from 1 to ``max_batch`` x ``max_points``. ``limits``: (max batch, chunk size)
    recorded in the sidecar (default: the first profile's ``coords``). ``timing_cache``: a
    file of kernel timings, read if it exists and written back updated (atomically), so later
    builds (other precisions, other profiles) skip re-timing kernels. ``verbosity``: the
    builder log's level (:data:`VERBOSITIES`). ``calibration``: pieces of one shape
    (:func:`.trt_calibration.uniform_batches`) for an int8 plan calibrated on them
    (``precision`` is then fp32, the precision of what int8 does not suit).
    """
    check_verbosity(verbosity)
    if profiles is None:
        if profile is None:
            raise ValueError("build_engine needs profile or profiles")
        profiles = [profile.shapes(spec)]
        limits = limits or (profile.max_batch, profile.max_points)
    limits = limits or primary_limits(profiles)
    cache_bytes = read_timing_cache(timing_cache)  # before TensorRT: a bad file is one sentence
    trt = import_tensorrt()
    facts = gpu_facts()
    check_precision(precision, facts["compute_capability"])
    logger = trt.Logger(getattr(trt.Logger, verbosity.upper()))
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 0 = weakly typed, so that the
    # precision flags below choose kernel precisions.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    # From the file, so that external data beside it is found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise CipsError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors[0] if errors else 'no reason given'}.")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if verbosity == "verbose":  # layer names, precisions and tactics in the plan, for the engine inspector
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if precision == "fp32" and calibration is None:
        config.clear_flag(trt.BuilderFlag.TF32)
    else:
        if calibration is not None:  # implicit int8 from a calibrator (exporters/trt_calibration.py)
            from .trt_calibration import calibration_profile, make_calibrator

            config.clear_flag(trt.BuilderFlag.TF32)
            config.set_flag(trt.BuilderFlag.INT8)
            config.int8_calibrator = make_calibrator(trt, calibration, torch.device("cuda", torch.cuda.current_device()))
            config.set_calibration_profile(calibration_profile(builder, calibration[0]))
        else:
            config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
        _pin_fp32(network, trt)
        obey = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        config.set_flag(obey if obey is not None else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)

    for shapes in profiles:  # profile k of the engine is the k-th given
        optimization_profile = builder.create_optimization_profile()
        for name, (low, optimum, high) in shapes.items():
            optimization_profile.set_shape(name, low, optimum, high)
        if config.add_optimization_profile(optimization_profile) < 0:
            raise CipsError(f"TensorRT refused the optimization profile {profile_text(shapes)}; its log above says why.")

    try:
        cache = config.create_timing_cache(cache_bytes)
    except (RuntimeError, TypeError, ValueError):  # bytes TensorRT cannot read as a cache
        cache = None
    if cache is None:
        raise CipsError(f"{timing_cache} is not a TensorRT timing cache; delete it or choose another --timing-cache file.")
    # ignore_mismatch=True: a cache from another GPU or TensorRT version is dropped, not fatal.
    config.set_timing_cache(cache, ignore_mismatch=True)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CipsError("TensorRT could not build the engine; its log above says why.")
    plan = bytes(serialized)
    with atomic_path(plan_path, overwrite=True) as temporary:
        temporary.write_bytes(plan)
    if timing_cache is not None:
        with atomic_path(timing_cache, overwrite=True) as temporary:
            temporary.write_bytes(bytes(config.get_timing_cache().serialize()))

    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "tensorrt_version": trt.__version__,
        "gpu": facts,
        "precision": "int8" if calibration is not None else precision,
        "profile": profile_text(profiles[0]),  # the first; "profiles" lists all, in the engine's order
        "profiles": [profile_text(shapes) for shapes in profiles],
        "max_batch": limits[0],
        "chunk_size": limits[1],
        "io": spec.to_dict(),
        "plan_sha256": hashlib.sha256(plan).hexdigest(),
        "metadata": metadata.to_strings(),
    }
    with atomic_path(sidecar_path(plan_path), overwrite=True) as temporary:
        temporary.write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def check_verbosity(verbosity: str) -> None:
    if verbosity not in VERBOSITIES:
        raise CipsError(f"Unknown builder verbosity {verbosity!r}; choose one of {', '.join(VERBOSITIES)}.")


def read_timing_cache(path: Path | None) -> bytes:
    """The bytes of the timing cache file, or b"" when there is none yet (a new cache).

    Read with the bounded reader: a FIFO, a device, a link or a file over
    :data:`MAX_TIMING_CACHE` bytes is one sentence, never a hang."""
    if path is None:
        return b""
    path = Path(path)
    if not os.path.lexists(path):
        return b""
    return read_small_file(path, MAX_TIMING_CACHE, "TensorRT timing cache")


def _pin_fp32(network, trt) -> None:
    """Keep every floating-point layer of the coordinate path in fp32 (module docstring)."""
    floating = {trt.float32, trt.float16, trt.bfloat16}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if not any(scope in layer.name for scope in FP32_SCOPES) or layer.type == trt.LayerType.CONSTANT:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(output.dtype not in floating for output in outputs):
            continue  # index arithmetic in int64 is exact already
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)


def read_sidecar(plan: Path) -> dict[str, Any]:
    """The sidecar of ``plan``; one sentence if it is missing or not ours."""
    path = sidecar_path(plan)
    if not plan.is_file():
        raise CipsError(f"No such engine: {plan}.")
    if not path.is_file():
        raise CipsError(f"{plan} has no sidecar {path.name}, so it cannot be checked; build it again with cips-deploy.")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CipsError(f"{path} is not a readable cips-deploy sidecar; build the engine again.") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise CipsError(f"{path} is not a cips-deploy TensorRT sidecar.")
    if sidecar.get("format_version") != SIDECAR_VERSION:
        raise CipsError(f"{path} has sidecar version {sidecar.get('format_version')}; build the engine again.")
    return sidecar


def check_sidecar(
    sidecar: dict[str, Any],
    *,
    plan: Path,
    tensorrt_version: str,
    gpu: dict[str, str],
    plan_bytes: bytes | None = None,
    generator: "Generator | None" = None,
    checkpoint_sha256: str | None = None,
    role: str = SYNTHESIS,
) -> EngineMetadata:
    """Refuse a plan built for another TensorRT, another GPU or another model; returns its metadata.

    ``role``: the engine the plan must be (``synthesis``, or a grid engine's ``lines``/``compose``)."""
    if sidecar.get("tensorrt_version") != tensorrt_version:
        raise CipsError(
            f"{plan.name} was built with TensorRT {sidecar.get('tensorrt_version')}, but this machine has "
            f"TensorRT {tensorrt_version}; build it again here."
        )
    built = sidecar.get("gpu", {})
    if built.get("name") != gpu["name"] or built.get("compute_capability") != gpu["compute_capability"]:
        raise CipsError(
            f"{plan.name} was built for {built.get('name')} (compute capability {built.get('compute_capability')}), "
            f"not for this {gpu['name']} ({gpu['compute_capability']}); build it again here."
        )
    if plan_bytes is not None and hashlib.sha256(plan_bytes).hexdigest() != sidecar.get("plan_sha256"):
        raise CipsError(f"{plan.name} does not match its sidecar (the plan was replaced or damaged); build it again.")
    metadata = EngineMetadata.from_strings(sidecar.get("metadata", {}), source=str(plan))
    metadata.check_role(role, source=str(plan))
    if generator is not None or checkpoint_sha256 is not None:
        metadata.check_matches(source=str(plan), generator=generator, checkpoint_sha256=checkpoint_sha256)
    return metadata


def _padded(tensor: Tensor, batch: int, points: int | None) -> Tensor:
    """``tensor`` [b, n, ...] (or [b, S] with ``points`` None) zero-padded to ``batch`` (and ``points``)."""
    shape = list(tensor.shape)
    shape[0] = batch
    if points is not None:
        shape[1] = points
    padded = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    padded[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return padded


class TensorRTEngine:
    """A TensorRT synthesis plan bound to torch CUDA tensors, run asynchronously on a stream.

    ``synthesize(coords [B, N, 2], w)`` chooses the plan's optimization profile that serves
    B x N best (:func:`.trt_select.choose_profile`: fewest calls, least padding, nearest opt
    shape, lowest index), cuts the request into pieces within that profile, enqueues them on
    the engine's stream through that profile's execution context (one per profile, created on
    first use: :class:`.trt_select.ProfileContexts`) and returns rgb [B, N, 3] on the GPU; the
    caller's current stream waits for the result, so it is ordered like any torch operation.

    ``profiles``: every profile on (batch, points); ``max_batch``/``max_points``: the largest
    batch and points any profile takes in one call (not necessarily together);
    ``batch_range``/``points_range``: (smallest minimum, largest maximum) over the profiles.
    """

    def __init__(
        self,
        plan: str | Path,
        *,
        device: int | str | torch.device | None = None,
        generator: "Generator | None" = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        trt = import_tensorrt()
        self.plan = Path(plan)
        facts = gpu_facts(device)  # first: it explains a missing GPU in one sentence
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        sidecar = read_sidecar(self.plan)
        data = self.plan.read_bytes()
        self.metadata = check_sidecar(
            sidecar,
            plan=self.plan,
            tensorrt_version=trt.__version__,
            gpu=facts,
            plan_bytes=data,
            generator=generator,
            checkpoint_sha256=checkpoint_sha256,
        )
        self.sidecar = sidecar
        self.precision = sidecar["precision"]
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise CipsError(f"TensorRT could not load {self.plan.name}; build it again on this machine.")
            self.stream = torch.cuda.Stream(self.device)
        names = {self.engine.get_tensor_name(i): self.engine.get_tensor_mode(self.engine.get_tensor_name(i))
                 for i in range(self.engine.num_io_tensors)}
        self.spec = synthesis_spec(self.metadata.config, self.metadata.spatial_style)
        self._coords, self._w = self.spec.input_names
        (self._rgb,) = self.spec.output_names
        expected = {name: trt.TensorIOMode.INPUT for name in self.spec.input_names}
        expected.update({name: trt.TensorIOMode.OUTPUT for name in self.spec.output_names})
        if names != expected:
            raise CipsError(
                f"{self.plan.name} has tensors {sorted(names)}, not {', '.join(self.spec.input_names)} -> "
                f"{', '.join(self.spec.output_names)}."
            )
        for name in expected:
            if self.engine.get_tensor_dtype(name) != trt.float32:
                raise CipsError(f"{self.plan.name}: tensor {name} is not float32.")
        # Every profile (the k-th --min/opt/max-shapes), on coords' B and N; w shares B (and N).
        self.profiles = read_profiles(self.engine, [(self._coords, 0), (self._coords, 1)])
        (low_batch, low_points), (self.max_batch, self.max_points) = envelope(self.profiles)
        self.batch_range, self.points_range = (low_batch, self.max_batch), (low_points, self.max_points)
        # The profile switch is enqueued on the engine's stream, the one every call runs on.
        self.contexts = ProfileContexts(self.engine, self.stream.cuda_stream, self.plan.name)
        self._mapping = None

    @property
    def context(self):
        """Profile 0's execution context (the one TensorRT gives a new context)."""
        return self.contexts[0]

    def calls(self, batch: int, points: int) -> tuple[ProfileRange, list[Piece]]:
        """The profile that serves ``batch`` x ``points`` and the pieces it is cut into."""
        profile = choose_profile(self.profiles, (batch, points))
        ranges = list(zip(profile.low, profile.high))
        return profile, plan_pieces(batch, points, ranges[0], ranges[1])

    @property
    def spatial_style(self) -> bool:
        return self.metadata.spatial_style

    def map(self, z: Tensor, truncation: float = 1.0, c: Any = None) -> Tensor:
        """z [B, Z] (and c [B, C] for a class-conditional model) -> w [B, S] with the mapping
        engine beside the plan (onnxruntime on the host)."""
        if self._mapping is None:
            import onnxruntime as ort

            from .engine_files import mapping_path_for

            path = mapping_path_for(self.plan)
            if not path.is_file():
                raise CipsError(f"{self.plan} has no mapping engine beside it ({path.name}).")
            self._mapping = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        spec = mapping_spec(self.metadata.config)
        label = None if c is None else (c.detach().to("cpu", torch.float32).numpy() if hasattr(c, "detach") else c)
        feeds = mapping_feeds(self.metadata.config, z.detach().to("cpu", torch.float32).numpy(), label, source=self.plan.name)
        (w,) = self._mapping.run(spec.output_names, feeds)
        w = torch.from_numpy(w).to(z.device)
        if truncation != 1.0:
            w = self.metadata.w_avg_tensor(z.device).lerp(w, truncation)
        return w

    def synthesize(self, coords: Tensor, w: Tensor) -> Tensor:
        """coords [B, N, 2], w [B, S] (or [B, N, S]) -> rgb [B, N, 3] on the engine's GPU."""
        style = self.metadata.style_dim
        batch, points = coords.shape[0], coords.shape[1]
        expected = [batch, points, style] if self.spatial_style else [batch, style]
        if coords.dim() != 3 or coords.shape[-1] != 2 or list(w.shape) != expected:
            raise CipsError(f"{self.plan.name} takes coords [B, N, 2] and w {expected}, not {list(coords.shape)} and {list(w.shape)}.")
        coords = coords.to(self.device, torch.float32)
        w = w.to(self.device, torch.float32)
        rgb = torch.empty(batch, points, 3, device=self.device)
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the inputs were produced on the caller's stream
        profile, pieces = self.calls(batch, points)
        with torch.cuda.device(self.device):  # a context made now belongs to the engine's GPU
            context = self.contexts[profile.index] if pieces else None
        # Temporaries are allocated on the engine's stream, so the caching allocator reuses
        # their memory only after the kernels that read them.
        with torch.cuda.stream(self.stream):
            for piece in pieces:
                b0, b1, n0, n1 = piece.b0, piece.b1, piece.n0, piece.n1
                piece_coords = coords[b0:b1, n0:n1]
                piece_w = w[b0:b1, n0:n1] if self.spatial_style else w[b0:b1]
                if piece.padded:  # below the profile's minimum: zeros fill it, and are dropped
                    piece_coords = _padded(piece_coords, piece.batch, piece.points)
                    piece_w = _padded(piece_w, piece.batch, piece.points if self.spatial_style else None)
                whole_rows = n0 == 0 and n1 == points and not piece.padded
                out = rgb[b0:b1] if whole_rows else torch.empty(piece.batch, piece.points, 3, device=self.device)
                self._enqueue(context, piece_coords.contiguous(), piece_w.contiguous(), out)
                if not whole_rows:
                    rgb[b0:b1, n0:n1].copy_(out[: b1 - b0, : n1 - n0])
        caller.wait_stream(self.stream)
        return rgb

    __call__ = synthesize

    def _enqueue(self, context: Any, coords: Tensor, w: Tensor, out: Tensor) -> None:
        context.set_input_shape(self._coords, tuple(coords.shape))
        context.set_input_shape(self._w, tuple(w.shape))
        context.set_tensor_address(self._coords, coords.data_ptr())
        context.set_tensor_address(self._w, w.data_ptr())
        context.set_tensor_address(self._rgb, out.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.plan.name} for shapes {list(coords.shape)}, {list(w.shape)}.")
