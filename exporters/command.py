"""``cips-deploy export``: a checkpoint to an engine (ONNX, TensorRT or a plugin's; and a Triton repository).

Registered through ``register_commands`` like a third party's command; ``--engine`` offers
every exporter registered through ``register_exporters`` (:mod:`.engines` registers ``onnx``
and ``trt``) and the command dispatches to the chosen one (:class:`cips_deploy.contracts.exporter.Exporter`).
"""

from __future__ import annotations

from pathlib import Path

import click

from cips_deploy.errors import printable
from cips_deploy.contracts.command_options import CHUNK_SIZE, real, whole
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.runtime.plugin_manager import get_registry
from cips_deploy.contracts.precision import PRECISIONS
from cips_deploy.exporters.trt_profiles import VERBOSITIES, parse_shapes


class EngineChoice(click.Choice):
    """The registered exporters' names, read when the command line is parsed or its help shown
    (the registry is complete only after every plugin module has been imported)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(get_registry().exporters)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it; the registry decides
        pass


OPSET = whole(0, 1000)  # the supported ones (13 to 20) are checked with the exporter's own sentence
MIN_PSNR = real(0.0, 1000.0)  # dB; identical images are infinitely many dB apart, and no threshold needs more
MAX_BATCH = whole(1, 65536)
CALIBRATION_POINTS = whole(1, 1 << 20)


def _shapes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple:
    """Each --min/opt/max-shapes value parsed when the command line is read (a wrong spelling
    is one sentence before any work); checked against the engine by the exporter."""
    flag = f"--{param.name.replace('_', '-')}"
    return tuple(parse_shapes(value, flag) for value in values)


def _set(**options) -> dict:
    """The options the user gave: plugin exporters written before these flags existed
    receive only what they are asked for."""
    return {name: value for name, value in options.items() if value is not None}


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@click.option("--engine", type=EngineChoice(), default="onnx", show_default=True,
              help="onnx: a validated ONNX model; trt: a TensorRT plan built from it (needs tensorrt and a GPU); "
                   "web: a static site whose page renders in the browser; or a plugin's engine (`cips-deploy plugins`).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Engine file (.onnx or .plan; a folder for web); default <checkpoint name>.onnx/.plan/-site here.")
@click.option("--opset", type=OPSET, default=None, help="ONNX opset, 13 to 20 (default 17).")
@click.option("--no-validate", is_flag=True, help="Skip the onnxruntime-against-torch check.")
@click.option("--spatial-style", is_flag=True, help="Take one style per point: w [B, N, S] instead of [B, S].")
@click.option("--layer-styles", is_flag=True, help="Take one style per style input: w [B, L, S] (style mixing, render --mix-seed); fp32 ONNX only.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="TensorRT kernel precision; for ONNX, fp16 makes an fp16 engine with a quality report (docs/precision.md).")
@click.option("--quantize", type=click.Choice(["int8", "int8-static"]), default=None,
              help="An int8 ONNX engine (dynamic, or static QDQ calibrated on rendered chunks) with a quality report; "
                   "with --engine trt, int8-static is a TensorRT int8 plan calibrated the same way.")
@click.option("--min-psnr", type=MIN_PSNR, default=None,
              help="fp16/int8: fail (writing nothing) below this PSNR against fp32 in dB (default 40; int8-static 30).")
@click.option("--calibration-seeds", metavar="LIST",
              help="int8-static: calibrate on the styles of these seeds (such as 0-7 or 1,5,9; default 1000-1007).")
@click.option("--calibration-points", type=CALIBRATION_POINTS, default=None,
              help="int8-static: points per calibration batch, on and between the training grid's pixels (default 4096).")
@click.option("--calibration-data", type=click.Path(path_type=Path),
              help="int8-static: calibrate on the .npz batches of this folder (arrays coords [B, N, 2] and w [B, S]).")
@click.option("--max-batch", type=MAX_BATCH, default=None, help="TensorRT profile: most samples per call (default 1).")
@click.option("--chunk-size", type=CHUNK_SIZE, default=None, help="TensorRT profile: most points per call (default 65536).")
@click.option("--min-shapes", multiple=True, callback=_shapes, metavar="SHAPES",
              help="TensorRT profile: smallest shapes, trtexec's spelling (coords:1x1x2,w:1x512); default 1 on every dynamic axis. "
                   "Repeat the three flags for more profiles: the k-th of each makes profile k.")
@click.option("--opt-shapes", multiple=True, callback=_shapes, metavar="SHAPES",
              help="TensorRT profile: the shapes to tune for (default: the max shapes).")
@click.option("--max-shapes", multiple=True, callback=_shapes, metavar="SHAPES",
              help="TensorRT profile: largest shapes (coords:4x65536x2); replaces --max-batch and --chunk-size. "
                   "Grid engines' inputs are lines.NAME and compose.NAME (docs/export.md).")
@click.option("--builder-verbosity", type=click.Choice(VERBOSITIES), default=None,
              help="TensorRT builder log level (default warning).")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT timing cache file: read if it exists, written back updated after the build.")
@click.option("--triton-repo", type=click.Path(path_type=Path), help="Also write a Triton model repository entry here.")
@click.option("--name", help="Model name in the Triton repository (default: the output's name).")
@click.option("--triton-backend", type=click.Choice(["onnxruntime", "tensorrt", "python"]), default=None,
              help="Triton backend of the repository's model: onnxruntime (default for onnx), tensorrt (trt), or python "
                   "(onnxruntime inside Triton's Python backend, for CPU servers; see docs/serving.md).")
@click.option("--external-data", is_flag=True, help="Keep weights in a .data file even below protobuf's 2 GB limit.")
@click.option("--web-runtime", type=click.Path(path_type=Path),
              help="web: copy onnxruntime-web from this folder (node_modules/onnxruntime-web/dist) into the site; "
                   "without it the page loads the pinned version from a public CDN.")
@click.option("--force", is_flag=True, help="Replace existing files.")
def export(
    checkpoint: Path | None,
    engine: str,
    output: Path | None,
    opset: int | None,
    no_validate: bool,
    spatial_style: bool,
    layer_styles: bool,
    precision: str,
    max_batch: int | None,
    chunk_size: int | None,
    timing_cache: Path | None,
    triton_repo: Path | None,
    name: str | None,
    triton_backend: str | None,
    external_data: bool,
    force: bool,
    quantize: str | None,
    min_psnr: float | None,
    web_runtime: Path | None,
    calibration_seeds: str | None,
    calibration_points: int | None,
    calibration_data: Path | None,
    min_shapes: tuple,
    opt_shapes: tuple,
    max_shapes: tuple,
    builder_verbosity: str | None,
) -> None:
    """Export CHECKPOINT (ours, an official CIPS .pt or CREPS .pkl; for --engine trt and web also an exported .onnx).

    The engine takes coords [B, N, 2] and w [B, S] and returns rgb [B, N, 3]; the mapping
    network z -> w is written beside it as <name>.mapping.onnx. A line-factored model (CREPS)
    also gets its grid engines, <name>.lines.onnx and <name>.compose.onnx, which render grids
    with each row and column computed once (docs/line-engines.md). --engine web writes a static
    site whose page synthesises the model in the browser (docs/web.md); its default CHECKPOINT
    is the bundled demo.
    """
    from cips_deploy._compat import require_build_extra
    from cips_deploy.errors import CipsError
    from cips_deploy.exporters.spec import DEFAULT_OPSET

    exporter = get_registry().get("exporter", engine).item
    if engine in ("onnx", "trt"):  # the built-in engines trace PyTorch models (a plugin's may not)
        require_build_extra("Exporting an engine")
    if checkpoint is None:
        checkpoint = getattr(exporter, "default_source", None)
        if checkpoint is None:
            raise click.UsageError(f"Give the CHECKPOINT to export (the {engine} engine has no default model).")

    try:
        summary = exporter.export(
            checkpoint,
            output=output,
            opset=DEFAULT_OPSET if opset is None else opset,
            validate=not no_validate,
            spatial_style=spatial_style,
            precision=precision,
            max_batch=max_batch,
            chunk_size=chunk_size,
            timing_cache=timing_cache,
            triton_repo=triton_repo,
            triton_model_name=name,
            triton_backend=triton_backend,
            external_data=True if external_data else None,
            overwrite=force,
            quantize=quantize,
            min_psnr=min_psnr,
            web_runtime=web_runtime,
            **_set(calibration_seeds=calibration_seeds, calibration_points=calibration_points,
                   calibration_data=calibration_data, min_shapes=min_shapes or None, opt_shapes=opt_shapes or None,
                   max_shapes=max_shapes or None, builder_verbosity=builder_verbosity,
                   layer_styles=layer_styles or None),
        )
    except CipsError as error:
        report = getattr(error, "report", None)  # a validation or quality report: where the engine disagrees
        if report is not None:
            click.echo(report.format(), err=True)
        raise
    for part in ("report", "quality", "grid_quality"):  # what a plugin's exporter does not report is absent
        if getattr(summary, part, None) is not None:
            click.echo(getattr(summary, part).format())
    meta = getattr(summary, "metadata", None)
    if meta is not None:
        w_shape = f"[B, N, {meta.style_dim}]" if meta.spatial_style else f"[B, {meta.style_dim}]"
        if getattr(meta, "layer_styles", False):
            w_shape = f"[B, {meta.io['inputs'][1]['shape'][1]}, {meta.style_dim}] (one per style input)"
        click.echo(
            f"Engine: coords [B, N, 2], w {w_shape} -> rgb [B, N, 3]; {meta.config.arch} generator, "
            f"{meta.coordinate_space} coordinates, opset {meta.opset}."
        )
    for path in summary.files:
        click.echo(f"Wrote {printable(str(path))}")
    for folder in getattr(summary, "triton_models", ()):
        click.echo(f"Wrote Triton model {printable(str(folder))}")


@hookimpl
def register_commands(cli):
    cli.add_command(export)
