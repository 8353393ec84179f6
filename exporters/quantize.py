"""fp16 and int8 versions of an exported fp32 ONNX synthesis engine, gated by a quality report.

``reduce_precision(engine, generator, mode)`` rewrites ``engine`` (an fp32 export, in a
work folder) in place as one of

- ``fp16``: weights and compute in float16 wherever a node carries the synthesis
  activations [B, N, C] (the layers' products, biases, activations, colour sums), by
  onnxconverter-common's ``convert_float_to_float16`` with a block list;
- ``int8``: onnxruntime's dynamic quantisation of those products (MatMulInteger, the
  activations' scales computed per call, the weights' per output channel). The export
  traces the layers with the style on the inputs (``((x * s) @ W.T) * d``, not
  ``x @ fold(W, s)``; :func:`~cips_deploy.families.layers.styles_on_inputs`), because a
  dynamic quantiser quantises only products with a constant weight, and a folded weight is
  computed from w at run time;
- ``int8-static``: onnxruntime's static QDQ quantisation of those products, with scales
  calibrated on rendered chunks of real coordinates (the training grid and points off it)
  and real styles (mapped latents of calibration seeds that the report does not use).

Always kept in float32 (the block list, :func:`.graph_passes.coordinate_and_style_nodes`):
the coordinate stage (Fourier features and the embedding's bilinear reads, which compute
from the coordinates alone: sines of arguments up to about 30 and interpolation weights
lose everything in 16 or 8 bits) and the style stage (the affine maps and the weight
folding, which compute from w alone: per-sample work, cheap, whose rounding would shift
every pixel alike). The engine's I/O stays float32 (DESIGN.md section 3): the casts are
inside the graph.

The quality report (:mod:`.quality`) compares the result with the fp32 engine on rendered
images; below ``min_psnr`` the function raises :class:`CipsError` and the caller writes
nothing. The report and the mode are stored in the engine's metadata
(``cips_deploy.contracts.precision``, ``cips_deploy.quality``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from cips_deploy.runtime.atomic import atomic_path
from cips_deploy.runtime.coords import grid_coords
from cips_deploy.runtime.seeds import seed_latent
from cips_deploy.runtime.styles import class_label
from cips_deploy.errors import CipsError
from cips_deploy.families.generator import Generator
from cips_deploy.families.layers import styles_on_inputs

from . import integrity
from .calibration import Calibration, read_folder
from .graph_passes import (
    bypass_weight_identities, constant_nodes, coordinate_and_style_nodes, remove_redundant_casts, split_shared_initializers,
)
from .metadata import PRECISION_KEY, PREFIX, QUALITY_KEY, read_onnx_metadata
from .quality import DEFAULT_SEEDS, QualityReport, engine_inputs, measure_grid_quality, measure_quality
from .spec import COMPOSE, LINES, SYNTHESIS

# The modes and their default --min-psnr (dB against the fp32 engine, worst seed). 40 dB is
# a mean error of about 1% of the image range: below what an 8-bit image shows on smooth,
# trained models. Static int8 rounds every activation to one calibrated scale per tensor
# and cannot be held to that on every model; its default is lower and says so.
MODES = {"fp16": 40.0, "int8": 40.0, "int8-static": 30.0}
# onnxruntime's per_channel: one scale per output channel of every product whose weight is a
# constant. int8 (dynamic) traces the layers with the style on the inputs, so every per-point
# product has its constant weight (per-channel scales); int8-static keeps the folded weights
# (computed from w at run time: activations with calibrated per-tensor scales), which
# measured better on the demo (42.5 dB worst seed against 37.9 with the style on the inputs).
PER_CHANNEL = True
# What a user whose export the gate refused may try instead (docs/precision.md has the figures).
OTHER_MODES = {
    "fp16": "",
    "int8": " (int8 quantises every product's input with one scale per call; int8-static or fp16 may keep more)",
    "int8-static": " (calibrating on the layouts and styles you serve, --calibration-data, may keep more; fp16 keeps most)",
}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CipsError(f"Unknown reduced precision {mode!r}; choose one of {', '.join(MODES)}.")


def default_min_psnr(mode: str) -> float:
    check_mode(mode)
    return MODES[mode]


def _float_regions(model: onnx.ModelProto, coordinate_inputs: tuple[str, ...] = ("coords",)) -> list[str]:
    """Names of the nodes that stay float32: the coordinate and style stages, and the
    Constant nodes that only they read (so that, say, the demodulation's epsilon 1e-8 is
    not rounded to float16's 1e-7)."""
    coordinate, styled = coordinate_and_style_nodes(model, coordinate_inputs)
    kept = coordinate | styled
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    # Nodes that depend on no input (Constants, Identities of shared initializers) follow
    # their readers; walking backwards settles chains of them in one pass.
    constant = constant_nodes(model, tuple(value.name for value in model.graph.input))
    for node in reversed(model.graph.node):
        if node.name in constant and all(readers.get(out, set()) <= kept for out in node.output):
            kept.add(node.name)
    return sorted(kept)


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization logs advice through the root logger and onnxconverter-common
    warns about every constant it rounds: neither is for our users."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def convert_fp16(source: Path, destination: Path, coordinate_inputs: tuple[str, ...] = ("coords",)) -> None:
    """fp16 weights and compute outside the coordinate and style stages; I/O float32.
    ``coordinate_inputs``: the inputs the coordinate stage computes from (a line engine's
    ``v`` and ``u``; none for a compose engine, whose inputs are activations)."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise CipsError("fp16 engines need onnxconverter-common: pip install 'cips-deploy[precision]'.") from None
    model = onnx.load(str(source))
    remove_redundant_casts(model)  # engines exported before the pass existed
    kept = _float_regions(model, coordinate_inputs)
    split_shared_initializers(model, set(kept))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, node_block_list=kept, disable_shape_infer=False
    )
    onnx.save_model(converted, str(destination))


def export_tracing(mode: str | None) -> contextlib.AbstractContextManager:
    """How the fp32 engine that ``mode`` starts from is traced: int8 with the style on the
    layers' inputs (:func:`quantize_int8_dynamic` quantises constant weights only), every
    other mode as a plain export."""
    return styles_on_inputs() if mode == "int8" else contextlib.nullcontext()


def quantize_int8_dynamic(source: Path, destination: Path) -> None:
    """Dynamic int8 products (MatMulInteger: int8 weights with a scale per output channel, the
    activations quantised per call); everything else float32.

    ``source`` must be traced with the style on the inputs (:func:`~cips_deploy.families.layers.styles_on_inputs`,
    as ``export --quantize int8`` does): only products with a constant weight are quantised
    dynamically, and a folded weight ``W * s`` is computed from w at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    original = source
    model = onnx.load(str(source))
    if bypass_weight_identities(model):  # a shared weight behind an Identity looks computed
        bypassed = destination.with_name(destination.stem + ".bypassed.onnx")
        onnx.save_model(model, str(bypassed))
        source = bypassed
    kept = _float_regions(model)
    # quantize_dynamic first rewrites every Gemm as a MatMul named "<Gemm>_MatMul" plus an Add
    # (onnxruntime.quantization.onnx_model.ONNXModel.replace_gemm_with_matmul), so a kept Gemm
    # is kept under that name too.
    gemms = {node.name for node in model.graph.node if node.op_type == "Gemm"}
    kept += [f"{name}_MatMul" for name in kept if name in gemms]
    try:
        quantize_dynamic(
            str(source),
            str(destination),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=kept,
            per_channel=PER_CHANNEL,
        )
    finally:
        if source != original:
            source.unlink()
    _check_products_quantised(model, onnx.load(str(destination), load_external_data=False), set(kept))


def _check_products_quantised(source: onnx.ModelProto, quantised: onnx.ModelProto, kept: set[str]) -> None:
    """Refuse an int8 engine that left a per-point product with a constant weight in float32,
    quantised none (a source traced with folded weights: their weights are computed) or
    quantised a product of the style or coordinate stage."""
    weights = {tensor.name for tensor in source.graph.initializer}
    products = sum(1 for node in source.graph.node
                   if node.op_type == "MatMul" and node.name not in kept and node.input[1] in weights)
    integer = [node for node in quantised.graph.node if node.op_type == "MatMulInteger"]
    stray = [node.name for node in integer if node.name.removesuffix("_quant").removesuffix("_MatMul") in kept]
    if not products:
        raise CipsError(
            "The engine has no per-point product with a constant weight (its layers fold the style into "
            "their weights at run time), so int8 has nothing to quantise; export from the checkpoint with "
            "--quantize int8, which traces the layers with the style on their inputs."
        )
    if len(integer) != products or stray:
        raise CipsError(
            f"int8 quantised {len(integer)} products where the {products} per-point products with constant "
            f"weights were due{' (and ' + stray[0] + ', which stays float32)' if stray else ''}; nothing was written."
        )


class _Calibration:
    """onnxruntime's CalibrationDataReader: batches of coordinates and styles.

    From ``calibration.seeds`` and ``calibration.points``: chunks of real coordinates (the
    training grid and points off it) and mapped styles of the seeds; or the saved batches of
    ``calibration.folder`` (:mod:`.calibration`)."""

    def __init__(self, generator: Generator, spatial_style: bool = False, calibration: Calibration | None = None) -> None:
        calibration = calibration or Calibration()
        if calibration.folder is not None:
            self.batches = read_folder(calibration.folder, generator.config.style_dim, spatial_style)
        else:
            self.batches = self._rendered(generator, spatial_style, calibration)
        self._iterator = iter(self.batches)

    @staticmethod
    def _rendered(generator: Generator, spatial_style: bool, calibration: Calibration) -> list[dict]:
        side = max(generator.config.size, 64)
        on_grid = torch.from_numpy(grid_coords(side, side))[0]  # numpy in the runtime; torch for the model
        rng = torch.Generator().manual_seed(1)
        off_grid = torch.rand(calibration.points, 2, generator=rng) * 2 - 1  # between the pixels
        points = torch.cat([on_grid, off_grid])
        batches = []
        for index, seed in enumerate(calibration.seeds):
            z = torch.from_numpy(seed_latent(int(seed), generator.config))  # the one seed rule
            classes = generator.config.c_dim  # a conditional model: its classes in turn
            c = torch.from_numpy(class_label(generator.config, index % classes)).to(generator.device) if classes else None
            with torch.no_grad():
                w = generator.map(z.to(generator.device), c=c).float().cpu()
            # A different slice of the points for every style keeps the calibration quick.
            order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(index))
            chunk = points[order[: calibration.points]][None]
            batches.append(engine_inputs(chunk, w, spatial_style))
        return batches

    def get_next(self):
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self.batches)


