"""What an exported engine looks like, declared once (the optimum-style "export config").

Every exporter, validator, runtime and the Triton writer reads the engine's inputs, outputs
and dynamic axes from here, so they cannot disagree. The synthesis engine's I/O is fixed by
docs/architecture.md, section 2.3:

- ``coords`` float32 ``[B, N, 2]`` (u, v); B and N dynamic;
- ``w`` float32 ``[B, S]``, or ``[B, N, S]`` for an engine exported with spatial styles, or
  ``[B, L, S]`` (one style per style input, ``L = config.family.style_layers(config)``) for an
  engine exported with ``--layer-styles`` (style mixing, per-layer projections);
- ``rgb`` float32 ``[B, N, 3]``, the raw generator output (about [-1, 1]).

The mapping engine takes ``z [B, Z]`` (Z = ``config.latent_dim``, the official z_dim) and, for
a class-conditional model (``config.c_dim > 0``), a second input ``c [B, C]`` (one-hot labels),
and returns ``w [B, S]`` (no truncation: that is ``w_avg + psi * (w - w_avg)`` on the host,
with ``w_avg`` from the engine's metadata; the official code truncates conditional models
towards the same single average).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError

# Opsets the exporter writes (docs/export.md, "Opset"). 13 is the first in which every op of
# the graph has its current form (ReduceSum and Unsqueeze take axes as inputs); 20 is the
# newest the TorchScript exporter writes, and TensorRT 10's ONNX parser and onnxruntime read
# all of them. Declared here, torch-free, because the runtimes' options name them too.
SUPPORTED_OPSETS = range(13, 21)
DEFAULT_OPSET = 17

# Names of the dynamic dimensions, as they appear in the ONNX graph and Triton's config.
BATCH = "batch"
POINTS = "points"

SYNTHESIS = "synthesis"
MAPPING = "mapping"

# Line-factored models (CREPS; docs/line-engines.md): the grid engines' roles and axes.
LINES = "lines"
COMPOSE = "compose"
ROWS = "rows"
COLUMNS = "columns"
PIXELS = "pixels"


@dataclass(frozen=True)
class TensorSpec:
    """One engine input or output: a name and a shape whose str entries are dynamic axes."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """{axis index: axis name} for the dimensions that vary between calls."""
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}

    def concrete(self, **sizes: int) -> tuple[int, ...]:
        """The shape with every dynamic axis replaced by ``sizes[name]``."""
        return tuple(sizes[size] if isinstance(size, str) else size for size in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class EngineSpec:
    """Inputs and outputs of one engine (``role`` is ``synthesis`` or ``mapping``)."""

    role: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spatial_style: bool = False
    layer_styles: bool = False  # w is per-layer styles [B, L, S] (export --layer-styles)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The ``dynamic_axes`` argument of ``torch.onnx.export``."""
        return {spec.name: spec.dynamic_axes for spec in self.inputs + self.outputs}

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.inputs + self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "role": self.role,
            "spatial_style": self.spatial_style,
            **({"layer_styles": True} if self.layer_styles else {}),  # engines without it read as before
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
        }


def synthesis_spec(config: GeneratorConfig, spatial_style: bool = False, layer_styles: bool = False) -> EngineSpec:
    """coords [B, N, 2], w [B, S] (or [B, N, S]; or per-layer [B, L, S]) -> rgb [B, N, 3]."""
    style = config.style_dim
    if spatial_style and layer_styles:
        raise CipsError("An engine takes one style per point or one per layer, not both (--spatial-style or --layer-styles).")
    w_shape: tuple[int | str, ...] = (BATCH, POINTS, style) if spatial_style else (BATCH, style)
    if layer_styles:
        w_shape = (BATCH, config.family.style_layers(config), style)
    return EngineSpec(
        role=SYNTHESIS,
        inputs=(TensorSpec("coords", (BATCH, POINTS, 2)), TensorSpec("w", w_shape)),
        outputs=(TensorSpec("rgb", (BATCH, POINTS, 3)),),
        spatial_style=spatial_style,
        layer_styles=layer_styles,
    )


def mapping_spec(config: GeneratorConfig) -> EngineSpec:
    """z [B, Z] (and c [B, C] for a class-conditional model) -> w [B, S]."""
    inputs = (TensorSpec("z", (BATCH, config.latent_dim)),)
    if config.c_dim:
        inputs += (TensorSpec("c", (BATCH, config.c_dim)),)
    return EngineSpec(role=MAPPING, inputs=inputs, outputs=(TensorSpec("w", (BATCH, config.style_dim)),))


def mapping_feeds(config: GeneratorConfig, z: Any, c: Any = None, *, source: str = "This model") -> dict[str, Any]:
    """The mapping engine's inputs by name (``mapping_spec`` order): ``{"z": z}`` and, for a
    class-conditional model, ``"c": c``; host float32 numpy. One sentence for a z of the wrong
    width, a missing label on a conditional model, a label given to an unconditional one, or a
    label of the wrong shape. Every engine runtime (onnxruntime, TensorRT's host mapping,
    OpenVINO, Triton) feeds its mapping through this."""
    import numpy as np

    z = np.ascontiguousarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != config.latent_dim:
        raise CipsError(f"{source} maps z of shape [B, {config.latent_dim}], not {list(z.shape)}.")
    feeds = {"z": z}
    if config.c_dim:
        if c is None:
            raise CipsError(f"{source} is class-conditional ({config.c_dim} classes): give a label c [B, {config.c_dim}].")
        c = np.ascontiguousarray(c, dtype=np.float32)
        if c.shape != (z.shape[0], config.c_dim):
            raise CipsError(f"{source} takes a label c of shape [{z.shape[0]}, {config.c_dim}], not {list(c.shape)}.")
        feeds["c"] = c
    elif c is not None:
        raise CipsError(f"{source} is unconditional: it takes no class label c.")
    return feeds


