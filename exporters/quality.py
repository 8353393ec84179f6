"""Quality reports of reduced-precision engines: rendered images against the fp32 engine.

:func:`measure_quality` renders the same images through two ONNX synthesis engines (the
fp32 export and its fp16 or int8 version) and compares them the way a viewer would: the
raw outputs are clipped to the image range [-1, 1] (as ``rgb_to_uint8`` clips) and

- PSNR = 10 log10(2^2 / MSE) in dB, the range [-1, 1] having peak-to-peak 2;
- max error = the largest |difference| in output units (times 127.5: in 8-bit levels).

One image per seed: z from the seed by the one rule (``cips_deploy.seed_latent``), w = mapping(z) at
truncation 1 (the widest styles), points on the model's training grid at
``max(size, 64)`` pixels square. The report keeps every seed's figures; the gate of
``--min-psnr`` holds the worst seed to the threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cips_deploy.runtime.coords import grid_coords
from cips_deploy.runtime.images import decibels, raw_psnr
from cips_deploy.runtime.seeds import seed_latent
from cips_deploy.runtime.styles import class_label
from cips_deploy.families.generator import Generator

DEFAULT_SEEDS = (0, 1, 2, 3)
CHUNK_POINTS = 8192  # points per engine call: bounds the working memory of the comparison
MIN_SIDE = 64


@dataclass
class QualityReport:
    """PSNR (dB) and max |difference| per seed of an engine against the fp32 engine."""

    mode: str
    seeds: list[int]
    psnr_db: list[float]
    max_abs: list[float]
    side: int
    min_psnr: float | None = None
    truncation: float = 1.0
    notes: dict[str, str] = field(default_factory=dict)
    subject: str = "engine"  # what was measured: the per-point engine, or "grid engines" (lines, compose)

    @property
    def worst_psnr(self) -> float:
        return min(self.psnr_db)

    @property
    def max_error(self) -> float:
        return max(self.max_abs)

    @property
    def ok(self) -> bool:
        return self.min_psnr is None or self.worst_psnr >= self.min_psnr

    def format(self) -> str:
        """A short table (one line per seed) and the verdict, as ``export`` prints it."""
        lines = [
            f"Quality of the {self.mode} {self.subject} against fp32 ({self.side}x{self.side} images on the training grid, "
            f"truncation {self.truncation:g}, outputs clipped to [-1, 1]):"
        ]
        for seed, psnr, error in zip(self.seeds, self.psnr_db, self.max_abs):
            lines.append(f"  seed {seed:<4} PSNR {decibels(psnr):>9}  max error {error:.2e} ({error * 127.5:.2f} of 255 levels)")
        verdict = f"threshold {self.min_psnr:g} dB: {'passed' if self.ok else 'FAILED'}" if self.min_psnr is not None else "no threshold"
        lines.append(f"  worst PSNR {decibels(self.worst_psnr)}, max error {self.max_error:.2e}; {verdict}")
        return "\n".join(lines)

    def to_json(self) -> str:
        # Infinity (identical images) is written as JSON's non-standard Infinity, which
        # Python's json reads back.
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "QualityReport":
        return cls(**json.loads(text))


def psnr_and_max_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, max |difference|) of two raw outputs after clipping to [-1, 1]."""
    a = np.clip(reference.astype(np.float64), -1.0, 1.0)
    b = np.clip(candidate.astype(np.float64), -1.0, 1.0)
    difference = a - b
    return raw_psnr(float(np.mean(difference**2))), float(np.abs(difference).max())


