"""The torch backend's implementation: the PyTorch generator on host numpy arrays (the build extra).

:class:`cips_deploy.plugins.torch_backend.TorchBackend`, the registered backend, constructs a
:class:`TorchRunner` when it is built, so that registering the torch backend imports no torch
(a torch-free install lists it and says which extra it needs). Everything the backend does is
here; its module text (``torch_backend``) says how: chunk invariance, precisions, lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cips_deploy.contracts.backend import Backend
from cips_deploy.families.dtypes import DTYPES, torch_device
from cips_deploy.families.checkpoint import load
from cips_deploy.errors import CipsError
from cips_deploy.contracts.footprint import BYTES_PER_FLOAT, RENDERER_FLOATS_PER_POINT, render_bytes_per_point
from cips_deploy.families.generator import Generator
from cips_deploy.plugins.line_cache import LineCache

PAD_POINTS = 64
# The torch dtype of each precision that cips_deploy.contracts.precision names (the contract
# itself holds names only, so that it needs no torch).
# MB of cached lines (line-factored generators): the backend's budget is this plus the chunk
# budget (preferred_memory_budget). paper256 lines take 6 KB per row or column: 2,700^2 fits.
LINE_CACHE_MB = {"cpu": 32.0, "cuda": 512.0}
# A small model's chunk gains nothing beyond this many points per CPU thread (the per-chunk
# work is amortised) and loses once a thread's share of the activations leaves the caches:
# the 64-wide demo model runs 1.28x faster in 8,192-point chunks on one thread, and 1.29x
# in 16,384-point chunks on two, than in the 29,852 that 32 MB would give it (BENCHMARKS.md).
# Wide models reach 32 MB first (paper256: 3,245 points).
CPU_CHUNK_POINTS_PER_THREAD = 8192


def parse_precision(value: Any, device: torch.device) -> str:
    """The precision option (a string from the command line, or a torch dtype) -> fp32, bf16 or fp16."""
    names = {dtype: name for name, dtype in DTYPES.items()}
    name = names.get(value) if isinstance(value, torch.dtype) else str(value).strip().lower()
    if name not in DTYPES:
        raise CipsError(f"The torch backend's precision is fp32, bf16 or fp16 (CUDA only), not {value!r}.")
    if name == "fp16" and device.type != "cuda":
        raise CipsError("Precision fp16 needs a CUDA device (CPUs have no fast fp16 matrix product); use bf16 on a CPU.")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CipsError(f"The CUDA device {device} has no bf16 support; use precision fp16 on it.")
    return name


def as_tensor(array: Any, device: torch.device) -> Tensor:
    """A host array (numpy; a tensor passes too) as float32 on ``device``: on the CPU the
    array's own memory (``torch.from_numpy``), which synthesis only reads."""
    if not isinstance(array, Tensor):
        array = np.ascontiguousarray(array, dtype=np.float32)
        # from_numpy warns about read-only arrays (a caller's broadcast view): copy those.
        array = torch.from_numpy(array if array.flags.writeable else array.copy())
    return array.to(device, torch.float32)


def as_array(tensor: Tensor) -> np.ndarray:
    """A result on any device, any float dtype, as C-contiguous host float32 numpy."""
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


def pad_rows(tensor: Tensor, multiple: int) -> Tensor:
    """[B, N, C] -> [B, N', C] with N' the next multiple of ``multiple``, repeating row N-1."""
    missing = -tensor.shape[1] % multiple
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor[:, -1:].expand(-1, missing, -1)], dim=1)


def _same_points(coords: Tensor) -> bool:
    """Whether every sample of coords [B, N, 2] has the same points (always so for B = 1)."""
    return coords.shape[0] == 1 or bool((coords == coords[:1]).all())