def _grid_style(config: GeneratorConfig, layer_styles: bool) -> TensorSpec:
    """A grid engine's ``w``: [B, S], or per-layer styles [B, L, S] (``export --layer-styles``)."""
    style = config.style_dim
    return TensorSpec("w", (BATCH, config.family.style_layers(config), style) if layer_styles else (BATCH, style))


def lines_spec(config: GeneratorConfig, features: int, layer_styles: bool = False) -> EngineSpec:
    """The line engine: v [B, H] (the rows' v), u [B, W] (the columns' u), w [B, S] (or
    per-layer [B, L, S]) -> row_lines [B, H, F], column_lines [B, W, F].

    F = ``generator.line_floats_per_value()``: every block's line of one coordinate value,
    flattened (CREPS: levels x slots x bi-line channels, in that order).
    """
    return EngineSpec(
        role=LINES,
        inputs=(TensorSpec("v", (BATCH, ROWS)), TensorSpec("u", (BATCH, COLUMNS)), _grid_style(config, layer_styles)),
        outputs=(TensorSpec("row_lines", (BATCH, ROWS, features)), TensorSpec("column_lines", (BATCH, COLUMNS, features))),
        layer_styles=layer_styles,
    )


def compose_spec(config: GeneratorConfig, features: int, layer_styles: bool = False) -> EngineSpec:
    """The compose engine: row_lines [B, H, F], column_lines [B, W, F], w [B, S] (or per-layer
    [B, L, S]) -> rgb [B, H W, 3].

    Pixel (i, j) of the H x W block (row i, column j) is ``rgb[:, i * W + j]`` (row-major).
    """
    return EngineSpec(
        role=COMPOSE,
        inputs=(
            TensorSpec("row_lines", (BATCH, ROWS, features)),
            TensorSpec("column_lines", (BATCH, COLUMNS, features)),
            _grid_style(config, layer_styles),
        ),
        outputs=(TensorSpec("rgb", (BATCH, PIXELS, 3)),),
        layer_styles=layer_styles,
    )


def grid_spec(role: str, metadata: Any) -> EngineSpec:
    """The spec of a grid engine (``lines`` or ``compose``) from its metadata: F read from
    the engine's recorded I/O (``metadata.io``), the config from ``metadata.config``."""
    io = metadata.io
    features = int(io["outputs"][0]["shape"][2]) if role == LINES else int(io["inputs"][0]["shape"][2])
    return (lines_spec if role == LINES else compose_spec)(metadata.config, features, bool(metadata.layer_styles))


# ONNX TensorProto element types of the dtypes a spec may name.
_ONNX_ELEMENT_TYPES = {"float32": 1, "float16": 10, "int64": 7}


def interface_mismatches(graph: Any, spec: EngineSpec) -> list[str]:
    """How an ONNX graph's declared inputs and outputs differ from ``spec`` ([] when they agree).

    Checked as optimum does: names and their order, element types, ranks, every static
    size, and the name of every dynamic axis (a dynamic axis exported as a constant, or
    a static one left symbolic, is a mismatch). ``graph`` is an ``onnx.GraphProto``.
    """
    problems = []
    for kind, declared, expected in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        names = [value.name for value in declared]
        if names != [tensor.name for tensor in expected]:
            problems.append(f"{kind}s are {names}, not {[tensor.name for tensor in expected]}")
            continue
        for value, tensor in zip(declared, expected):
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type != _ONNX_ELEMENT_TYPES[tensor.dtype]:
                problems.append(f"{kind} {tensor.name!r} has ONNX element type {tensor_type.elem_type}, not {tensor.dtype}")
            dims = list(tensor_type.shape.dim)
            if len(dims) != len(tensor.shape):
                problems.append(f"{kind} {tensor.name!r} has rank {len(dims)}, not {len(tensor.shape)}")
                continue
            for axis, (dim, size) in enumerate(zip(dims, tensor.shape)):
                got = dim.dim_param if dim.HasField("dim_param") else (dim.dim_value if dim.HasField("dim_value") else None)
                if got != size:
                    problems.append(f"{kind} {tensor.name!r} axis {axis} is {got!r}, not {size!r}")
    return problems


def example_inputs(spec: EngineSpec, batch: int = 2, points: int = 37, device: Any = "cpu"):
    """Tracing inputs for ``spec`` (torch tensors: export work): sizes that are not 1 and not
    powers of two, so that no dimension can be specialised to a constant by accident. A tuple
    in ``spec.inputs`` order."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = []
    for tensor in spec.inputs:
        # Rows and columns differ (5, 7) so that the block's two axes cannot be confused.
        shape = tensor.concrete(**{BATCH: batch, POINTS: points, ROWS: 5, COLUMNS: 7})
        tensors.append((torch.rand(shape, generator=generator) * 2 - 1).to(device))
    return tuple(tensors)