def quality_inputs(generator: Generator, seeds=DEFAULT_SEEDS, truncation: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """coords [1, side*side, 2] on the training grid and one w [1, S] per seed."""
    side = max(generator.config.size, MIN_SIDE)
    coords = torch.from_numpy(grid_coords(side, side))  # numpy in the runtime; torch for the model
    ws = []
    classes = generator.config.c_dim
    for index, seed in enumerate(seeds):
        z = seed_latent(int(seed), generator.config)  # the one seed rule (numpy)
        c = class_label(generator.config, index % classes) if classes else None  # a conditional model: classes in turn
        with torch.no_grad():
            ws.append(generator.map(z, truncation=truncation, c=c).float().cpu())
    return coords, ws


def engine_inputs(coords: torch.Tensor, w: torch.Tensor, spatial_style: bool) -> dict[str, np.ndarray]:
    """The feed of a synthesis engine: coords [1, N, 2] and w [1, S], or w repeated per
    point [1, N, S] for an engine exported with per-point styles."""
    if spatial_style:
        w = w[:, None, :].expand(-1, coords.shape[1], -1)
    return {"coords": coords.contiguous().numpy(), "w": w.contiguous().numpy()}


def render(session, coords: torch.Tensor, w: torch.Tensor, spatial_style: bool = False) -> np.ndarray:
    """rgb [1, N, 3] from an onnxruntime session, CHUNK_POINTS points per call."""
    parts = []
    for start in range(0, coords.shape[1], CHUNK_POINTS):
        (rgb,) = session.run(["rgb"], engine_inputs(coords[:, start : start + CHUNK_POINTS], w, spatial_style))
        parts.append(rgb)
    return np.concatenate(parts, axis=1)


def cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_quality(
    reference: Path,
    candidate: Path,
    generator: Generator,
    *,
    mode: str,
    seeds=DEFAULT_SEEDS,
    min_psnr: float | None = None,
    truncation: float = 1.0,
) -> QualityReport:
    """Render ``seeds`` through both engines (onnxruntime, CPU) and compare them."""
    from .metadata import read_onnx_metadata

    spatial = read_onnx_metadata(reference).spatial_style
    sessions = cpu_session(reference), cpu_session(candidate)
    return _seed_by_seed(
        lambda coords, w: tuple(render(session, coords, w, spatial) for session in sessions),
        generator, mode=mode, seeds=seeds, min_psnr=min_psnr, truncation=truncation,
    )


def _seed_by_seed(pair, generator: Generator, *, mode: str, seeds, min_psnr: float | None, truncation: float,
                  subject: str = "engine") -> QualityReport:
    """The report of ``pair(coords [1, N, 2], w [1, S]) -> (expected, got)`` raw outputs [1, N, 3],
    one image per seed on the training grid (:func:`quality_inputs`)."""
    coords, ws = quality_inputs(generator, seeds, truncation)
    psnrs, errors = [], []
    for w in ws:
        psnr, error = psnr_and_max_error(*pair(coords, w))
        psnrs.append(psnr)
        errors.append(error)
    side = int(round(math.sqrt(coords.shape[1])))
    return QualityReport(mode, [int(s) for s in seeds], psnrs, errors, side, min_psnr, truncation, subject=subject)


def measure_grid_quality(
    engine: Path,
    grid: dict[str, Path],
    generator: Generator,
    *,
    mode: str,
    seeds=DEFAULT_SEEDS,
    min_psnr: float | None = None,
    truncation: float = 1.0,
) -> QualityReport:
    """The images a grid renders through a line-factored export's grid path (the line engine
    once per row and column, the compose engine per block: the runtime's own
    :class:`~.grid_runtime.GridRenderer` over ``grid`` beside the per-point ``engine``) against
    the fp32 model in torch, seed by seed, as :func:`measure_quality` compares engines."""
    from .grid_runtime import GridRenderer
    from .ort_grid import OnnxGridEngines
    from .ort_runtime import OnnxEngine

    opened = OnnxEngine(engine, providers="cpu")
    renderer = GridRenderer(OnnxGridEngines(opened, grid), generator.config, max_bytes=256 << 20, pad=64,
                            point_batch=CHUNK_POINTS)

    def pair(coords: torch.Tensor, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            expected = generator.synthesize(coords, w).float().numpy()
        return expected, renderer.synthesize(coords.numpy(), w.numpy())

    return _seed_by_seed(pair, generator, mode=mode, seeds=seeds, min_psnr=min_psnr, truncation=truncation,
                         subject="grid engines (lines, compose)")