def quantize_int8_static(source: Path, destination: Path, generator: Generator, calibration: Calibration | None = None) -> None:
    """Static QDQ int8 products with calibrated activation scales and per-channel scales for
    constant weights (:data:`PER_CHANNEL`); everything else float32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(source), load_external_data=False)
    quantize_static(
        str(source),
        str(destination),
        _Calibration(generator, read_onnx_metadata(source).spatial_style, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=_float_regions(model),
        per_channel=PER_CHANNEL,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True},
    )


def convert_engine(source: Path, destination: Path, generator: Generator, mode: str,
                   calibration: Calibration | None = None) -> None:
    """Write the ``mode`` version of the fp32 engine ``source`` to ``destination``, ungated
    and without metadata changes (:func:`reduce_precision` adds both), stamped with its
    content hash. ``calibration``: where int8-static's batches come from (default: seeds
    1000-1007, 4096 points each)."""
    check_mode(mode)
    with _quiet():
        if mode == "fp16":
            convert_fp16(source, destination)
        elif mode == "int8":
            quantize_int8_dynamic(source, destination)
        else:
            quantize_int8_static(source, destination, generator, calibration)
    _save_stamped(onnx.load(str(destination)), destination, [])


def _save_stamped(model: onnx.ModelProto, path: Path, props: list[tuple[str, str]]) -> None:
    """Write ``model`` to ``path`` with exactly the metadata ``props`` (through the atomic
    writer), then record the written file's own content hash in it (exporters/integrity.py:
    the runtimes refuse an engine whose graph or weights differ from the hash it carries).
    The converters copy the fp32 engine's metadata, hash included: it is dropped first."""
    if not props:
        props = [(p.key, p.value) for p in model.metadata_props]
    del model.metadata_props[:]
    for key, value in props:
        if key != integrity.KEY:
            model.metadata_props.add(key=key, value=value)
    with atomic_path(path, overwrite=True) as temporary:
        onnx.save_model(model, str(temporary))
    integrity.stamp_file(path)


