"""One export from a checkpoint (or an exported ONNX engine) to ONNX, TensorRT and Triton.

This is what ``cips-deploy export`` runs; it checks every option before doing expensive
work, so that a bad request fails in one sentence within a second and writes nothing.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from cips_deploy.runtime.atomic import EXPORT_LABEL, check_destination, staged
from cips_deploy.families.checkpoint import file_sha256, load
from cips_deploy.errors import CipsError

from .metadata import EngineMetadata, read_onnx_metadata
from .line_engines import ROLES as GRID_ROLES
from .line_engines import line_engine_path
from .onnx_export import DEFAULT_OPSET, check_opset, export_onnx, external_data_location, mapping_path_for
from .spec import SYNTHESIS, mapping_spec, synthesis_spec
from .calibration import calibration_request
from .trt_profiles import RequestedProfiles, primary_limits
from .triton import DEFAULT_MAX_BATCH_SIZE, check_backend, check_repository, model_name
from .trt_ops import tensorrt_problems
from .validate import ValidationReport

if TYPE_CHECKING:
    from .quality import QualityReport

ENGINES = ("onnx", "trt")
SUFFIXES = {"onnx": ".onnx", "trt": ".plan"}
DEFAULT_MAX_BATCH = 1
DEFAULT_CHUNK_SIZE = 65536  # one 256 x 256 image per call


@dataclass
class ExportSummary:
    """What an export wrote, and its validation report (None with --no-validate)."""

    engine: str
    files: list[Path] = field(default_factory=list)
    triton_models: list[Path] = field(default_factory=list)
    report: ValidationReport | None = None
    metadata: EngineMetadata | None = None
    external_data: bool = False
    quality: "QualityReport | None" = None  # fp16 and int8 ONNX engines: against the fp32 engine
    grid_quality: "QualityReport | None" = None  # fp16 grid engines (lines, compose): their images against fp32


def export_checkpoint(
    source: str | Path,
    *,
    engine: str = "onnx",
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    spatial_style: bool = False,
    layer_styles: bool = False,
    precision: str = "fp32",
    max_batch: int | None = None,
    chunk_size: int | None = None,
    timing_cache: str | Path | None = None,
    triton_repo: str | Path | None = None,
    triton_model_name: str | None = None,
    triton_backend: str | None = None,
    external_data: bool | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    min_psnr: float | None = None,
    min_shapes=None,
    opt_shapes=None,
    max_shapes=None,
    builder_verbosity: str | None = None,
    calibration_seeds=None,
    calibration_points: int | None = None,
    calibration_data: str | Path | None = None,
) -> ExportSummary:
    """Export ``source`` (a checkpoint, official ``.pt``, or for ``trt`` an exported ``.onnx``).

    ``output`` defaults to ``<source stem>.onnx`` / ``.plan`` in the current folder, or to
    nothing when only ``triton_repo`` is wanted. ``triton_backend``: the Triton backend of
    the repository's model (:func:`.triton.check_backend`; ``python`` for CPU servers).
    nothing when only ``triton_repo`` is wanted. ONNX engines in ``precision="fp16"`` or
    with ``quantize="int8"``/``"int8-static"`` are made from the fp32 export and gated by
    a quality report against it (:mod:`.quantize`; ``min_psnr`` None: the mode's default);
    ``calibration_seeds`` (a list or text such as ``"0-7"``), ``calibration_points`` or
    ``calibration_data`` (a folder of ``.npz`` batches) choose int8-static's calibration
    batches (:mod:`.calibration`). TensorRT: ``min_shapes``/``opt_shapes``/``max_shapes``
    (trtexec's text, one item per profile; :mod:`.trt_profiles`) instead of ``max_batch``
    and ``chunk_size``; ``builder_verbosity`` the builder log's level.
    """
    source = Path(source)
    if engine not in ENGINES:
        raise CipsError(f"Unknown engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    check_opset(opset)
    if not source.exists():
        raise CipsError(f"No such checkpoint: {source}.")
    source_metadata = None
    if source.suffix == ".onnx":  # an exported engine: check it before anything costly
        if engine == "onnx":
            raise CipsError(f"{source} is already an ONNX engine; export a checkpoint, or build --engine trt from it.")
        source_metadata = read_onnx_metadata(source)
        source_metadata.check_role("synthesis", source=str(source))
        if spatial_style and not source_metadata.spatial_style:
            raise CipsError(f"{source} takes one style per sample; export the checkpoint again with --spatial-style.")
    if layer_styles and (engine != "onnx" or spatial_style or precision != "fp32" or quantize is not None):
        raise CipsError(
            "--layer-styles makes an fp32 ONNX engine for per-layer styles (served by Triton too); it does not "
            "combine with --engine trt, --spatial-style, --precision or --quantize."
        )
    reduced = _reduced_precision(engine, precision, quantize, min_psnr)
    calibration = calibration_request(quantize, calibration_seeds, calibration_points, calibration_data)
    requested = RequestedProfiles.from_flags(min_shapes, opt_shapes, max_shapes)
    if engine == "onnx":
        _check_onnx_options("fp32" if reduced else precision, max_batch, chunk_size, timing_cache)
        if requested is not None or builder_verbosity is not None:
            flag = "--builder-verbosity" if requested is None else "--min/opt/max-shapes"
            raise CipsError(f"{flag} set{'s' * (requested is None)} TensorRT's build; an ONNX engine takes any B and N.")
    else:
        from .tensorrt import Profile, check_precision, check_verbosity, gpu_facts, import_tensorrt

        if requested is not None and (max_batch is not None or chunk_size is not None):
            raise CipsError("--max-batch and --chunk-size are one profile's limits; with --min/opt/max-shapes give them there.")
        check_verbosity(builder_verbosity or "warning")
        if timing_cache is not None:
            _check_timing_cache(Path(timing_cache), source, output)
        if source_metadata is not None and requested is not None:  # checked against the engine before TensorRT
            requested.resolve(SYNTHESIS, synthesis_spec(source_metadata.config, source_metadata.spatial_style))
        if reduced and source_metadata is not None:
            raise CipsError("A calibrated int8 plan is built from the checkpoint (its mapping gives the calibration styles "
                            "and torch the quality reference), not from an exported .onnx.")
        import_tensorrt()
        check_precision(precision, gpu_facts()["compute_capability"])
        profile = Profile(max_batch or DEFAULT_MAX_BATCH, chunk_size or DEFAULT_CHUNK_SIZE)
    if output is None and triton_repo is None:
        output = Path(source.stem + SUFFIXES[engine])
    output = Path(output) if output is not None else None
    if output is not None:
        if output.suffix != SUFFIXES[engine]:
            raise CipsError(f"A {engine} engine is written to a {SUFFIXES[engine]} file, not {output.name}.")
        check_destination(output, overwrite=overwrite)
        check_destination(mapping_path_for(output), overwrite=overwrite)
        for role in GRID_ROLES:  # a line-factored model's grid engines go beside it
            check_destination(line_engine_path(output, role), overwrite=overwrite)
    # The one place a model name becomes a path (checked before anything is created).
    name = model_name(triton_model_name, default_from=output.stem if output is not None else source.stem)
    if triton_repo is not None:
        check_backend(engine, triton_backend)
        check_repository(triton_repo, name, mapping=True, ensemble=not (spatial_style or layer_styles), overwrite=overwrite)
    elif triton_model_name is not None or triton_backend is not None:
        raise CipsError("--name and --triton-backend describe the Triton repository's model; add --triton-repo DIR.")

    # The work happens in a hidden folder beside the destination (same file system, so the
    # final moves are renames; engines can be gigabytes); it disappears whatever happens.
    # Without -o it goes to the system's temporary folder rather than into the Triton
    # repository, where a server polling the repository would see it.
    work_parent = output.parent if output is not None else None
    with staged(work_parent or Path(tempfile.gettempdir()), EXPORT_LABEL, output) as stage:
        work = stage.path  # .cips-export.<pid>.<random>.partial: a killed run's is swept by the next
        summary = ExportSummary(engine)
        onnx_file = work / (output.name if engine == "onnx" and output is not None else "model.onnx")
        if source_metadata is not None:
            metadata = source_metadata
            onnx_file, mapping_file = source, mapping_path_for(source)
            mapping_file = mapping_file if mapping_file.is_file() else None
            grid = {role: line_engine_path(source, role) for role in GRID_ROLES}
            grid = grid if all(file.is_file() for file in grid.values()) else {}
        else:
            generator = load(source)
            if engine == "trt" and requested is not None:  # before the export: a wrong shape costs nothing
                requested.resolve(SYNTHESIS, synthesis_spec(generator.config, spatial_style))
            from .quantize import export_tracing

            with export_tracing(reduced if engine == "onnx" else None):
                result = export_onnx(
                    generator,
                    onnx_file,
                    opset=opset,
                    spatial_style=spatial_style,
                    layer_styles=layer_styles,
                    source_file=source.name,
                    source_sha256=file_sha256(source),
                    external_data=external_data,
                    validate_export=validate,
                )
            metadata, mapping_file = result.metadata, result.mapping
            summary.report, summary.external_data = result.report, result.external_data
            grid = dict(result.grid)
            if reduced and engine == "onnx":
                from .quantize import GRID_MODES, reduce_grid_precision, reduce_precision

                summary.quality = reduce_precision(onnx_file, generator, reduced, min_psnr=min_psnr, calibration=calibration)
                if grid and reduced in GRID_MODES:  # a line-factored model's grids keep their fast path, gated too
                    summary.grid_quality = reduce_grid_precision(grid, onnx_file, generator, reduced, min_psnr=min_psnr)
                else:  # int8: the grid engines would need their own calibration; the export is its per-point engine
                    grid = {}
        summary.metadata = metadata
        spec = synthesis_spec(metadata.config, metadata.spatial_style, metadata.layer_styles)
        engine_files = _engine_files(onnx_file)

        grid_metadata = {role: read_onnx_metadata(file) for role, file in grid.items()}  # before plans replace them
        if engine == "trt":
            from .tensorrt import build_engine, sidecar_path

            model = onnx.load(str(onnx_file), load_external_data=False)
            problems = tensorrt_problems(model)
            if problems:
                raise CipsError(f"TensorRT's ONNX parser cannot take {onnx_file.name}: {'; '.join(problems)}.")
            plan = work / "model.plan"
            profiles = requested.resolve(SYNTHESIS, spec) if requested is not None else [profile.shapes(spec)]
            missing = requested.roles() - {SYNTHESIS} - set(grid) if requested is not None else set()
            if missing:
                raise CipsError(f"The shapes name the {' and '.join(sorted(missing))} engine, which only a line-factored "
                                "model (CREPS) has, built from its checkpoint.")
            max_batch, _ = primary_limits(profiles)
            pieces = None
            if reduced:  # int8-static: calibrated on the chosen batches; the grid engines would bypass it
                from .quantize import _Calibration
                from .trt_calibration import uniform_batches

                pieces = uniform_batches(_Calibration(generator, metadata.spatial_style, calibration).batches)
                grid = {}
            build_engine(
                onnx_file,
                plan,
                metadata,
                spec,
                precision=precision,
                profiles=profiles,
                timing_cache=Path(timing_cache) if timing_cache else None,
                verbosity=builder_verbosity or "warning",
                calibration=pieces,
            )
            engine_files = [plan, sidecar_path(plan)]
            if reduced:  # the PSNR gate, as for the ONNX engines
                from .quantize import QualityError, default_min_psnr
                from .trt_gate import trt_quality

                threshold = default_min_psnr(reduced) if min_psnr is None else float(min_psnr)
                summary.quality = trt_quality(plan, generator, min_psnr=threshold)
                if not summary.quality.ok:
                    raise QualityError(
                        f"The int8 plan reaches {summary.quality.worst_psnr:.2f} dB PSNR against the checkpoint on its "
                        f"worst seed, below --min-psnr {threshold:g}, so nothing was written.", summary.quality)
            if grid:  # each grid engine gets its own plan, with its own optimization profiles
                from .trt_grid import build_grid_plans

                grid = build_grid_plans(grid, work, metadata, precision=precision, synthesis_profiles=profiles,
                                        requested=requested, timing_cache=Path(timing_cache) if timing_cache else None,
                                        verbosity=builder_verbosity or "warning")

        # Triton first: it links or copies the engine files, which the commit then moves.
        if triton_repo is not None:
            from .triton import write_triton_model

            mapping_meta = read_onnx_metadata(mapping_file) if mapping_file is not None else None
            summary.triton_models = write_triton_model(
                triton_repo,
                name,
                engine=engine,
                model_files=engine_files,
                spec=spec,
                metadata=metadata,
                mapping_file=mapping_file,
                mapping_spec=mapping_spec(metadata.config),
                mapping_metadata=mapping_meta,
                backend=triton_backend,
                max_batch_size=max_batch if engine == "trt" else DEFAULT_MAX_BATCH_SIZE,
                overwrite=overwrite,
                grid=_triton_grid(grid, grid_metadata),
            )
        if output is not None:
            summary.files = _commit(engine_files, mapping_file, output, work, overwrite, grid)
    return summary


def _triton_grid(grid: dict[str, Path], metadata: dict[str, EngineMetadata]) -> dict | None:
    """{role: (files, spec, metadata)} of the grid engines for the Triton writer (a plan with its sidecar)."""
    from .spec import grid_spec

    result = {}
    for role, file in grid.items():
        files = [file, file.with_name(file.name + ".json")] if file.suffix == ".plan" else [file]
        result[role] = (files, grid_spec(role, metadata[role]), metadata[role])
    return result or None


def _reduced_precision(engine: str, precision: str, quantize: str | None, min_psnr: float | None) -> str | None:
    """The reduced-precision mode of an ONNX export (fp16, int8, int8-static), or None."""
    from .quantize import check_mode

    if min_psnr is not None and not math.isfinite(min_psnr):
        raise CipsError(f"--min-psnr must be a number of dB, not {min_psnr}.")
    if quantize is not None:
        check_mode(quantize)
        if engine != "onnx" and not (engine == "trt" and quantize == "int8-static"):
            raise CipsError(f"--quantize makes ONNX engines; a {engine} engine takes --precision instead "
                            "(or --quantize int8-static: a calibrated int8 plan).")
        if precision != "fp32":
            raise CipsError(f"--quantize {quantize} and --precision {precision} exclude each other; choose one.")
        return quantize
    if engine == "onnx" and precision == "fp16":
        return "fp16"
    if min_psnr is not None:
        raise CipsError("--min-psnr gates fp16 and int8 ONNX engines; add --precision fp16 or --quantize int8.")
    return None


def _check_onnx_options(precision: str, max_batch, chunk_size, timing_cache) -> None:
    if precision != "fp32":
        raise CipsError(
            f"ONNX engines are exported in fp32 or fp16 (with float32 I/O by contract); --precision {precision} "
            "is a TensorRT build option: use --engine trt."
        )
    if max_batch is not None or chunk_size is not None:
        raise CipsError("--max-batch and --chunk-size set a TensorRT optimization profile; an ONNX engine takes any B and N.")
    if timing_cache is not None:
        raise CipsError("--timing-cache is a TensorRT build cache; it only applies with --engine trt.")


def _check_timing_cache(cache: Path, source: Path, output: Path | None) -> None:
    """The timing cache is read and rewritten: never the model or the engine, never a folder,
    and in a folder that exists and is writable (checked before any work)."""
    from cips_deploy.contracts.command_options import output_location

    output_location(cache, "timing cache")
    if cache.is_dir():
        raise CipsError(f"--timing-cache names a file; {cache} is a folder.")
    for other in (source, output):
        if other is not None and cache.exists() and Path(other).exists() and cache.resolve() == Path(other).resolve():
            raise CipsError(f"--timing-cache {cache} is the {'source' if other == source else 'output'} itself; name a cache file of its own.")
    if cache.suffix in (".onnx", ".plan", ".safetensors", ".pt", ".pkl", ".json"):
        raise CipsError(f"--timing-cache {cache} has the suffix of a model file; a timing cache is rewritten, so name it .cache.")


def _engine_files(onnx_file: Path) -> list[Path]:
    """The ONNX engine first, then the external data file it refers to, if any."""
    location = external_data_location(onnx_file)
    return [onnx_file, onnx_file.parent / location] if location else [onnx_file]


def _commit(
    engine_files: list[Path], mapping_file: Path | None, output: Path, work: Path, overwrite: bool,
    grid: dict[str, Path] | None = None,
) -> list[Path]:
    """Move the finished files (copy those the user gave us) to their destinations.

    ``grid``: {role: engine} of a line-factored model, named after ``output`` (``x.lines.onnx``,
    or ``x.lines.plan`` and its sidecar ``x.lines.plan.json``).
    """
    check_destination(output, overwrite=overwrite)
    previous_data = external_data_location(output) if output.suffix == ".onnx" and output.exists() else None
    engine, *companions = engine_files
    with staged(output.parent, output.name) as stage:
        _place(engine, stage.file(output.name), work)
        for companion in companions:
            # A sidecar follows the plan's name; external data keeps the name the model refers to.
            is_sidecar = companion.name == engine.name + ".json"
            _place(companion, stage.file(output.name + ".json" if is_sidecar else companion.name), work)
        if mapping_file is not None:
            _place(mapping_file, stage.file(mapping_path_for(output).name), work)
        for role, file in (grid or {}).items():
            destination = line_engine_path(output, role)
            _place(file, stage.file(destination.name), work)
            if output.suffix == ".plan":
                _place(file.with_name(file.name + ".json"), stage.file(destination.name + ".json"), work)
        written = stage.commit(last=[mapping_path_for(output).name, output.name])
    # A replaced export may leave external data that the new one does not use.
    if previous_data == output.name + ".data" and output.parent / previous_data not in written:
        (output.parent / previous_data).unlink(missing_ok=True)
    return written


def _place(source: Path, destination: Path, work: Path) -> None:
    if source.parent == work:
        source.replace(destination)
    else:
        shutil.copyfile(source, destination)
