"""The ``torch`` backend: synthesis with the PyTorch generator, on CPU or a CUDA device.

Like every backend it takes and returns host numpy float32 arrays (the runtime's contract,
:mod:`cips_deploy.contracts.backend`): they become tensors with ``torch.from_numpy`` (no copy)
and come back with ``.numpy()``; inside, ``map`` and ``run`` compute under
``torch.inference_mode()``.

Chunk invariance. CPU matrix-product libraries pick a different kernel for very short
batches (MKL: fewer than about 12 rows), and a different kernel can round differently.
So every batch is padded (by repeating its last point) to a multiple of ``PAD_POINTS``
rows before synthesis and the padding is dropped after: every point then goes through the
same code path whatever chunk it falls in, and a render is bitwise identical for any
chunking. The cost is at most PAD_POINTS - 1 extra points per chunk.

Precision (the ``precision`` option): ``fp32`` (the default) computes in float32 throughout.
``bf16`` runs the layers' matrix products in bfloat16 (float32 accumulation), with the
input features, the folded weights and the colour sum in float32 (``CipsGenerator``'s
``dtype``); on CPUs with AVX512-BF16 it renders paper256 about 2x faster than fp32. Its
8-bit images differ from fp32's by at most 2 levels on the bundled (trained) demo model but
by up to 19 on random-weight paper256, whose outputs are several times larger than
[-1, 1] (BENCHMARKS.md). ``fp16`` is the same on CUDA devices only. A family runs the
precisions its ``supported_dtypes`` names: CREPS runs fp32, bf16 (every block's and decoder's
products) and fp16, which is the official mixed precision (block0/block1 and its fp16 line
blocks in float16).

Line-factored generators (CREPS): a grid's rows and columns are evaluated once per image and
style by :class:`~cips_deploy.plugins.line_cache.LineCache`; its tables count against the
backend's memory budget (``LINE_CACHE_MB``, beside the chunk budget).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cips_deploy._compat import require_build_extra
from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.precision import PRECISIONS
from cips_deploy.contracts.topology import Parameter


class TorchBackend(Backend):
    """The registered ``torch`` backend: a light front whose work is a :class:`~.torch_runner.TorchRunner`,
    built (and torch imported) only when the backend is constructed."""

    name = "torch"
    description = "PyTorch generator (CPU or CUDA); bitwise chunk-invariant on CPU; CREPS lines computed once per row and column."
    options = (
        Parameter(
            "precision", str, "fp32",
            "fp32; bf16 (about 2x faster products on CPUs with AVX512-BF16; images differ by a few levels); fp16 (CUDA only)",
            choices=PRECISIONS,
        ),
    )

    def __init__(self, model: Any, *, device: str = "cpu", precision: Any = "fp32", **options: Any) -> None:
        require_build_extra("The torch backend")
        from cips_deploy.plugins.torch_runner import TorchRunner

        self._runner = TorchRunner(model, device=device, precision=precision, **options)
        self.config = self._runner.config

    def map(self, z: np.ndarray, truncation: float = 1.0, c: np.ndarray | None = None) -> np.ndarray:
        """z float32 ``[B, Z]`` (and c ``[B, C]`` for a class-conditional model) -> w float32 ``[B, S]``."""
        return self._runner.map(z, truncation, c)

    def run(self, coords: np.ndarray, w: np.ndarray) -> np.ndarray:
        """coords float32 ``[B, N, 2]``, w ``[B, S]`` or ``[B, N, S]`` -> rgb float32 ``[B, N, 3]``."""
        return self._runner.run(coords, w)

    def run_layers(self, coords: np.ndarray, ws: np.ndarray) -> np.ndarray:
        """coords float32 ``[B, N, 2]``, per-layer styles ws ``[B, L, S]`` -> rgb float32 ``[B, N, 3]``."""
        return self._runner.run_layers(coords, ws)

    def bytes_per_point(self, per_point_style: bool = False) -> int:
        return self._runner.bytes_per_point(per_point_style)

    def preferred_memory_budget(self) -> float:
        return self._runner.preferred_memory_budget()

    def close(self) -> None:
        self._runner.close()

    def __getattr__(self, name: str) -> Any:
        # The runner's state (generator, device, precision, lines) for tools and tests.
        runner = self.__dict__.get("_runner")
        if runner is None:
            raise AttributeError(name)
        return getattr(runner, name)


@hookimpl
def register_backends(register):
    register(TorchBackend)
