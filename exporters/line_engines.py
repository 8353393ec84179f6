"""Grid engines of line-factored generators (CREPS): the line engine and the compose engine.

A line-factored generator computes the pixel at (u, v) from the row line of v and the
column line of u (``Generator.line_factored``, ``line_features``, ``compose_block``). On a
grid of H x W pixels the H + W lines are shared, so besides the per-point synthesis engine
(coords, w -> rgb: scattered layouts) such a model exports two more engines
(:mod:`.spec`, docs/line-engines.md):

- ``model.lines.onnx``: v [B, H], u [B, W], w [B, S] -> row_lines [B, H, F], column_lines [B, W, F];
- ``model.compose.onnx``: row_lines [B, H, F], column_lines [B, W, F], w [B, S] -> rgb [B, H W, 3].

F is ``generator.line_floats_per_value()``: a coordinate value's lines of every block,
flattened level-major (CREPS: [levels, slots, bi-line channels]). The two modules below are
what the exporter traces; they only wrap the family's own ``line_features`` and
``compose_block``, so the engines compute exactly what the torch fast path computes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from cips_deploy.families.generator import Generator

from .engine_files import ROLES, line_engine_path  # noqa: F401  (imported from here by callers)
from .spec import COMPOSE, LINES, EngineSpec, compose_spec, lines_spec


def has_grid_engines(generator: Generator, spatial_style: bool) -> bool:
    """Whether an export of ``generator`` includes grid engines: line-factored families with
    one style (or one per style input) per sample; per-point styles stay per point."""
    return bool(getattr(generator, "line_factored", False)) and not spatial_style


def grid_specs(generator: Generator, layer_styles: bool = False) -> dict[str, EngineSpec]:
    """{role: spec} of the line and compose engines of ``generator`` (``layer_styles``: they
    take per-layer styles ws [B, L, S], as an ``export --layer-styles`` synthesis engine does)."""
    features = generator.line_floats_per_value()
    return {LINES: lines_spec(generator.config, features, layer_styles),
            COMPOSE: compose_spec(generator.config, features, layer_styles)}


def grid_modules(generator: Generator, layer_styles: bool = False) -> dict[str, nn.Module]:
    """{role: traceable module} of the line and compose engines."""
    return {LINES: LineEngine(generator, layer_styles), COMPOSE: ComposeEngine(generator, layer_styles)}


def _flatten_lines(lines: list[Tensor]) -> Tensor:
    """[L_q [B, K, r, bc] for each level] -> [B, K, F] with F = levels * r * bc (level-major)."""
    return torch.stack(lines, dim=2).flatten(2)


class LineEngine(nn.Module):
    """The traced line engine: v [B, H], u [B, W], w [B, S] (or ws [B, L, S] with
    ``layer_styles``) -> row_lines [B, H, F], column_lines [B, W, F]."""

    def __init__(self, generator: Generator, layer_styles: bool = False) -> None:
        super().__init__()
        self.generator = generator
        self.layer_styles = layer_styles

    def forward(self, v: Tensor, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        g = self.generator
        ws = w if self.layer_styles else g.layer_styles(w)
        return _flatten_lines(g.line_features("row", v, ws)), _flatten_lines(g.line_features("column", u, ws))


class ComposeEngine(nn.Module):
    """The traced compose engine: row_lines [B, H, F], column_lines [B, W, F], w [B, S] (or
    ws [B, L, S] with ``layer_styles``) -> rgb [B, H W, 3]."""

    def __init__(self, generator: Generator, layer_styles: bool = False) -> None:
        super().__init__()
        self.generator = generator
        self.layer_styles = layer_styles
        self.layout = line_layout(generator)

    def forward(self, row_lines: Tensor, column_lines: Tensor, w: Tensor) -> Tensor:
        g = self.generator
        rows, columns = split_lines(row_lines, self.layout), split_lines(column_lines, self.layout)
        ws = w if self.layer_styles else g.layer_styles(w)
        return g.compose_block(rows, columns, ws)  # the torch fast path's own composition


def line_layout(generator: Generator) -> tuple[int, int, int]:
    """(levels, slots, channels) of a line value: F = levels * slots * channels."""
    slots = generator.line_slots
    features = generator.line_floats_per_value()
    with torch.no_grad():  # one value's lines tell the number of levels and their width
        probe = generator.line_features("row", torch.zeros(1, 1, device=generator.device), generator.layer_styles(generator.w_avg[None].float()))
    levels = len(probe)
    return levels, slots, features // (levels * slots)


def split_lines(lines: Tensor, layout: tuple[int, int, int]) -> list[Tensor]:
    """[B, K, F] -> [[B, K, r, bc] per level] (views), the inverse of the line engine's flattening."""
    levels, slots, channels = layout
    # reshape with the input's own sizes: the tracer keeps them symbolic (unflatten's export froze them)
    shaped = lines.reshape(lines.shape[0], lines.shape[1], levels, slots, channels)  # [B, K, levels, r, bc]
    return [shaped[:, :, level] for level in range(levels)]


# ------------------------------------------------------------------------ validation


