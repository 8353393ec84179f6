"""Triton Inference Server model repositories.

``write_triton_model(repo, name, ...)`` writes, for the model name ``<name>``::

    repo/<name>/config.pbtxt             inputs, outputs, batching, instance group, metadata
    repo/<name>/1/model.onnx             (onnxruntime: GPU or CPU servers with that backend)
    repo/<name>/1/model.plan(.json)      (tensorrt: GPU servers)
    repo/<name>/1/model.py + model.onnx  (python: any server with the Python backend, such
                                          as the CPU one bundled in ``nvidia-pytriton``)
    repo/<name>_mapping/...              the mapping engine z [B, Z] (, c [B, C]) -> w [B, S]
    repo/<name>_ensemble/                z [B, S], coords [B, N, 2] -> rgb [B, N, 3]
                                          (mapping then synthesis; truncation psi = 1)

and for a line-factored model (CREPS; docs/line-engines.md) also::

    repo/<name>_lines/, repo/<name>_compose/   the line and compose engines
    repo/<name>_grid/                    z [B, S], v [B, H], u [B, W] -> rgb [B, H W, 3]
                                          (mapping, lines, compose: one grid per request)

Every model has ``max_batch_size > 0`` and a dynamic batcher: the leading batch axis B
leaves ``dims``, and requests of equal size (the same N) are merged into one execution.
The engine's metadata travels as ``parameters`` so that a client can check what a server
serves (:mod:`.triton_backend`).

Names: :func:`model_name` is the one place that turns a user's ``--name`` into the folder
names above; it refuses anything but letters, digits, ``-`` and ``_`` before anything is
created, so a name can never step out of the repository. A model folder appears complete or
not at all, and carries the owner marker of :mod:`cips_deploy.runtime.atomic` (the one output
guard): an existing model folder is replaced only with ``overwrite``, and only if cips-deploy
wrote it (its marker, and nothing but ``config.pbtxt`` and version folders of plain files);
a model folder the user wrote by hand, or one holding a link, is never replaced.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cips_deploy.runtime.atomic import (
    check_folder, check_names, current_umask, guard_owned, output_policy, ownership_problem, publish, staging_folder, write_marker,
)
from cips_deploy.errors import CipsError

from .metadata import EngineMetadata
from .spec import BATCH, EngineSpec

# --triton-backend: Triton backend name, engine file name in the version folder.
BACKENDS = {"onnxruntime": ("onnxruntime", "model.onnx"), "tensorrt": ("tensorrt", "model.plan"), "python": ("python", "model.onnx")}
DEFAULT_BACKEND = {"onnx": "onnxruntime", "trt": "tensorrt"}
DEFAULT_MAX_BATCH_SIZE = 8
VERSION = "1"
MAPPING_SUFFIX = "_mapping"
ENSEMBLE_SUFFIX = "_ensemble"
GRID_SUFFIXES = {"lines": "_lines", "compose": "_compose"}
GRID_ENSEMBLE_SUFFIX = "_grid"
MODEL_PY = Path(__file__).with_name("triton_model.py")  # the Python backend's model.py
_TYPES = {"float32": "TYPE_FP32"}
_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # fullmatch only: `$` also matched before a final "\n"
# What a model folder this package wrote holds besides its marker (paths relative to it).
MODEL_FOLDER_CONTENT = re.compile(r"config\.pbtxt|[0-9]+|[0-9]+/[^/]+")


def triton_name(name: str) -> str:
    """A model name made from a file name: letters, digits, '-' and '_' kept, the rest '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_-")[:100]
    if not cleaned:
        raise CipsError(f"{name!r} does not make a Triton model name; pass --name with letters and digits.")
    return cleaned


def model_name(name: str | None, *, default_from: str) -> str:
    """The Triton model name: ``name`` as given (refused unless it is a plain folder name),
    or, when None, one made from the file name ``default_from``."""
    if name is None:
        return triton_name(default_from)
    if not isinstance(name, str) or not _VALID_NAME.fullmatch(name):
        raise CipsError(
            f"The Triton model name {name!r} must be 1 to 100 letters, digits, '-' or '_' (starting with a letter "
            "or digit): it names a folder inside the repository."
        )
    return name


