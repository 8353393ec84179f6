"""TensorRT int8 plans: an ``IInt8MinMaxCalibrator`` fed the calibration batches the user chose.

``export --engine trt --quantize int8-static`` builds the synthesis plan with TensorRT's
``BuilderFlag.INT8`` and a calibrator (TensorRT 10 Python API: a subclass of
``trt.IInt8MinMaxCalibrator`` whose ``get_batch(names)`` returns one device pointer per input,
or None when the batches are exhausted; ``IBuilderConfig.int8_calibrator``;
``set_calibration_profile`` for a network with dynamic shapes). Min-max, like the static
ONNX engines' onnxruntime calibration, so the two int8 engines are calibrated alike. The
coordinate path stays fp32 (the same precision constraints as fp16 builds), and layers that
int8 does not suit run in fp32.

The batches are those of :mod:`.calibration` (seeds and points, or a folder of ``.npz``
batches), cut into pieces of one calibration shape (``[1, P, 2]`` and ``[1, S]``): TensorRT
calibrates at one shape, the calibration profile's. A short last piece repeats its points
(never zeros, which would widen no range but are not the model's inputs).

The plan is then held to the PSNR gate like the ONNX engines: rendered on the GPU against
the checkpoint in torch (:func:`.trt_gate.trt_quality`, the report's seeds 0-3), and refused
below ``--min-psnr`` (default 30 dB, the int8-static default). Written from the TensorRT
documentation; this workplace has no TensorRT or GPU, so what needs them is tested only where
they exist, and :func:`uniform_batches` everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_PIECE = 4096  # points of one calibration piece


def uniform_batches(batches: list[dict[str, np.ndarray]], points: int = DEFAULT_PIECE) -> list[dict[str, np.ndarray]]:
    """Batches of any B and N (coords [B, N, 2], w [B, S] or [B, N, S]) as pieces of one shape:
    coords [1, P, 2] and w [1, S] (or [1, P, S]), P = min(``points``, the largest N given)."""
    if not batches:
        raise ValueError("no calibration batches")
    size = min(points, max(batch["coords"].shape[1] for batch in batches))
    pieces = []
    for batch in batches:
        coords, w = batch["coords"], batch["w"]
        spatial = w.ndim == 3
        for sample in range(coords.shape[0]):
            for start in range(0, coords.shape[1], size):
                taken = np.arange(start, min(start + size, coords.shape[1]))
                index = taken[np.arange(size) % len(taken)]  # a short piece repeats its points
                piece_w = w[sample, index] if spatial else w[sample]
                pieces.append({"coords": np.ascontiguousarray(coords[sample, index][None], dtype=np.float32),
                               "w": np.ascontiguousarray(piece_w[None], dtype=np.float32)})
    return pieces


def make_calibrator(trt: Any, pieces: list[dict[str, np.ndarray]], device: Any):
    """An ``IInt8MinMaxCalibrator`` that hands TensorRT ``pieces`` one by one, from torch CUDA tensors."""
    import torch

    class Calibrator(trt.IInt8MinMaxCalibrator):
        def __init__(self) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)
            self.pieces = pieces
            self.index = 0
            self.current: dict[str, Any] = {}  # kept alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return 1  # explicit-batch network: the batch is in the shapes

        def get_batch(self, names):
            if self.index >= len(self.pieces):
                return None
            piece = self.pieces[self.index]
            self.index += 1
            self.current = {name: torch.from_numpy(piece[name]).to(device) for name in names}
            torch.cuda.synchronize(device)
            return [int(self.current[name].data_ptr()) for name in names]

        def read_calibration_cache(self):
            return None  # calibrate every build: the batches are the user's choice of the moment

        def write_calibration_cache(self, cache) -> None:
            pass

    return Calibrator()


def calibration_profile(builder: Any, piece: dict[str, np.ndarray]):
    """The optimization profile TensorRT calibrates at: min = opt = max = the pieces' shape."""
    profile = builder.create_optimization_profile()
    for name, array in piece.items():
        profile.set_shape(name, array.shape, array.shape, array.shape)
    return profile