def grid_cases(generator: Generator, seed: int = 2) -> list[tuple[str, Tensor, Tensor, Tensor]]:
    """(name, v [B, H], u [B, W], w [B, S]) for validating the grid engines: a square grid
    on the training lattice, a non-square off-grid block, a block outside [-1, 1] and the
    exact edges (B = 1, 2, 3, 1)."""
    rng = torch.Generator().manual_seed(seed)
    side = min(generator.config.size, 64)
    lattice = (torch.arange(side) + 0.5) / side * 2 - 1  # pixel centres
    edges = torch.tensor([-1.0, -1.0 + 1e-6, -1.0 / side, 0.0, 1.0 / side, 1.0 - 1e-6, 1.0])  # a cylinder's seam at +-1

    def uniform(batch: int, count: int, low: float, high: float) -> Tensor:
        return torch.rand(batch, count, generator=rng) * (high - low) + low

    blocks = [
        (f"square grid, B=1", lattice[None], lattice[None]),
        ("non-square, off-grid, B=2", uniform(2, 24, -1.0, 1.0), uniform(2, 40, -1.0, 1.0)),
        ("outside [-1, 1] (to +-3), B=3", uniform(3, 5, -3.0, 3.0), uniform(3, 9, -3.0, 3.0)),
        ("edges and seam u, v = +-1, B=1", edges[None], edges[None]),
    ]
    cases = []
    for name, v, u in blocks:
        z = torch.randn(v.shape[0], generator.config.latent_dim, generator=rng)
        c = random_labels(generator.config.c_dim, (v.shape[0],), rng)  # a conditional model's classes
        with torch.no_grad():
            w = generator.map(z.to(generator.device), truncation=0.7, c=None if c is None else c.to(generator.device)).cpu()
        cases.append((name, v, u, w))
    return cases


def random_labels(classes: int, batch: tuple[int, ...], rng: torch.Generator) -> Tensor | None:
    """One-hot labels float32 ``batch + [C]`` of random classes; None for an unconditional model (C = 0)."""
    if not classes:
        return None
    return torch.nn.functional.one_hot(torch.randint(classes, batch, generator=rng), classes).float()


def block_coords(v: Tensor, u: Tensor) -> Tensor:
    """v [B, H], u [B, W] -> coords [B, H W, 2] (u, v), row-major: the compose engine's pixel order."""
    batch, height, width = v.shape[0], v.shape[1], u.shape[1]
    return torch.stack([u[:, None, :].expand(batch, height, width), v[:, :, None].expand(batch, height, width)], dim=-1).reshape(batch, -1, 2)


def validate_grid(generator: Generator, lines_file: Path, compose_file: Path, *, atol: float,
                  layer_styles: bool = False) -> list:
    """Case results for the line and compose engines against torch: the lines against
    ``line_features``, and lines -> compose against the per-point ``synthesize`` on the grid
    (``layer_styles``: engines of per-layer styles, fed a different style per half of the
    style inputs and compared with ``synthesize_layers``)."""
    import onnxruntime as ort

    from .cases import CaseResult
    from .cases import compare as _compare

    options = ort.SessionOptions()
    options.log_severity_level = 3
    specs = grid_specs(generator, layer_styles)
    sessions = {role: ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
                for role, file in ((LINES, lines_file), (COMPOSE, compose_file))}
    results = []
    for name, v, u, w in grid_cases(generator):
        shapes = f"rows x columns {v.shape[1]}x{u.shape[1]}"
        device = generator.device
        with torch.no_grad():
            ws = generator.layer_styles(w.to(device))
            if layer_styles:  # the later half of the style inputs another style: mixing, as a render mixes
                ws = ws.clone()
                ws[:, ws.shape[1] // 2 :] = generator.layer_styles(w.flip(-1).to(device))[:, ws.shape[1] // 2 :]
            rows = _flatten_lines(generator.line_features("row", v.to(device), ws)).cpu()
            columns = _flatten_lines(generator.line_features("column", u.to(device), ws)).cpu()
            coords = block_coords(v, u).to(device)
            expected = (generator.synthesize_layers(coords, ws) if layer_styles else generator.synthesize(coords, w.to(device))).cpu()
        fed = (ws.cpu() if layer_styles else w).numpy()
        try:
            got_rows, got_columns = sessions[LINES].run(specs[LINES].output_names, {"v": v.numpy(), "u": u.numpy(), "w": fed})
            (rgb,) = sessions[COMPOSE].run(
                specs[COMPOSE].output_names, {"row_lines": got_rows, "column_lines": got_columns, "w": fed}
            )
        except Exception as error:  # onnxruntime refusing the inputs is a failed case, not a crash
            results.append(CaseResult(LINES, name, f"{shapes}: {type(error).__name__}", float("inf"), atol))
            continue
        results.append(_compare(LINES, f"{name}: rows", shapes, rows, got_rows, atol))
        results.append(_compare(LINES, f"{name}: columns", shapes, columns, got_columns, atol))
        results.append(_compare(COMPOSE, f"{name}: -> rgb", shapes, expected, rgb, atol))
    return results