def model_folders(repo: Path, name: str, *, mapping: bool, ensemble: bool, grid: bool = False) -> list[Path]:
    """The folders a model called ``name`` occupies in ``repo`` (``name`` from :func:`model_name`)."""
    names = [name] + ([name + MAPPING_SUFFIX] if mapping else []) + ([name + ENSEMBLE_SUFFIX] if ensemble else [])
    if grid:
        names += [name + suffix for suffix in GRID_SUFFIXES.values()] + ([name + GRID_ENSEMBLE_SUFFIX] if mapping and ensemble else [])
    return [Path(repo) / each for each in names]


def check_repository(repo: str | Path, name: str, *, mapping: bool, ensemble: bool, overwrite: bool, grid: bool = False) -> None:
    """Refuse, before any work, a repository path that is a file or model folders that exist."""
    repo = Path(repo)
    folders = model_folders(repo, name, mapping=mapping, ensemble=ensemble, grid=grid)
    check_names(*folders)
    if repo.exists() and not repo.is_dir():
        raise CipsError(f"Cannot write the Triton repository {repo}: it is a file.")
    if repo.is_symlink() and not repo.exists():
        raise CipsError(f"Cannot write the Triton repository {repo}: it is a symbolic link to a folder that does not exist.")
    if not repo.exists():
        check_folder(repo)  # the repository may be created, but not the folders above it
    for folder in folders:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise CipsError(f"Cannot write the Triton model {folder}: something other than a model folder is there.")
    guard_owned(folders, overwrite=overwrite, owner=model_folder_owner, advice="move it away or choose another --name")


def model_folder_owner(folder: Path) -> str | None:
    """None when cips-deploy wrote the model folder ``folder`` (:func:`~cips_deploy.runtime.atomic.ownership_problem`)."""
    return ownership_problem(folder, MODEL_FOLDER_CONTENT)


@dataclass(frozen=True)
class ModelEntry:
    """One model folder to write."""

    name: str
    backend: str  # Triton backend: onnxruntime, tensorrt, python
    files: tuple[Path, ...]  # the engine first, then files that must sit beside it
    spec: EngineSpec
    metadata: EngineMetadata
    instance_kind: str
    max_batch_size: int


def config_pbtxt(
    name: str,
    backend: str,
    spec: EngineSpec,
    metadata: EngineMetadata,
    instance_kind: str,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> str:
    """The text of ``config.pbtxt`` (protobuf text format of inference.ModelConfig).

    With ``max_batch_size > 0`` the leading batch axis of every tensor leaves ``dims``
    (Triton adds it back) and a dynamic batcher merges requests of equal shape.
    """
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}", f"max_batch_size: {max_batch_size}"]
    lines += _io_lines(spec, batched=max_batch_size > 0)
    if max_batch_size > 0:
        lines.append("dynamic_batching {\n  max_queue_delay_microseconds: 0\n}")
    lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]")
    lines += _parameter_lines(metadata.to_strings())
    return "\n".join(lines) + "\n"


Step = tuple[str, list[tuple[str, str]], list[tuple[str, str]]]  # model, (its input, ensemble tensor), (its output, ensemble tensor)


def ensemble_pbtxt(name: str, synthesis: str, mapping: str, spec: EngineSpec, mapping_spec: EngineSpec,
                   metadata: EngineMetadata, max_batch_size: int) -> str:
    """An ensemble ``z (, c), coords -> rgb``: the mapping model's ``w`` feeds the synthesis model
    (``c [B, C]``: a class-conditional model's labels, an input of the mapping)."""
    (w_out,) = mapping_spec.output_names  # z (, c) -> w
    (coords, w_in), (rgb,) = spec.input_names, spec.output_names  # coords, w -> rgb
    joined = EngineSpec(role="ensemble", inputs=(*mapping_spec.inputs, spec.tensor(coords)), outputs=spec.outputs)
    steps = [  # "styles": the ensemble's internal tensor between the steps
        (mapping, [(name, name) for name in mapping_spec.input_names], [(w_out, "styles")]),
        (synthesis, [(coords, coords), (w_in, "styles")], [(rgb, rgb)]),
    ]
    return _ensemble_text(name, joined, steps, metadata, max_batch_size)