def reduce_precision(
    engine: Path,
    generator: Generator,
    mode: str,
    *,
    min_psnr: float | None = None,
    seeds=DEFAULT_SEEDS,
    calibration: Calibration | None = None,
) -> QualityReport:
    """Rewrite the fp32 ``engine`` in place as ``mode``; raise CipsError below ``min_psnr``.

    ``min_psnr`` None takes the mode's default. The fp32 file is only replaced once the
    report passes; on failure it is left as it was. ``calibration``: int8-static's batches.
    """
    check_mode(mode)
    threshold = default_min_psnr(mode) if min_psnr is None else float(min_psnr)
    source = onnx.load(str(engine), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in source.graph.initializer):
        raise CipsError(f"{mode} engines are made from models below protobuf's 2 GB limit; this one keeps external data.")
    props = [(p.key, p.value) for p in source.metadata_props]
    if dict(props).get(PREFIX + "role") != SYNTHESIS:
        raise CipsError(f"{engine.name} is not a synthesis engine.")
    with tempfile.TemporaryDirectory(prefix=".cips-precision.", dir=engine.parent) as work:
        converted = Path(work) / "model.onnx"
        convert_engine(engine, converted, generator, mode, calibration)
        report = _gated(measure_quality(engine, converted, generator, mode=mode, seeds=seeds, min_psnr=threshold),
                        f"The {mode} engine reaches", OTHER_MODES[mode])
        model = onnx.load(str(converted))
        model.producer_name = "cips-deploy"
        _save_stamped(model, converted, props + [(PRECISION_KEY, mode), (QUALITY_KEY, report.to_json())])
        onnx.checker.check_model(str(converted), full_check=True)
        converted.replace(engine)
    return report


