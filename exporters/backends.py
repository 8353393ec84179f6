"""The ``onnxruntime`` and ``tensorrt`` render backends, as a plugin.

Registered through the same hook a third-party plugin uses (``register_backends``); the
``onnx`` and ``trt`` exporters are :mod:`.engines`. The backends follow
:class:`cips_deploy.contracts.backend.Backend`: built as
``Backend(model, device=..., **options)``, they take and return host float32 tensors,
coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3].

``onnxruntime``: ``model`` is an exported ``.onnx`` engine, a checkpoint (exported once
into the cache of :mod:`.cache`, keyed by its hash) or a Generator (cached by the hash of
its weights). Options: ``providers`` (``auto``, ``tensorrt``, ``cuda``, ``cpu`` or a comma
list), ``engine`` (an ``.onnx`` file to use for the checkpoint ``model``; refused unless it
was exported from it), ``opset``.

``tensorrt``: ``model`` is a ``.plan`` built by ``cips-deploy export --engine trt``, or a
checkpoint together with the option ``engine=<plan>`` (refused unless built from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cips_deploy.contracts.backend import Backend
from cips_deploy.families.checkpoint import file_sha256, load
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.topology import Parameter

from cips_deploy.contracts.footprint import BYTES_PER_FLOAT, RENDERER_FLOATS_PER_POINT, render_bytes_per_point
from cips_deploy.plugins.torch_backend import LINE_CACHE_MB, PAD_POINTS, pad_rows

from .cache import cached_generator_onnx, cached_onnx
from .grid_runtime import GridRenderer, family_facts, same_points
from .metadata import EngineMetadata
from .onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS
from .ort_runtime import OnnxEngine, choose_providers


def _reject_unknown(backend: str, options: dict[str, Any]) -> None:
    if options:
        raise CipsError(f"The {backend} backend has no option {sorted(options)[0]!r}.")


def _is_engine_file(model: Any, suffix: str) -> bool:
    return isinstance(model, (str, Path)) and Path(model).suffix == suffix


def check_engine_source(metadata: EngineMetadata, model: Any, engine: Path) -> None:
    """Refuse ``engine`` unless it was exported from ``model`` (a Generator or a checkpoint).

    The checkpoint's hash is compared first; only when it differs (say, the engine came
    from the official .pt and this is its .safetensors conversion) are the weights compared.
    """
    if isinstance(model, Generator):
        metadata.check_matches(source=str(engine), generator=model)
        return
    checkpoint = Path(model)
    if metadata.source_sha256 and metadata.source_sha256 == file_sha256(checkpoint):
        return
    metadata.check_matches(source=str(engine), generator=load(checkpoint))


def exported_engine(source: Generator | str | Path, *, spatial_style: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """The cached, validated ONNX export of a checkpoint or an in-memory Generator (any
    runtime that reads ONNX can run it: onnxruntime here, OpenVINO in its plugin)."""
    if isinstance(source, Generator):
        # In-memory weights have no file hash: the cache is keyed by the weights themselves.
        return cached_generator_onnx(source, opset=opset, spatial_style=spatial_style)
    return cached_onnx(source, opset=opset, spatial_style=spatial_style)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime on exported .onnx engines (fp32, fp16, int8), or checkpoints exported on the fly (TensorRT EP, CUDA EP, CPU)."
    options = (
        Parameter("providers", str, None, "execution providers, best first: auto, or a comma-separated list of tensorrt, cuda, cpu"),
        Parameter("engine", str, None, "an exported .onnx engine of the model to run instead of exporting it"),
        Parameter("opset", int, DEFAULT_OPSET, "ONNX opset of engines exported on the fly", minimum=min(SUPPORTED_OPSETS), maximum=max(SUPPORTED_OPSETS)),
    )

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        providers: str | None = None,
        engine: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
        **options: Any,
    ) -> None:
        _reject_unknown(self.name, options)
        choose_providers(providers)  # an impossible provider fails now, before any export
        parsed = torch.device(device)
        self._device_id = parsed.index or 0 if parsed.type == "cuda" else 0
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
        self._grid = self._grid_renderer(opened, verify="required" if engine is not None else "if-recorded")

    def map(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        return next(iter(self._engines.values())).map(z.float().cpu(), truncation)

    def run(self, coords: Tensor, w: Tensor) -> Tensor:
        """coords [B, N, 2], w [B, S] or [B, N, S] -> rgb [B, N, 3], chunk-invariant.

        As the torch backend does, N is padded to a multiple of PAD_POINTS (repeating the
        last point): onnxruntime's CPU matrix products take another kernel for very short
        batches, which moved a pixel by one level at chunk size 1.
        """
        n_points = coords.shape[1]
        coords = pad_rows(coords.float().cpu(), PAD_POINTS)
        w = w.float().cpu()
        if w.dim() == 3:
            w = pad_rows(w, PAD_POINTS)
        elif self._grid is not None and same_points(coords):
            # Line-factored model: lines once per image, composition per chunk (the torch fast path's scheme).
            return self._grid.synthesize(coords, w)[:, :n_points]
        return self._engine(spatial=w.dim() == 3).synthesize(coords, w)[:, :n_points]

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """With grid engines a chunk composes from cached lines: a point costs the composition."""
        if self._grid is None or per_point_style:
            return super().bytes_per_point(per_point_style)
        return BYTES_PER_FLOAT * (family_facts(self.config).compose_floats_per_point() + RENDERER_FLOATS_PER_POINT)

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
        on_gpu = opened.on_gpu
        return GridRenderer(
            engines, self.config, max_bytes=int(LINE_CACHE_MB["cuda" if on_gpu else "cpu"] * 2**20),
            pad=PAD_POINTS, point_batch=point_batch,
        )

    def _engine(self, spatial: bool) -> OnnxEngine:
        if spatial not in self._engines:
            if not self._exportable:
                kind = "per-point styles w [B, N, S]" if spatial else "one style per sample w [B, S]"
                raise CipsError(f"This engine was not exported for {kind}; export it again to match.")
            self._engines[spatial] = self._open(self._export(spatial_style=spatial))
        return self._engines[spatial]

    def _export(self, spatial_style: bool) -> Path:
        return exported_engine(self._source, spatial_style=spatial_style, opset=self._opset)

    def _open(self, path: Path, verify: str = "if-recorded") -> OnnxEngine:
        # Cache entries were verified (or rebuilt) by the cache just now.
        return OnnxEngine(path, providers=self._providers, device_id=self._device_id, verify=verify)


class TensorRTBackend(Backend):
    name = "tensorrt"
    description = "TensorRT plans built by `cips-deploy export --engine trt` (NVIDIA GPU, tensorrt package)."
    options = (Parameter("engine", str, None, "a .plan built from the model, when the model given is its checkpoint"),)

    def __init__(self, model: Any, *, device: str = "cuda", engine: str | Path | None = None, **options: Any) -> None:
        from .tensorrt import TensorRTEngine

        _reject_unknown(self.name, options)
        plan = Path(engine) if engine is not None else Path(model) if _is_engine_file(model, ".plan") else None
        if plan is None:
            raise CipsError(
                "The tensorrt backend runs a .plan engine: build one with `cips-deploy export CHECKPOINT --engine trt` "
                "and pass it as the model (or as engine=...)."
            )
        parsed = torch.device(device)
        gpu = parsed if parsed.type == "cuda" else None  # the renderer's default "cpu" means "the current GPU" here
        self._engine = TensorRTEngine(plan, device=gpu)
        if engine is not None:
            check_engine_source(self._engine.metadata, model, plan)
        self.config = self._engine.metadata.config
        self.max_batch, self.max_points = self._engine.max_batch, self._engine.max_points
        self._grid = None
        from .trt_grid import TensorRTGridEngines

        grid = TensorRTGridEngines.open(self._engine)
        if grid is not None:  # line-factored: grids through the lines and compose plans, lines kept on the GPU
            point_batch = max(PAD_POINTS, self.max_points // PAD_POINTS * PAD_POINTS)
            self._grid = GridRenderer(grid, self.config, max_bytes=int(LINE_CACHE_MB["cuda"] * 2**20),
                                      pad=PAD_POINTS, point_batch=point_batch)

    def map(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        return self._engine.map(z.float().cpu(), truncation)

    def run(self, coords: Tensor, w: Tensor) -> Tensor:
        if self._grid is not None and w.dim() == 2 and same_points(coords):
            n_points = coords.shape[1]
            device = self._engine.device
            coords = pad_rows(coords.to(device, torch.float32), PAD_POINTS)
            return self._grid.synthesize(coords, w.to(device, torch.float32))[:, :n_points].cpu()
        rgb = self._engine.synthesize(coords, w)  # chunked to the plan's profile on the GPU
        return rgb.cpu()  # waits for the engine's stream

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """With grid plans a chunk composes from cached lines: a point costs the composition."""
        if self._grid is None or per_point_style:
            return super().bytes_per_point(per_point_style)
        return BYTES_PER_FLOAT * (family_facts(self.config).compose_floats_per_point() + RENDERER_FLOATS_PER_POINT)

    def close(self) -> None:
        self._engine = None
        self._grid = None


@hookimpl
def register_backends(register):
    register(OnnxRuntimeBackend)
    register(TensorRTBackend)
