"""Export a generator to ONNX: the synthesis engine and the mapping engine, with metadata.

``export_onnx(generator, "model.onnx")`` writes

- ``model.onnx``: coords [B, N, 2], w [B, S] (or [B, N, S]) -> rgb [B, N, 3];
- ``model.mapping.onnx``: z [B, S] -> w [B, S];
- ``model.onnx.data`` only when the weights pass protobuf's 2 GB limit (external data).

Both models carry the metadata of :mod:`.metadata`, pass ``onnx.checker`` with
``full_check=True`` and, unless ``validate=False``, agree with torch within 1e-4 on the
cases of :mod:`.validate`. Nothing appears at the destination unless all of that succeeds.

The graph is traced with the TorchScript exporter (``dynamo=False``): it takes the dynamic
axes directly, needs no onnxscript, and names every node after its module scope
(``/generator/embedding/Floor``), which the TensorRT builder uses to keep the coordinate
path in fp32.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from cips_deploy._version import __version__
from cips_deploy.runtime.atomic import check_destination, staged
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator
from cips_deploy.families.layers import ModulatedLinear

from . import integrity, onnx_proto
from .engine_files import mapping_path_for  # noqa: F401  (its home before engine_files; callers import it here)
from .graph_passes import remove_redundant_casts
from .line_engines import ROLES as GRID_ROLES
from .line_engines import grid_modules, grid_specs, has_grid_engines, line_engine_path
from .metadata import EngineMetadata, build_metadata, weights_sha256
from .spec import DEFAULT_OPSET, SUPPORTED_OPSETS, EngineSpec, example_inputs, mapping_spec, synthesis_spec
from .validate import ATOL, ValidationError, ValidationReport, validate

# Protobuf refuses messages of 2 GiB or more. The graph itself, names and metadata take a
# few megabytes at most, so weights beyond this go to an external data file.
PROTOBUF_LIMIT = 2**31
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 64 * 2**20


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    synthesis: Path
    mapping: Path | None
    files: list[Path] = field(default_factory=list)
    external_data: bool = False
    metadata: EngineMetadata | None = None
    report: ValidationReport | None = None
    # Line-factored models: {"lines": model.lines.onnx, "compose": model.compose.onnx}.
    grid: dict[str, Path] = field(default_factory=dict)


class _Synthesis(nn.Module):
    """The traced function: coords [B, N, 2], w -> rgb [B, N, 3] (``layered``: w is per-layer styles [B, L, S])."""

    def __init__(self, generator: Generator, layered: bool = False) -> None:
        super().__init__()
        self.generator = generator
        self.layered = layered

    def forward(self, coords: Tensor, w: Tensor) -> Tensor:
        if self.layered:
            return self.generator.synthesize_layers(coords, w)
        return self.generator.synthesize(coords, w)


class _Mapping(nn.Module):
    """The traced function: z [B, Z] (, c [B, C] for a class-conditional model) -> w [B, S]
    (truncation stays on the host)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.mapping = generator.mapping

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.mapping(z) if c is None else self.mapping(z, c)


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise CipsError(
            f"ONNX opset {opset} is not supported; choose one from {SUPPORTED_OPSETS.start} "
            f"to {SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})."
        )


def estimated_weight_bytes(generator: Generator, spatial_style: bool = False) -> int:
    """Bytes of float32 weights in the synthesis graph, from shapes alone (works on "meta").

    The per-point style path keeps each modulated weight and its square (for the
    demodulation), so it holds those twice.
    """
    mapping = {id(p) for p in generator.mapping.parameters()}
    total = sum(p.numel() for p in generator.parameters() if id(p) not in mapping)
    if spatial_style:
        total += sum(m.weight.numel() for m in generator.modules() if isinstance(m, ModulatedLinear) and m.demodulate)
    return 4 * total


def needs_external_data(generator: Generator, spatial_style: bool = False) -> bool:
    """Whether the synthesis graph of ``generator`` is too big for one protobuf file."""
    return estimated_weight_bytes(generator, spatial_style) > EXTERNAL_DATA_THRESHOLD