def _gated(report: QualityReport, subject: str, hint: str = "") -> QualityReport:
    """``report`` if it passes its threshold; else the one sentence (with the report) that stops the export."""
    if not report.ok:
        raise QualityError(
            f"{subject} {report.worst_psnr:.2f} dB PSNR against fp32 on the worst seed, below --min-psnr "
            f"{report.min_psnr:g}, so nothing was written{hint}.",
            report,
        )
    return report


# The inputs each grid engine's coordinate stage computes from (exporters/line_engines.py).
GRID_COORDINATES = {LINES: ("v", "u"), COMPOSE: ()}
GRID_MODES = ("fp16",)  # int8 would need its own calibration of lines and compose inputs


def reduce_grid_precision(
    grid: dict[str, Path],
    engine: Path,
    generator: Generator,
    mode: str,
    *,
    min_psnr: float | None = None,
    seeds=DEFAULT_SEEDS,
) -> QualityReport:
    """Rewrite a line-factored export's grid engines (``grid``: role -> fp32 file) in place as
    ``mode``, beside its per-point ``engine`` (already ``mode``); raise CipsError when the
    images of the grid path fall below ``min_psnr`` against the fp32 model (the files are then
    left as they were). The report is stored in each grid engine's metadata."""
    if mode not in GRID_MODES:
        raise ValueError(f"grid engines are made in {', '.join(GRID_MODES)}, not {mode}")
    threshold = default_min_psnr(mode) if min_psnr is None else float(min_psnr)
    with tempfile.TemporaryDirectory(prefix=".cips-precision.", dir=engine.parent) as work:
        converted, props = {}, {}
        for role, source in grid.items():
            target = Path(work) / source.name
            with _quiet():
                convert_fp16(source, target, GRID_COORDINATES[role])
            props[role] = [(p.key, p.value) for p in onnx.load(str(source), load_external_data=False).metadata_props]
            model = onnx.load(str(target))
            model.producer_name = "cips-deploy"
            _save_stamped(model, target, props[role] + [(PRECISION_KEY, mode)])
            converted[role] = target
        report = _gated(measure_grid_quality(engine, converted, generator, mode=mode, seeds=seeds, min_psnr=threshold),
                        f"The {mode} grid engines reach")
        for role, target in converted.items():
            _save_stamped(onnx.load(str(target)), target,
                          props[role] + [(PRECISION_KEY, mode), (QUALITY_KEY, report.to_json())])
            onnx.checker.check_model(str(target), full_check=True)
        for role, target in converted.items():
            target.replace(grid[role])
    return report


class QualityError(CipsError):
    """The reduced-precision engine missed the PSNR threshold; ``report`` has the figures."""

    def __init__(self, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.report = report


def read_quality(path: str | Path) -> tuple[str, QualityReport | None]:
    """(precision, quality report or None) stored in an engine's metadata; fp32 has no report."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    report = props.get(QUALITY_KEY)
    try:
        return props.get(PRECISION_KEY, "fp32"), QualityReport.from_json(report) if report else None
    except (TypeError, ValueError):
        raise CipsError(f"{path} has a damaged quality report in its metadata; export it again.") from None
