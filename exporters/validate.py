"""Validate an exported engine against the torch model it came from, as optimum does.

onnxruntime (CPU execution provider: the fp32 reference) and torch run the same inputs;
the export passes when every output agrees within ``atol`` (1e-4 in fp32). The inputs
cover what a deployed engine meets: points on the training grid and between its pixels,
points outside [-1, 1] (extrapolation, the cylinder's wrap-around), the exact edges,
N that is not a power of two, and B = 1 as well as B > 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cips_deploy.runtime.coords import grid_coords
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator

from .cases import CaseResult, compare as _compare  # noqa: F401  (CaseResult: imported from here too)
from .line_engines import random_labels
from .spec import COMPOSE, LINES, MAPPING, EngineSpec, interface_mismatches

ATOL = 1e-4


class ValidationError(CipsError):
    """The exported engine disagrees with torch beyond the tolerance; ``report`` says where."""

    def __init__(self, message: str, report: "ValidationReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """Per-case max absolute differences between onnxruntime and torch."""

    atol: float = ATOL
    cases: list[CaseResult] = field(default_factory=list)
    # Where an engine's declared inputs and outputs differ from its spec: "engine: problem".
    interface_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(case.ok for case in self.cases) and not self.interface_problems

    @property
    def max_abs(self) -> float:
        return max((case.max_abs for case in self.cases), default=float("nan"))

    def format(self) -> str:
        """A short table, one line per case, then the verdict."""
        lines = [f"Validation: onnxruntime (CPU) against torch, fp32, tolerance max abs <= {self.atol:g}"]
        lines += [f"  interface FAILED: {problem}" for problem in self.interface_problems]
        for case in self.cases:
            verdict = "ok" if case.ok else "FAILED"
            lines.append(f"  {case.engine:<9} {case.case:<34} {case.shapes:<28} max abs {case.max_abs:.2e}  {verdict}")
        lines.append(f"  {'passed' if self.ok else 'FAILED'}: largest difference {self.max_abs:.2e}")
        return "\n".join(lines)


def synthesis_cases(
    generator: Generator, spatial_style: bool, seed: int = 0, *, layer_styles: bool = False
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, coords [B, N, 2], w [B, S] or [B, N, S], or per-layer [B, L, S] of L different
    styles with ``layer_styles``) for every validation case."""
    size = generator.config.size
    rng = torch.Generator().manual_seed(seed)

    def uniform(batch: int, points: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, points, 2, generator=rng) * (high - low) + low

    on_grid = torch.from_numpy(grid_coords(size, size))  # numpy in the runtime; torch for the model
    if on_grid.shape[1] > 2304:  # a random subset of the training grid keeps big models quick
        keep = torch.randperm(on_grid.shape[1], generator=rng)[:2000].sort().values
        on_grid = on_grid[:, keep]
    edges = torch.tensor([-1.0, -1.0 + 1e-6, -1.0 / size, 0.0, 1.0 / size, 1.0 - 1e-6, 1.0])
    vv, uu = torch.meshgrid(edges, edges, indexing="ij")
    boundary = torch.stack([uu, vv], dim=-1).reshape(1, -1, 2)
    cases = [
        ("training grid, B=1", on_grid),
        ("off-grid in [-1, 1], B=2", uniform(2, 999, -1.0, 1.0)),
        ("outside [-1, 1] (to +-3), B=3", uniform(3, 257, -3.0, 3.0)),
        ("edges and seam u, v = +-1, B=1", boundary),
    ]
    result = []
    for name, coords in cases:
        batch, points = coords.shape[:2]
        z_shape = (batch, points, generator.config.latent_dim) if spatial_style else (batch, generator.config.latent_dim)
        if layer_styles:  # a different style for every style input
            z_shape = (batch, generator.config.family.style_layers(generator.config), generator.config.latent_dim)
        z = torch.randn(z_shape, generator=rng)
        c = random_labels(generator.config.c_dim, z_shape[:-1], rng)
        with torch.no_grad():
            w = generator.map(z.to(generator.device), truncation=0.7, c=None if c is None else c.to(generator.device)).cpu()
        result.append((name, coords, w))
    return result


def mapping_cases(generator: Generator, seed: int = 1) -> list[tuple[str, tuple[torch.Tensor, ...]]]:
    """(name, (z [B, Z],) or (z [B, Z], c [B, C]) for a class-conditional model) for the mapping engine."""
    rng = torch.Generator().manual_seed(seed)
    latent, classes = generator.config.latent_dim, generator.config.c_dim
    cases = []
    for batch in (1, 5):
        z = torch.randn(batch, latent, generator=rng)
        c = random_labels(classes, (batch,), rng)
        cases.append((f"z ~ N(0, I), B={batch}" + (", random classes" if classes else ""), (z,) if c is None else (z, c)))
    if classes:  # every class once, so that each column of the label embedding is checked
        z = torch.randn(classes, latent, generator=rng)
        cases.append((f"each of the {classes} classes", (z, torch.eye(classes))))
    return cases


def validate(
    generator: Generator,
    engines: dict[str, tuple[Path, EngineSpec]],
    *,
    atol: float = ATOL,
) -> ValidationReport:
    """Run every engine in ``engines`` ({label: (onnx path, spec)}) against ``generator``.

    Each engine's declared interface is checked against its spec first (names, types,
    static sizes, dynamic axes); then every case's values. Inputs are fed by the spec's
    names, in its order.
    """
    import onnx
    import onnxruntime as ort

    report = ValidationReport(atol=atol)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a report, not runtime chatter
    for label, (path, spec) in engines.items():
        graph = onnx.load(str(path), load_external_data=False).graph
        report.interface_problems += [f"{label}: {problem}" for problem in interface_mismatches(graph, spec)]
        if spec.role in (LINES, COMPOSE):  # validated as a pair on grids, below
            continue
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if spec.role == MAPPING:
            cases = [(name, inputs, f"z {list(inputs[0].shape)}") for name, inputs in mapping_cases(generator)]
        else:
            cases = [
                (name, (coords, w), f"coords {list(coords.shape)}")
                for name, coords, w in synthesis_cases(generator, spec.spatial_style, layer_styles=spec.layer_styles)
            ]
        for name, inputs, shapes in cases:
            with torch.no_grad():
                expected = _torch_reference(generator, spec, inputs)
            try:
                (got,) = session.run(spec.output_names, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
            except Exception as error:  # onnxruntime refusing the inputs is a failed case, not a crash
                report.cases.append(CaseResult(label, name, f"{shapes}: {type(error).__name__}", float("inf"), atol))
                continue
            report.cases.append(_compare(label, name, shapes, expected, got, atol))
    roles = {spec.role: path for path, spec in engines.values()}
    if LINES in roles and COMPOSE in roles:
        from .line_engines import validate_grid

        layered = next(spec.layer_styles for _, spec in engines.values() if spec.role == LINES)
        report.cases += validate_grid(generator, roles[LINES], roles[COMPOSE], atol=atol, layer_styles=layered)
    return report


def _torch_reference(generator: Generator, spec: EngineSpec, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """What the torch model computes for an engine's inputs (in ``spec.inputs`` order)."""
    inputs = tuple(tensor.to(generator.device) for tensor in inputs)
    if spec.role == MAPPING:
        return generator.mapping(*inputs).cpu()
    if spec.layer_styles:
        return generator.synthesize_layers(*inputs).cpu()
    return generator.synthesize(*inputs).cpu()
