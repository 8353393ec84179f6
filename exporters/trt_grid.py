"""TensorRT plans of a line-factored model's grid engines (line and compose), and running them.

Written against the TensorRT 10 Python API (``build_serialized_network``, named I/O tensors,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), like :mod:`.tensorrt`,
whose builder, sidecar and checks these plans share. Each engine gets its own optimization
profile (:class:`GridProfile`), because their dynamic axes mean different things:

- ``model.lines.plan``: v [B, H], u [B, W] -> lines; H and W up to :data:`LINE_VALUES` (the line
  cache evaluates new values in groups of at most 64, and the other axis gets one value);
- ``model.compose.plan``: a block of H rows x W columns, H W at most about 3 x the chunk size
  (a chunk composes its bounding block only when that is at most 3 x its points), W up to
  :data:`MAX_COLUMNS`; the runtime tiles larger blocks.

A plan has one profile per synthesis profile (:func:`grid_profiles`); at run time each call
of the line or compose engine takes the profile that serves its (batch, rows, columns) best
(:mod:`.trt_select`), on an execution context of that profile's own.

Everything that decides *what* is built is plain Python and tested everywhere; building and
running need ``tensorrt`` and a GPU (tests skip without them).

Why torch. TensorRT runs on device buffers, and this module (like :mod:`.tensorrt`) uses
torch CUDA tensors for them: allocation, streams and the copies to and from the host, without
another CUDA binding to install. It is imported only when the ``tensorrt`` backend is
constructed or a plan is built, never by the torch-free runtime. The grid renderer
(:mod:`.grid_runtime`) works on host numpy arrays: :class:`TensorRTGridEngines` copies the
lines of new values to the host (H + W values of F floats per image) and a chunk's block of
lines back, which is small beside the composition itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cips_deploy.errors import CipsError

from .engine_files import line_engine_path
from .metadata import EngineMetadata, read_onnx_metadata
from .spec import BATCH, COLUMNS, COMPOSE, LINES, ROWS, EngineSpec, grid_spec
from .trt_profiles import RequestedProfiles, Shapes, primary_limits
from .trt_select import ProfileContexts, ProfileRange, choose_profile, envelope, lines_cost, read_profiles, tiled_cost

LINE_VALUES = 64  # values per line-engine call (the line cache's group)
MAX_COLUMNS = 4096  # widest compose block per call; wider blocks are tiled


@dataclass(frozen=True)
class GridProfile:
    """The optimization profile of a grid engine: ``max_batch`` samples, at most ``max_rows`` x
    ``max_columns`` lines per call. ``max_points`` (the sidecar's chunk size) is their product."""

    max_batch: int
    max_rows: int
    max_columns: int

    @property
    def max_points(self) -> int:
        return self.max_rows * self.max_columns

    @classmethod
    def for_role(cls, role: str, max_batch: int, chunk_size: int) -> "GridProfile":
        if role == LINES:
            return cls(max_batch, LINE_VALUES, LINE_VALUES)
        columns = min(MAX_COLUMNS, max(64, chunk_size))
        return cls(max_batch, max(1, math.ceil(3 * chunk_size / columns)), columns)

    def shapes(self, spec: EngineSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input name: (min, opt, max)}; the optimum is the largest call, as for synthesis."""
        result = {}
        for tensor in spec.inputs:
            low = tensor.concrete(**{BATCH: 1, ROWS: 1, COLUMNS: 1})
            high = tensor.concrete(**{BATCH: self.max_batch, ROWS: self.max_rows, COLUMNS: self.max_columns})
            result[tensor.name] = (low, high, high)
        return result


def grid_profiles(role: str, spec: EngineSpec, synthesis_profiles: list[Shapes],
                  requested: RequestedProfiles | None = None) -> list[Shapes]:
    """The optimization profiles of the ``role`` grid engine, one per synthesis profile: the
    shapes the flags give it (``lines.v:...``; :mod:`.trt_profiles`), else the
    :class:`GridProfile` made from that synthesis profile's largest batch and chunk."""

    def derived(index: int) -> Shapes:
        batch, points = primary_limits([synthesis_profiles[index]])
        return GridProfile.for_role(role, batch, points).shapes(spec)

    if requested is None:
        return [derived(index) for index in range(len(synthesis_profiles))]
    return requested.resolve(role, spec, fallback=derived, min_one=True)


def grid_limits(shapes: Shapes, spec: EngineSpec) -> tuple[int, int]:
    """(largest batch, largest rows x columns) of one grid profile, as the sidecar records them."""
    rows, columns = (shapes[name][2] for name in spec.input_names[:2])
    return int(rows[0]), int(rows[1]) * int(columns[1])


def build_grid_plans(
    grid: dict[str, Path], work: Path, metadata: EngineMetadata, *, precision: str, profile: Any = None,
    timing_cache: Path | None, synthesis_profiles: list[Shapes] | None = None,
    requested: RequestedProfiles | None = None, verbosity: str = "warning",
) -> dict[str, Path]:
    """Build ``work/model.<role>.plan`` (and sidecar) from each grid ONNX engine; {role: plan}.

    ``synthesis_profiles``: the synthesis plan's profiles (or ``profile``, its one
    :class:`.tensorrt.Profile`); ``requested``: the flags' shapes, for the grid engines' own."""
    import onnx

    from .tensorrt import build_engine
    from .trt_ops import tensorrt_problems

    if synthesis_profiles is None:
        synthesis_profiles = [{"coords": ((1, 1, 2), (profile.max_batch, profile.max_points, 2),
                                          (profile.max_batch, profile.max_points, 2))}]
    plans = {}
    for role, onnx_file in grid.items():
        problems = tensorrt_problems(onnx.load(str(onnx_file), load_external_data=False))
        if problems:
            raise CipsError(f"TensorRT's ONNX parser cannot take {onnx_file.name}: {'; '.join(problems)}.")
        meta = read_onnx_metadata(onnx_file)
        meta.check_role(role, source=str(onnx_file))
        if meta.weights_sha256 != metadata.weights_sha256:
            raise CipsError(f"{onnx_file} belongs to a different model than the synthesis engine; export them together again.")
        spec = grid_spec(role, meta)
        profiles = grid_profiles(role, spec, synthesis_profiles, requested)
        plan = line_engine_path(work / "model.plan", role)
        build_engine(onnx_file, plan, meta, spec, precision=precision, profiles=profiles,
                     limits=grid_limits(profiles[0], spec), timing_cache=timing_cache, verbosity=verbosity)
        plans[role] = plan
    return plans


class _Plan:
    """One grid plan on a GPU: checked against its sidecar, run on its own stream.

    Every optimization profile is read on (batch, rows, columns) (``profiles``); each request
    takes the one :meth:`choose` picks (:mod:`.trt_select`: fewest calls, least padding,
    nearest opt shape, lowest index) and runs on that profile's own execution context.
    ``max_batch``/``max_rows``/``max_columns``: the largest any profile takes in one call."""

    def __init__(self, plan: Path, role: str, device: torch.device, expected_weights: str) -> None:
        from .tensorrt import check_sidecar, gpu_facts, import_tensorrt, read_sidecar

        trt = import_tensorrt()
        self.plan = plan
        data = plan.read_bytes()
        sidecar = read_sidecar(plan)
        self.metadata = check_sidecar(sidecar, plan=plan, tensorrt_version=trt.__version__, gpu=gpu_facts(device),
                                      plan_bytes=data, role=role)
        if self.metadata.weights_sha256 != expected_weights:
            raise CipsError(f"{plan} belongs to a different model than the synthesis plan; build them together again.")
        self.spec = grid_spec(role, self.metadata)
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise CipsError(f"TensorRT could not load {plan.name}; build it again on this machine.")
            self.stream = torch.cuda.Stream(device)
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(self.spec.input_names + self.spec.output_names):
            raise CipsError(f"{plan.name} has tensors {sorted(names)}, not the {role} engine's.")
        # B and H of the first input (v, row_lines), W of the second (u, column_lines).
        rows, columns = self.spec.input_names[:2]
        self.role = role
        self.profiles = read_profiles(self.engine, [(rows, 0), (rows, 1), (columns, 1)])
        if any(low != 1 for profile in self.profiles for low in profile.low):
            raise CipsError(f"{plan.name} has a profile that does not start at one line; the grid renderer sends "
                            "blocks down to a single line, so build it again with cips-deploy.")
        _, (self.max_batch, self.max_rows, self.max_columns) = envelope(self.profiles)
        self.contexts = ProfileContexts(self.engine, self.stream.cuda_stream, plan.name)

    def choose(self, batch: int, rows: int, columns: int) -> ProfileRange:
        """The profile for a request of ``batch`` samples, ``rows`` and ``columns`` lines: the
        line engine advances rows and columns together, the compose engine tiles them."""
        return choose_profile(self.profiles, (batch, rows, columns), lines_cost if self.role == LINES else tiled_cost)

    def run(self, inputs: list[Tensor], outputs: list[Tensor], profile: int = 0) -> None:
        """Enqueue one call (shapes within ``profile``); the caller's stream waits for it."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.device(self.device):  # a context made now belongs to the plan's GPU
            context = self.contexts[profile]
        for name, tensor in zip(self.spec.input_names, inputs):
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        for name, tensor in zip(self.spec.output_names, outputs):
            context.set_tensor_address(name, tensor.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.plan.name} for shapes {[list(t.shape) for t in inputs]}.")
        caller.wait_stream(self.stream)


class TensorRTGridEngines:
    """The :class:`~.grid_runtime.GridEngines` of a synthesis plan: lines and compose plans
    beside it, tiled to their profiles; the per-point path is the synthesis plan itself."""

    def __init__(self, synthesis, files: dict[str, Path]) -> None:
        weights = synthesis.metadata.weights_sha256
        self.synthesis = synthesis
        self.device = synthesis.device
        self.plans = {role: _Plan(file, role, self.device, weights) for role, file in files.items()}
        self.features = self.plans[LINES].spec.outputs[0].shape[2]

    @classmethod
    def open(cls, synthesis) -> "TensorRTGridEngines | None":
        files = {role: line_engine_path(synthesis.plan, role) for role in (LINES, COMPOSE)}
        if synthesis.spatial_style or not all(file.is_file() for file in files.values()):
            return None
        return cls(synthesis, files)

    def lines(self, v: np.ndarray, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """v [B, H], u [B, W], w [B, S] -> row_lines [B, H, F], column_lines [B, W, F] (host float32)."""
        rows, columns = self.device_lines(*(self._on_device(array) for array in (v, u, w)))
        return rows.cpu().numpy(), columns.cpu().numpy()

    def compose(self, rows: np.ndarray, columns: np.ndarray, w: np.ndarray) -> np.ndarray:
        """row_lines [B, H, F], column_lines [B, W, F], w [B, S] -> rgb [B, H W, 3] (host float32)."""
        return self.device_compose(*(self._on_device(array) for array in (rows, columns, w))).cpu().numpy()

    def per_point(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords [B, N, 2], w [B, S] -> rgb [B, N, 3] (host float32) through the synthesis plan."""
        return self.synthesis.synthesize(self._on_device(coords), self._on_device(w)).cpu().numpy()

    def _on_device(self, array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.device)

    def device_lines(self, v: Tensor, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """v [B, H], u [B, W], w [B, S] -> row_lines [B, H, F], column_lines [B, W, F] on the GPU."""
        plan = self.plans[LINES]
        v, u, w = (t.to(self.device, torch.float32).contiguous() for t in (v, u, w))
        batch = v.shape[0]
        rows = torch.empty(batch, v.shape[1], self.features, device=self.device)
        columns = torch.empty(batch, u.shape[1], self.features, device=self.device)
        profile = plan.choose(batch, v.shape[1], u.shape[1])
        max_batch, max_rows, max_columns = profile.high
        steps = max(math.ceil(v.shape[1] / max_rows), math.ceil(u.shape[1] / max_columns))
        for b0 in range(0, batch, max_batch):
            b1 = min(b0 + max_batch, batch)
            for step in range(steps):  # both axes advance together; an exhausted axis repeats its last value
                r0 = min(step * max_rows, max(0, v.shape[1] - 1))
                c0 = min(step * max_columns, max(0, u.shape[1] - 1))
                r1, c1 = min(r0 + max_rows, v.shape[1]), min(c0 + max_columns, u.shape[1])
                out_rows = torch.empty(b1 - b0, r1 - r0, self.features, device=self.device)
                out_columns = torch.empty(b1 - b0, c1 - c0, self.features, device=self.device)
                plan.run([v[b0:b1, r0:r1].contiguous(), u[b0:b1, c0:c1].contiguous(), w[b0:b1]], [out_rows, out_columns],
                         profile.index)
                rows[b0:b1, r0:r1], columns[b0:b1, c0:c1] = out_rows, out_columns
        return rows, columns

    def device_compose(self, rows: Tensor, columns: Tensor, w: Tensor) -> Tensor:
        """row_lines [B, H, F], column_lines [B, W, F], w [B, S] -> rgb [B, H W, 3] on the GPU, tiled to the profile."""
        plan = self.plans[COMPOSE]
        rows, columns, w = (t.to(self.device, torch.float32).contiguous() for t in (rows, columns, w))
        batch, height, width = rows.shape[0], rows.shape[1], columns.shape[1]
        rgb = torch.empty(batch, height, width, 3, device=self.device)
        profile = plan.choose(batch, height, width)
        max_batch, max_rows, max_columns = profile.high
        for b0 in range(0, batch, max_batch):
            b1 = min(b0 + max_batch, batch)
            for r0 in range(0, height, max_rows):
                r1 = min(r0 + max_rows, height)
                for c0 in range(0, width, max_columns):
                    c1 = min(c0 + max_columns, width)
                    out = torch.empty(b1 - b0, (r1 - r0) * (c1 - c0), 3, device=self.device)
                    plan.run([rows[b0:b1, r0:r1].contiguous(), columns[b0:b1, c0:c1].contiguous(), w[b0:b1]], [out],
                             profile.index)
                    rgb[b0:b1, r0:r1, c0:c1] = out.reshape(b1 - b0, r1 - r0, c1 - c0, 3)
        return rgb.reshape(batch, height * width, 3)