def grid_ensemble_pbtxt(name: str, models: dict[str, str], specs: dict[str, EngineSpec], metadata: EngineMetadata,
                        max_batch_size: int) -> str:
    """An ensemble ``z (, c), v, u -> rgb``: mapping, then the line engine, then the compose engine.

    ``models``/``specs``: {"mapping"|"lines"|"compose": model name / spec}. One request is one
    grid: the rows' v [B, H] and the columns' u [B, W]; rgb [B, H W, 3] is row-major.
    """
    mapping, lines, compose = specs["mapping"], specs["lines"], specs["compose"]
    (w_out,) = mapping.output_names  # z (, c) -> w
    v, u, w_lines = lines.input_names
    row_out, column_out = lines.output_names
    row_in, column_in, w_compose = compose.input_names
    (rgb,) = compose.output_names
    joined = EngineSpec(role="grid_ensemble", inputs=(*mapping.inputs, lines.tensor(v), lines.tensor(u)), outputs=compose.outputs)
    steps = [
        (models["mapping"], [(name, name) for name in mapping.input_names], [(w_out, "styles")]),
        (models["lines"], [(v, v), (u, u), (w_lines, "styles")], [(row_out, "row_lines"), (column_out, "column_lines")]),
        (models["compose"], [(row_in, "row_lines"), (column_in, "column_lines"), (w_compose, "styles")], [(rgb, rgb)]),
    ]
    return _ensemble_text(name, joined, steps, metadata, max_batch_size)