def export_onnx(
    generator: Generator,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    spatial_style: bool = False,
    layer_styles: bool = False,
    mapping: bool = True,
    source_file: str = "",
    source_sha256: str = "",
    external_data: bool | None = None,
    validate_export: bool = True,
    atol: float = ATOL,
    overwrite: bool = False,
) -> OnnxExport:
    """Export ``generator`` to ``path`` (and the mapping engine beside it); see the module doc.

    ``external_data``: None decides by size; True forces an external data file (tests, or
    runtimes that prefer it). ``source_file``/``source_sha256`` name the checkpoint the
    generator was loaded from. Raises :class:`ValidationError` (leaving no file) when
    onnxruntime and torch disagree beyond ``atol``.
    """
    path = Path(path)
    check_opset(opset)
    check_destination(path, overwrite=overwrite)
    destinations = [path]
    mapping_file = mapping_path_for(path) if mapping else None
    if mapping_file is not None:
        check_destination(mapping_file, overwrite=overwrite)
        destinations.append(mapping_file)
    generator = generator.eval()
    digest = weights_sha256(generator)
    # layer_styles: the synthesis engine (and the grid engines) take ws [B, L, S] (style mixing).
    specs = [(path, synthesis_spec(generator.config, spatial_style, layer_styles), _Synthesis(generator, layer_styles))]
    if mapping_file is not None:
        specs.append((mapping_file, mapping_spec(generator.config), _Mapping(generator)))
    grid: dict[str, Path] = {}
    if has_grid_engines(generator, spatial_style):  # the family says it has lines: grid engines too
        modules, grid_spec = grid_modules(generator, layer_styles), grid_specs(generator, layer_styles)
        for role in GRID_ROLES:
            grid[role] = line_engine_path(path, role)
            check_destination(grid[role], overwrite=overwrite)
            destinations.append(grid[role])
            specs.append((grid[role], grid_spec[role], modules[role]))

    previous_data = external_data_location(path) if path.exists() else None
    with staged(path.parent, path.name) as stage:
        metadata = None
        used_external = False
        for destination, spec, module in specs:
            meta = build_metadata(
                generator, spec, opset=opset, source_file=source_file, source_sha256=source_sha256, weights_digest=digest
            )
            # Forcing external data concerns the synthesis engine; the mapping engine is small.
            forced = external_data if destination == path else None
            external = _write_model(module, spec, meta, stage.file(destination.name), opset, forced, stage.path)
            used_external |= external and destination == path
            metadata = metadata or meta
        report = None
        if validate_export:
            engines = {spec.role: (stage.file(dest.name), spec) for dest, spec, _ in specs}
            report = validate(generator, engines, atol=atol)
            if not report.ok:
                raise ValidationError(
                    f"Validation failed: onnxruntime and torch differ by up to {report.max_abs:.2e} "
                    f"(tolerance {atol:g}), so nothing was written.",
                    report,
                )
        # The per-point engine last: its presence means the whole set is there.
        files = stage.commit(last=[dest.name for dest in reversed(destinations)])
    # A replaced export may have left external data the new one no longer uses (only our
    # own naming is touched: a foreign model's data file is not ours to delete).
    if previous_data == f"{path.name}.data" and (path.parent / previous_data) not in files:
        (path.parent / previous_data).unlink(missing_ok=True)
    return OnnxExport(path, mapping_file, files, used_external, metadata, report, grid)


def _write_model(
    module: nn.Module,
    spec: EngineSpec,
    meta: EngineMetadata,
    destination: Path,
    opset: int,
    external_data: bool | None,
    stage: Path,
) -> bool:
    """Trace ``module`` into ``destination`` with metadata; returns whether data went external."""
    raw = stage / f"raw-{spec.role}"
    raw.mkdir()
    raw_file = raw / "model.onnx"
    device = next(module.parameters()).device
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation, and the generator's argument
        # checks are Python conditions that the tracer rightly treats as constants.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
        torch.onnx.export(
            module,
            example_inputs(spec, device=device),
            str(raw_file),  # a str, not a Path: only then may the exporter spill >2 GB to external files
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(raw_file))  # pulls in any per-tensor files the exporter spilled
    model.producer_name = "cips-deploy"
    model.producer_version = __version__
    model.doc_string = _doc_string(spec)
    del model.metadata_props[:]
    for key, value in meta.to_strings().items():
        model.metadata_props.add(key=key, value=value)
    _declare_interface(model, spec)
    weight_bytes = sum(len(tensor.raw_data) for tensor in model.graph.initializer)
    if weight_bytes < EXTERNAL_DATA_THRESHOLD:  # shape inference needs the model in one protobuf
        remove_redundant_casts(model)
    external = external_data if external_data is not None else weight_bytes > EXTERNAL_DATA_THRESHOLD
    if external:
        _mark_external(model, f"{destination.name}.data")
    onnx.save_model(model, str(destination))  # writes the marked tensors into the data file beside it
    del model
    shutil.rmtree(raw)
    # The hash of what was written, by the function the readers verify with: stamping and
    # verifying agree whatever onnx writes (data locations, field order).
    integrity.stamp_file(destination)
    # By path, so that models with external data (over 2 GB) are checked too.
    onnx.checker.check_model(str(destination), full_check=True)
    return external


SMALL_TENSOR_BYTES = 1024  # smaller initializers stay inline, where they are readable


def _mark_external(model: onnx.ModelProto, location: str) -> None:
    """Mark the initializers with weights to go to the external data file ``location`` (beside
    the model) when it is saved. Done here rather than by ``onnx.save_model(save_as_external_data=
    True)``, which refuses whenever the *current folder* holds a file of that name (it checks the
    relative location against the working directory, not the model's folder)."""
    from onnx.external_data_helper import set_external_data

    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) >= SMALL_TENSOR_BYTES:
            set_external_data(tensor, location)


def _declare_interface(model: onnx.ModelProto, spec: EngineSpec) -> None:
    """Write the spec's sizes onto the graph's declared inputs and outputs.

    The tracer declares an output size that it computed (the line engine's flattened F)
    as a symbol; the spec knows it is static. Only unknown or symbolic entries of the
    spec's static axes are filled in; a declared size that contradicts the spec is left
    for the validator to report.
    """
    for values in (model.graph.input, model.graph.output):
        for value in values:
            try:
                tensor = spec.tensor(value.name)
            except KeyError:
                continue
            dims = value.type.tensor_type.shape.dim
            if len(dims) != len(tensor.shape):
                continue
            for dim, size in zip(dims, tensor.shape):
                if isinstance(size, int) and not dim.HasField("dim_value"):
                    dim.dim_value = size


def _doc_string(spec: EngineSpec) -> str:
    def shape(tensor) -> str:
        return f"{tensor.name} [{', '.join(str(size) for size in tensor.shape)}]"

    inputs = ", ".join(shape(tensor) for tensor in spec.inputs)
    outputs = ", ".join(shape(tensor) for tensor in spec.outputs)
    return f"cips-deploy {spec.role} engine: {inputs} -> {outputs} (float32)."


def external_data_location(path: Path) -> str | None:
    """The external data file an existing ONNX model refers to, if any (read without onnx)."""
    return onnx_proto.external_data_of(path)