class TorchRunner(Backend):
    """The torch backend's work (:class:`~cips_deploy.plugins.torch_backend.TorchBackend` declares its name and options)."""

    def __init__(self, model: Generator | str | Path, *, device: str = "cpu", precision: Any = "fp32", **options: Any) -> None:
        if options:
            raise CipsError(f"The torch backend has no option(s) {', '.join(sorted(options))}.")
        self.device = torch_device(device)
        self.precision = parse_precision(precision, self.device)
        self.dtype = DTYPES[self.precision]
        generator = model if isinstance(model, Generator) else load(model)
        if self.dtype not in generator.supported_dtypes():
            names = ", ".join(name for name, dtype in DTYPES.items() if dtype in generator.supported_dtypes())
            raise CipsError(f"This {generator.config.arch} model runs in {names} on the torch backend, not {self.precision}.")
        # Synthesis does not depend on train/eval mode (no dropout, no batch statistics, noise
        # only on request), so the caller's module is used as it is; only its device may change.
        self._original_device = generator.device
        self.generator = generator.to(self.device)
        self.config = generator.config
        # Line-factored families: rows and columns that chunks share are evaluated once.
        self.lines = None
        if generator.line_factored:
            # Chunks are sized for composing (bytes_per_point); the per-point path (scattered
            # points, per-point styles) runs inside a chunk in batches that fit the chunk budget.
            per_point = render_bytes_per_point(self.config)
            point_batch = max(1, int(self.preferred_memory_budget() * 2**20 / per_point) // PAD_POINTS) * PAD_POINTS
            self.lines = LineCache(
                generator, max_bytes=int(LINE_CACHE_MB[self.device.type] * 2**20), pad=PAD_POINTS,
                point_batch=point_batch, dtype=self.dtype,
            )

    @torch.inference_mode()
    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z float32 ``[B, Z]`` (and c ``[B, C]``, a conditional model's one-hot labels) -> w float32 ``[B, S]``, host numpy."""
        label = None if c is None else as_tensor(c, self.device)
        w = self.generator.map(as_tensor(z, self.device), truncation=truncation, c=label)
        return as_array(w)

    @torch.inference_mode()
    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords float32 ``[B, N, 2]``, w float32 ``[B, S]`` or ``[B, N, S]`` (host numpy) -> rgb float32 ``[B, N, 3]``."""
        n_points = coords.shape[1]
        coords = pad_rows(as_tensor(coords, self.device), PAD_POINTS)
        w = as_tensor(w, self.device)
        if w.dim() == 3:  # one style per point: pad it alongside its points
            w = pad_rows(w, PAD_POINTS)
        if self.lines is not None and w.dim() == 2 and _same_points(coords):
            rgb = self.lines.synthesize(coords, w)
        elif self.lines is not None:
            rgb = self.lines.per_point(coords, w)
        elif self.precision == "fp32":
            rgb = self.generator.synthesize(coords, w)  # the float32 path, exactly as before
        else:
            rgb = self.generator.synthesize(coords, w, dtype=self.dtype)
        return as_array(rgb[:, :n_points])

    @torch.inference_mode()
    def run_layers(self, coords: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """coords float32 ``[B, N, 2]``, per-layer styles ws ``[B, L, S]`` -> rgb float32 ``[B, N, 3]``,
        padded as :meth:`run` pads (chunk invariance); a line-factored grid still shares its lines."""
        n_points = coords.shape[1]
        coords = pad_rows(as_tensor(coords, self.device), PAD_POINTS)
        ws = as_tensor(ws, self.device)
        if self.lines is not None and _same_points(coords):
            rgb = self.lines.synthesize(coords, ws, layered=True)
        else:
            rgb = self.generator.synthesize_layers(coords, ws, dtype=self.dtype)
        return as_array(rgb[:, :n_points])

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        """Line-factored generators: a chunk composes from cached lines (and runs the per-point
        path in budget-sized batches), so a point costs the composition, or its per-point style."""
        if self.lines is None:
            return super().bytes_per_point(per_point_style)
        floats = self.generator.compose_floats_per_point() + (2 * self.config.style_dim if per_point_style else 0)
        return BYTES_PER_FLOAT * (floats + RENDERER_FLOATS_PER_POINT)

    def preferred_memory_budget(self) -> float:
        """32 MB on a CPU, where chunks whose activations stay in the caches run fastest
        (paper256 at 256x256 on 2 cores: 96% of the matmul peak at 2,048 points per chunk,
        62% at 65,536; BENCHMARKS.md; bf16 is flat from 1,024 to 8,192 points and slower
        beyond, so the same budget suits it), and at most ``CPU_CHUNK_POINTS_PER_THREAD``
        points per torch thread for a per-point family (read at each call: a worker process
        changes its thread count); 2 GB on a GPU, which wants large batches."""
        if self.device.type == "cuda":
            return 2048.0
        if self.generator.line_factored:
            return 32.0
        from cips_deploy.plugins.chunk_autotune import runner_points

        tuned = runner_points(self)  # the fastest chunk measured on this machine (wide models; cached)
        if tuned:
            return (tuned + 0.5) * self.bytes_per_point() / 2**20  # + 0.5: the memory chunker's floor gives tuned
        points = CPU_CHUNK_POINTS_PER_THREAD * torch.get_num_threads()
        return min(32.0, points * self.bytes_per_point() / 2**20)

    def close(self) -> None:
        """Give the caller's generator back on the device it came on, and free device memory."""
        self.lines = None
        if self.device != self._original_device:
            self.generator.to(self._original_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