def _ensemble_text(name: str, joined: EngineSpec, steps: list[Step], metadata: EngineMetadata, max_batch_size: int) -> str:
    """``config.pbtxt`` of an ensemble: the joined interface, then one scheduling step per model."""
    text = [f"name: {_quote(name)}", 'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    text += _io_lines(joined, batched=max_batch_size > 0)
    blocks = []
    for model, inputs, outputs in steps:
        maps = [f"      input_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in inputs]
        maps += [f"      output_map {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in outputs]
        blocks.append(f"    {{\n      model_name: {_quote(model)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }")
    text.append("ensemble_scheduling {\n  step [\n" + ",\n".join(blocks) + "\n  ]\n}")
    props = dict(metadata.to_strings())
    props["cips_deploy.role"] = joined.role
    text += _parameter_lines(props)
    return "\n".join(text) + "\n"


def write_triton_model(
    repo: str | Path,
    name: str,
    *,
    engine: str,
    model_files: list[Path],
    spec: EngineSpec,
    metadata: EngineMetadata,
    mapping_file: Path | None = None,
    mapping_spec: EngineSpec | None = None,
    mapping_metadata: EngineMetadata | None = None,
    backend: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    overwrite: bool = False,
    grid: dict[str, tuple[list[Path], EngineSpec, EngineMetadata]] | None = None,
) -> list[Path]:
    """Write the synthesis model (and the mapping model and the ensemble) into ``repo``.

    ``grid``: a line-factored model's {"lines"|"compose": (files, spec, metadata)}, written as
    ``<name>_lines`` and ``<name>_compose``, with the ensemble ``<name>_grid`` when the
    mapping model is there too.

    ``name``: a name :func:`model_name` accepts (checked again here). ``engine``: ``onnx``
    or ``trt``; ``backend``: the Triton backend (default onnxruntime for ``onnx``, tensorrt
    for ``trt``; ``python`` runs the ONNX engine with onnxruntime in Triton's Python backend).
    ``model_files``: the engine first (``.onnx`` or ``.plan``), then files that must sit
    beside it (external data, the plan's sidecar); the engine is renamed to Triton's
    ``model.onnx``/``model.plan``, the others keep their names (only the sidecar follows
    the plan's new name). Returns the model folders written.
    """
    repo = Path(repo)
    name = model_name(name, default_from="")
    backend = check_backend(engine, backend)
    if not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= 1024:
        raise CipsError(f"The Triton max_batch_size must be 1 to 1024, not {max_batch_size!r}.")
    has_mapping = mapping_file is not None and mapping_spec is not None and mapping_metadata is not None
    # Per-point and per-layer styles do not come from one z: the client maps and mixes them.
    ensemble = has_mapping and not spec.spatial_style and not spec.layer_styles
    grid = grid or {}
    check_repository(repo, name, mapping=has_mapping, ensemble=ensemble, overwrite=overwrite, grid=bool(grid))
    kind = "KIND_GPU" if backend == "tensorrt" else "KIND_CPU" if backend == "python" else "KIND_AUTO"
    entries = [ModelEntry(name, backend, tuple(model_files), spec, metadata, kind, max_batch_size)]
    if has_mapping:
        # The mapping engine is a few small products per sample: the CPU is the right place.
        mapping_backend = "python" if backend == "python" else "onnxruntime"
        entries.append(ModelEntry(name + MAPPING_SUFFIX, mapping_backend, (mapping_file,), mapping_spec,
                                  mapping_metadata, "KIND_CPU", max_batch_size))
    for role, (files, grid_spec, grid_metadata) in grid.items():
        entries.append(ModelEntry(name + GRID_SUFFIXES[role], backend, tuple(files), grid_spec, grid_metadata, kind, max_batch_size))
    try:
        repo.mkdir(exist_ok=True)  # its parent exists (check_repository)
    except OSError as error:
        raise CipsError(f"Cannot create the Triton repository {repo}: {error.strerror or error}.") from None
    written = [_write_model_folder(repo, entry, overwrite) for entry in entries]
    if ensemble:
        text = ensemble_pbtxt(name + ENSEMBLE_SUFFIX, name, name + MAPPING_SUFFIX, spec, mapping_spec, metadata,
                              max_batch_size)
        written.append(_write_folder(repo, name + ENSEMBLE_SUFFIX, text, [], overwrite))
    if grid and has_mapping and not spec.layer_styles:  # the grid ensemble maps one z to one style
        models = {"mapping": name + MAPPING_SUFFIX, **{role: name + GRID_SUFFIXES[role] for role in grid}}
        specs = {"mapping": mapping_spec, **{role: entry[1] for role, entry in grid.items()}}
        text = grid_ensemble_pbtxt(name + GRID_ENSEMBLE_SUFFIX, models, specs, metadata, max_batch_size)
        written.append(_write_folder(repo, name + GRID_ENSEMBLE_SUFFIX, text, [], overwrite))
    return written


def write_engine_repository(
    repo: str | Path,
    engine: str | Path,
    *,
    name: str | None = None,
    backend: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """The repository entries of an exported ONNX engine and the engines beside it (mapping,
    and a line-factored model's grid engines), as ``export --triton-repo`` writes them.

    Reads and verifies the files as the onnxruntime backend does (content hash when
    recorded, roles, same weights), without torch or onnx: ``cips-deploy serve model.onnx``
    works in the base install. ``name`` defaults to the engine's file name."""
    from . import integrity
    from .engine_files import grid_engine_files, mapping_path_for
    from .metadata import read_onnx_metadata
    from .onnx_proto import external_data_of
    from .spec import MAPPING, SYNTHESIS, grid_spec, mapping_spec, synthesis_spec

    engine = Path(engine)
    name = model_name(name, default_from=engine.stem)
    integrity.verify(engine, required=False)
    metadata = read_onnx_metadata(engine)
    metadata.check_role(SYNTHESIS, source=str(engine))
    location = external_data_of(engine)
    files = [engine, engine.parent / location] if location else [engine]
    mapping_file = mapping_path_for(engine)
    mapping_metadata = None
    if mapping_file.is_file():
        integrity.verify(mapping_file, required=False)
        mapping_metadata = read_onnx_metadata(mapping_file)
        mapping_metadata.check_role(MAPPING, source=str(mapping_file))
        _check_same_model(mapping_metadata, metadata, mapping_file, engine)
    grid = {}
    for role, file in (grid_engine_files(engine) or {}).items():
        if metadata.spatial_style:
            break
        integrity.verify(file, required=False)
        grid_metadata = read_onnx_metadata(file)
        grid_metadata.check_role(role, source=str(file))
        _check_same_model(grid_metadata, metadata, file, engine)
        grid[role] = ([file], grid_spec(role, grid_metadata), grid_metadata)
    has_mapping = mapping_metadata is not None
    return write_triton_model(
        repo, name, engine="onnx", model_files=files,
        spec=synthesis_spec(metadata.config, metadata.spatial_style, metadata.layer_styles),
        metadata=metadata, mapping_file=mapping_file if has_mapping else None,
        mapping_spec=mapping_spec(metadata.config) if has_mapping else None, mapping_metadata=mapping_metadata,
        backend=backend, overwrite=overwrite, grid=grid or None,
    )


def _check_same_model(metadata: EngineMetadata, main: EngineMetadata, file: Path, engine: Path) -> None:
    if metadata.weights_sha256 != main.weights_sha256 or metadata.config != main.config:
        raise CipsError(f"{file} belongs to a different model than {engine}; export them together again.")


def check_backend(engine: str, backend: str | None) -> str:
    """The Triton backend for ``engine`` (``onnx``/``trt``); a combination that cannot work is refused."""
    if backend is None:
        return DEFAULT_BACKEND[engine]
    if backend not in BACKENDS:
        raise CipsError(f"Unknown Triton backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if (engine == "trt") != (backend == "tensorrt"):
        raise CipsError(
            f"A {engine} engine cannot be served by Triton's {backend} backend; TensorRT plans take --triton-backend "
            "tensorrt, ONNX engines onnxruntime or python."
        )
    return backend


# --------------------------------------------------------------------------- internals


def _io_lines(spec: EngineSpec, *, batched: bool) -> list[str]:
    lines = []
    for field, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        entries = []
        for tensor in tensors:
            shape = tensor.shape
            if batched:
                if not shape or shape[0] != BATCH:
                    raise CipsError(f"Tensor {tensor.name!r} has no leading batch axis; Triton cannot batch it.")
                shape = shape[1:]  # Triton prepends the batch axis itself
            dims = ", ".join("-1" if isinstance(size, str) else str(size) for size in shape)
            entries.append(
                f"  {{\n    name: {_quote(tensor.name)}\n    data_type: {_TYPES[tensor.dtype]}\n    dims: [ {dims} ]\n  }}"
            )
        lines += [f"{field} [", ",\n".join(entries), "]"]
    return lines


def _parameter_lines(props: dict[str, str]) -> list[str]:
    return [f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}" for key, value in props.items()]


def _write_model_folder(repo: Path, entry: ModelEntry, overwrite: bool) -> Path:
    """One model: its engine files placed under Triton's names, the config, for Python also model.py."""
    filename = BACKENDS[entry.backend][1]
    engine, *companions = entry.files
    placements = [(engine, filename)]
    for companion in companions:
        if companion.name == engine.name + ".json":  # the plan's sidecar follows the plan's name
            placements.append((companion, filename + ".json"))
        else:
            placements.append((companion, companion.name))  # external data keeps the name the model refers to
    if entry.backend == "python":
        placements.append((MODEL_PY, "model.py"))
    text = config_pbtxt(entry.name, entry.backend, entry.spec, entry.metadata, entry.instance_kind, entry.max_batch_size)
    return _write_folder(repo, entry.name, text, placements, overwrite)


def _write_folder(repo: Path, name: str, config_text: str, placements: list[tuple[Path, str]], overwrite: bool) -> Path:
    """Stage ``repo/.<name>.<pid>.*.partial/{config.pbtxt, 1/...}`` and rename it into place
    (:mod:`cips_deploy.runtime.atomic`, the one staging module: a killed run's stage is swept by the next).

    The final move is the output guard's :func:`~cips_deploy.runtime.atomic.publish`: without
    ``overwrite`` it never replaces a folder that appeared meanwhile (another export), and with
    it only one that cips-deploy wrote."""
    stage = staging_folder(repo, name)
    try:
        version = stage / VERSION
        version.mkdir()
        for source, target in placements:
            _place(source, version / target)
        (stage / "config.pbtxt").write_text(config_text)
        write_marker(stage)  # what lets a later --force know that cips-deploy wrote this model folder
        destination = repo / name
        os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp made it private
        with output_policy(overwrite=overwrite):
            publish(stage, destination, named=False, owner=model_folder_owner)
        return destination
    except OSError as error:
        raise CipsError(f"Cannot write {repo / name}: {error.strerror or error}.") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(source: Path, destination: Path) -> None:
    """Hard-link where possible (engines can be gigabytes), copy otherwise; model.py is always
    copied, so that editing a repository's copy never edits the installed package."""
    if source == MODEL_PY:
        shutil.copyfile(source, destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _quote(text: str) -> str:
    """A protobuf text-format string literal: C escapes, non-ASCII as UTF-8 octal bytes."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in "\"\\":
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'
