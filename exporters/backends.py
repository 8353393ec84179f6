"""The ``onnxruntime`` and ``tensorrt`` render backends, as a plugin.

Registered through the same hook a third-party plugin uses (``register_backends``); the
``onnx`` and ``trt`` exporters are :mod:`.engines`. The backends follow
:class:`cips_deploy.contracts.backend.Backend`: built as ``Backend(model, device=..., **options)``,
they take and return host float32 numpy arrays, coords [B, N, 2], w [B, S] or [B, N, S] ->
rgb [B, N, 3].

``onnxruntime`` (numpy + onnxruntime: the torch-free runtime): ``model`` is an exported
``.onnx`` engine (``model_suffixes``: a ``.onnx`` file given with no backend named picks this
backend), a checkpoint (exported once into the cache of :mod:`.cache`, keyed by its hash) or
a Generator (cached by the hash of its weights). Exporting needs the ``build`` extra (torch);
without it a checkpoint is refused in one sentence. Options: ``providers`` (``auto``,
``tensorrt``, ``cuda``, ``cpu`` or a comma list), ``engine`` (an ``.onnx`` file to use for the
checkpoint ``model``; refused unless it was exported from it), ``opset``.

``tensorrt``: ``model`` is a ``.plan`` built by ``cips-deploy export --engine trt``, or a
checkpoint together with the option ``engine=<plan>`` (refused unless built from it). Its
runtime (:mod:`.tensorrt`) works on torch CUDA tensors and is imported only when this
backend is constructed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cips_deploy._compat import require_build_extra
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.footprint import BYTES_PER_FLOAT, RENDERER_FLOATS_PER_POINT, render_bytes_per_point
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import Parameter
from cips_deploy.errors import CipsError
from cips_deploy.runtime.hashing import file_sha256

from .engine_files import spatial_path_for
from .grid_runtime import GridRenderer, compose_floats_per_point
from .host_arrays import LINE_CACHE_MB, PAD_POINTS, host_float32, pad_rows, same_points
from .metadata import EngineMetadata
from .ort_runtime import OnnxEngine, choose_providers
from .spec import DEFAULT_OPSET, SUPPORTED_OPSETS


def _reject_unknown(backend: str, options: dict[str, Any]) -> None:
    if options:
        raise CipsError(f"The {backend} backend has no option {sorted(options)[0]!r}.")


def _is_path(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike))


def _is_engine_file(model: Any, suffix: str) -> bool:
    return _is_path(model) and Path(model).suffix == suffix


def _device_index(device: str) -> tuple[str, int]:
    """("cpu" | "cuda", index) of a device string such as ``cpu``, ``cuda`` or ``cuda:1``."""
    kind, _, index = str(device).strip().partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise CipsError(f"Unknown device {device!r}; use cpu, cuda or cuda:N.")
    return kind, int(index or 0)


def check_engine_source(metadata: EngineMetadata, model: Any, engine: Path) -> None:
    """Refuse ``engine`` unless it was exported from ``model`` (a Generator or a checkpoint).

    The checkpoint's hash is compared first (no torch needed); only when it differs (say, the
    engine came from the official .pt and this is its .safetensors conversion) is the
    checkpoint loaded and its weights compared, which needs the ``build`` extra.
    """
    if not _is_path(model):  # a Generator: torch is there
        metadata.check_matches(source=str(engine), generator=model)
        return
    checkpoint = Path(model)
    if metadata.source_sha256 and metadata.source_sha256 == file_sha256(checkpoint):
        return
    require_build_extra(f"Comparing an engine's weights with {checkpoint.name}")
    from cips_deploy.families.checkpoint import load

    metadata.check_matches(source=str(engine), generator=load(checkpoint))


def exported_engine(source: Any, *, spatial_style: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """The cached, validated ONNX export of a checkpoint or an in-memory Generator (any
    runtime that reads ONNX can run it: onnxruntime here, OpenVINO in its plugin).

    Exporting traces the PyTorch model: without the ``build`` extra, one sentence says so."""
    what = f"Rendering the checkpoint {Path(source).name} through an ONNX engine" if _is_path(source) else "Exporting a model"
    require_build_extra(what)
    from .cache import cached_generator_onnx, cached_onnx

    if not _is_path(source):
        # In-memory weights have no file hash: the cache is keyed by the weights themselves.
        return cached_generator_onnx(source, opset=opset, spatial_style=spatial_style)
    return cached_onnx(source, opset=opset, spatial_style=spatial_style)


def grid_bytes_per_point(config) -> int:
    """Bytes per point of a chunk composed from cached lines (grid engines): the composition's."""
    return BYTES_PER_FLOAT * (compose_floats_per_point(config) + RENDERER_FLOATS_PER_POINT)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime on exported .onnx engines (fp32, fp16, int8), or checkpoints exported on the fly (TensorRT EP, CUDA EP, CPU)."
    model_suffixes = (".onnx",)
    options = (
        Parameter("providers", str, None, "execution providers, best first: auto, or a comma-separated list of tensorrt, cuda, cpu"),
        Parameter("engine", str, None, "an exported .onnx engine of the model to run instead of exporting it"),
        Parameter("opset", int, DEFAULT_OPSET, "ONNX opset of engines exported on the fly", minimum=min(SUPPORTED_OPSETS), maximum=max(SUPPORTED_OPSETS)),
        Parameter("threads", int, 0, "intra-op threads of the CPU sessions; 0: onnxruntime's choice", minimum=0),
    )

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        providers: str | None = None,
        engine: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
        threads: int = 0,
        **options: Any,
    ) -> None:
        _reject_unknown(self.name, options)
        self._threads = int(threads)  # before any session opens
        choose_providers(providers)  # an impossible provider fails now, before any export
        kind, index = _device_index(device)
        self._device_id = index if kind == "cuda" else 0
        self._providers = providers
        self._opset = int(opset)  # options from the command line arrive as strings
        self._source = model
        self._engines: dict[bool, OnnxEngine] = {}
        # An engine file is what it is; a checkpoint or a Generator can be exported again
        # for the other kind of style on first need.
        self._exportable = engine is None and not _is_engine_file(model, ".onnx")
        if engine is not None:
            # It stands in for the checkpoint: its content must verify, not just its metadata.
            opened = self._open(Path(engine), verify="required")
            check_engine_source(opened.metadata, model, Path(engine))
        elif _is_engine_file(model, ".onnx"):
            opened = self._open(Path(model))
        else:
            opened = self._open(self._export(spatial_style=False))
        self._engines[opened.spatial_style] = opened
        self.config = opened.metadata.config
        # The engine's recorded precision (fp32, fp16, int8, int8-static) and that of the kernel
        # doing its products, whose peak bench measures a case against (.ort_runtime says which).
        self.precision, self.product_precision = opened.precision, opened.product_precision
        self._grid = self._grid_renderer(opened, verify="required" if engine is not None else "if-recorded")

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] float32 (and c [B, C] for a class-conditional model) -> w [B, S] float32,
        truncated towards the engine's w_avg."""
        return next(iter(self._engines.values())).map(host_float32(z), truncation, None if c is None else host_float32(c))

    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3] (host float32), chunk-invariant.

        As the torch backend does, N is padded to a multiple of PAD_POINTS (repeating the
        last point): onnxruntime's CPU matrix products take another kernel for very short
        batches, which moved a pixel by one level at chunk size 1.
        """
        layered = self._layered()
        if layered is not None and w.ndim == 2:  # an engine for per-layer styles: one style is L equal ones
            return self.run_layers(coords, np.repeat(host_float32(w)[:, None], layered.spec.inputs[1].shape[1], axis=1))
        n_points = coords.shape[1]
        coords = pad_rows(host_float32(coords), PAD_POINTS)
        w = host_float32(w)
        if w.ndim == 3:
            w = pad_rows(w, PAD_POINTS)
        elif self._grid is not None and same_points(coords):
            # Line-factored model: lines once per image, composition per chunk (the torch fast path's scheme).
            return self._grid.synthesize(coords, w)[:, :n_points]
        return self._engine(spatial=w.ndim == 3).synthesize(coords, w)[:, :n_points]

    def run_layers(self, coords: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], per-layer styles ws [B, L, S] -> rgb [B, N, 3], through an engine
        exported with ``--layer-styles`` (padded as :meth:`run` pads); other engines refuse."""
        layered = self._layered()
        if layered is None:
            return super().run_layers(coords, ws)
        n_points = coords.shape[1]
        coords, ws = pad_rows(host_float32(coords), PAD_POINTS), host_float32(ws)
        if self._grid is not None and same_points(coords):  # CREPS: lines once per image, as for one style
            return self._grid.synthesize(coords, ws)[:, :n_points]
        return layered.synthesize(coords, ws)[:, :n_points]

    def takes_layer_styles(self) -> bool:
        return self._layered() is not None

    def _layered(self) -> OnnxEngine | None:
        """The opened engine when it takes per-layer styles (``export --layer-styles``), else None."""
        engine = next(iter(self._engines.values()), None)
        return engine if engine is not None and engine.metadata.layer_styles else None

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """With grid engines a chunk composes from cached lines: a point costs the composition."""
        if self._grid is None or per_point_style:
            return super().bytes_per_point(per_point_style)
        return grid_bytes_per_point(self.config)

    def preferred_memory_budget(self) -> float:
        """32 MB of working memory per chunk on a CPU, as the torch backend: the process's peak
        follows the chunk, and onnxruntime's arena keeps its largest (the quickstart panorama
        peaked at 464 MB RSS in the default 256 MB chunks; BENCHMARKS.md); 2 GB on a GPU."""
        on_gpu = any(engine.on_gpu for engine in self._engines.values())
        return 2048.0 if on_gpu else 32.0

    def close(self) -> None:
        self._engines.clear()
        self._grid = None

    def _grid_renderer(self, opened: OnnxEngine, verify: str) -> GridRenderer | None:
        """Grid rendering through the line and compose engines beside ``opened``, when it has them."""
        from .ort_grid import OnnxGridEngines

        engines = OnnxGridEngines.open(opened, verify=verify)
        if engines is None:
            return None
        # Scattered chunks (sized for composing) run the per-point engine in batches that fit the budget.
        per_point = render_bytes_per_point(self.config)
        point_batch = max(1, int(self.preferred_memory_budget() * 2**20 / per_point) // PAD_POINTS) * PAD_POINTS
        budget = LINE_CACHE_MB["cuda" if opened.on_gpu else "cpu"]
        return GridRenderer(engines, self.config, max_bytes=int(budget * 2**20), pad=PAD_POINTS, point_batch=point_batch)

    def _engine(self, spatial: bool) -> OnnxEngine:
        if spatial not in self._engines:
            if self._exportable:
                self._engines[spatial] = self._open(self._export(spatial_style=spatial))
            else:
                self._engines[spatial] = self._engine_beside(spatial)
        return self._engines[spatial]

    def _engine_beside(self, spatial: bool) -> OnnxEngine:
        """An engine file's per-point-style twin, ``model.spatial.onnx`` beside it (same weights)."""
        opened = next(iter(self._engines.values()))
        twin = spatial_path_for(opened.path)
        if spatial and not opened.spatial_style and twin.is_file():
            engine = self._open(twin)
            if engine.spatial_style and engine.metadata.weights_sha256 == opened.metadata.weights_sha256:
                return engine
            raise CipsError(f"{twin} is not the per-point-style engine of {opened.path.name}; export it again with --spatial-style.")
        kind = "per-point styles w [B, N, S]" if spatial else "one style per sample w [B, S]"
        hint = f" (with --spatial-style, as {twin.name} beside it)" if spatial else ""
        raise CipsError(f"This engine was not exported for {kind}; export it again to match{hint}.")

    def _export(self, spatial_style: bool) -> Path:
        return exported_engine(self._source, spatial_style=spatial_style, opset=self._opset)

    def _open(self, path: Path, verify: str = "if-recorded") -> OnnxEngine:
        # Cache entries were verified (or rebuilt) by the cache just now.
        return OnnxEngine(path, providers=self._providers, device_id=self._device_id, verify=verify, threads=self._threads)


class TensorRTBackend(Backend):
    """TensorRT plans; host numpy arrays in and out, torch CUDA tensors inside (:mod:`.tensorrt`)."""

    name = "tensorrt"
    description = "TensorRT plans built by `cips-deploy export --engine trt` (NVIDIA GPU, tensorrt package)."
    model_suffixes = (".plan",)
    options = (Parameter("engine", str, None, "a .plan built from the model, when the model given is its checkpoint"),)

    def __init__(self, model: Any, *, device: str = "cuda", engine: str | Path | None = None, **options: Any) -> None:
        _reject_unknown(self.name, options)
        plan = Path(engine) if engine is not None else Path(model) if _is_engine_file(model, ".plan") else None
        if plan is None:
            raise CipsError(
                "The tensorrt backend runs a .plan engine: build one with `cips-deploy export CHECKPOINT --engine trt` "
                "and pass it as the model (or as engine=...)."
            )
        kind, _ = _device_index(device)
        # The TensorRT runtime binds torch CUDA tensors: torch is imported here, and only here.
        require_build_extra("The tensorrt backend (its CUDA buffers are torch tensors)")
        import torch

        from .tensorrt import TensorRTEngine
        from .trt_grid import TensorRTGridEngines

        self._torch = torch
        gpu = torch.device(device) if kind == "cuda" else None  # the renderer's default "cpu" means "the current GPU" here
        self._engine = TensorRTEngine(plan, device=gpu)
        if engine is not None:
            check_engine_source(self._engine.metadata, model, plan)
        self.config = self._engine.metadata.config
        self.max_batch, self.max_points = self._engine.max_batch, self._engine.max_points
        self._grid = None
        grid = TensorRTGridEngines.open(self._engine)
        if grid is not None:  # line-factored: grids through the lines and compose plans
            point_batch = max(PAD_POINTS, self.max_points // PAD_POINTS * PAD_POINTS)
            self._grid = GridRenderer(grid, self.config, max_bytes=int(LINE_CACHE_MB["cuda"] * 2**20),
                                      pad=PAD_POINTS, point_batch=point_batch)

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z [B, Z] float32 (and c [B, C] for a class-conditional model) -> w [B, S] float32
        (the mapping engine runs on the host)."""
        return self._engine.map(self._torch.from_numpy(host_float32(z)), truncation, c).numpy()

    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] or [B, N, S] (host float32) -> rgb [B, N, 3] (host float32)."""
        coords, w = host_float32(coords), host_float32(w)
        if self._grid is not None and w.ndim == 2 and same_points(coords):
            n_points = coords.shape[1]
            return self._grid.synthesize(pad_rows(coords, PAD_POINTS), w)[:, :n_points]
        torch = self._torch
        rgb = self._engine.synthesize(torch.from_numpy(coords), torch.from_numpy(w))  # chunked to the plan's profile
        return rgb.cpu().numpy()  # waits for the engine's stream

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """With grid plans a chunk composes from cached lines: a point costs the composition."""
        if self._grid is None or per_point_style:
            return super().bytes_per_point(per_point_style)
        return grid_bytes_per_point(self.config)

    def close(self) -> None:
        self._engine = None
        self._grid = None


@hookimpl
def register_backends(register):
    register(OnnxRuntimeBackend)
    register(TensorRTBackend)
