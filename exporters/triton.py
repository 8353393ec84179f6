"""Triton Inference Server model repositories.

``write_triton_model(repo, name, ...)`` writes::

    repo/<name>/config.pbtxt            inputs, outputs, dynamic dims, instance group, metadata
    repo/<name>/1/model.onnx            (or model.plan and its sidecar model.plan.json)
    repo/<name>_mapping/config.pbtxt    the mapping engine z -> w, on the CPU
    repo/<name>_mapping/1/model.onnx

The batch dimension is part of ``dims`` (``max_batch_size: 0``): requests differ in their
number of points N, so Triton's dynamic batcher, which stacks requests along one leading
dimension, could not combine them anyway. A model folder appears complete or not at all.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from cips_deploy.errors import CipsError

from .metadata import EngineMetadata
from .spec import EngineSpec

BACKENDS = {"onnx": ("onnxruntime", "model.onnx"), "trt": ("tensorrt", "model.plan")}
_TYPES = {"float32": "TYPE_FP32"}


def triton_name(name: str) -> str:
    """A model name Triton accepts as a folder name: letters, digits, '-' and '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not cleaned:
        raise CipsError(f"{name!r} does not make a Triton model name; pass one made of letters and digits.")
    return cleaned


def config_pbtxt(name: str, backend: str, spec: EngineSpec, metadata: EngineMetadata, instance_kind: str) -> str:
    """The text of ``config.pbtxt`` (protobuf text format of inference.ModelConfig)."""
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}", "max_batch_size: 0"]
    for field, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        lines.append(f"{field} [")
        entries = []
        for tensor in tensors:
            dims = ", ".join("-1" if isinstance(size, str) else str(size) for size in tensor.shape)
            entries.append(
                f"  {{\n    name: {_quote(tensor.name)}\n    data_type: {_TYPES[tensor.dtype]}\n    dims: [ {dims} ]\n  }}"
            )
        lines.append(",\n".join(entries))
        lines.append("]")
    lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {instance_kind}\n  }}\n]")
    for key, value in metadata.to_strings().items():
        lines.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}")
    return "\n".join(lines) + "\n"


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
    overwrite: bool = False,
) -> list[Path]:
    """Write the synthesis model (and the mapping model) into the repository ``repo``.

    ``model_files``: the engine first (``.onnx`` or ``.plan``), then files that must sit
    beside it (external data, the plan's sidecar); the engine is renamed to Triton's
    ``model.onnx``/``model.plan``, the others keep their names, which the engine refers to
    (only the sidecar follows the plan's new name). Returns the model folders written.
    """
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise CipsError(f"Cannot write the Triton repository {repo}: it is a file.")
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CipsError(f"Cannot create the Triton repository {repo}: {error.strerror or error}.") from None
    name = triton_name(name)
    backend, filename = BACKENDS[engine]
    models = [(name, backend, filename, model_files, spec, metadata, "KIND_GPU" if engine == "trt" else "KIND_AUTO")]
    if mapping_file is not None and mapping_spec is not None and mapping_metadata is not None:
        models.append((f"{name}_mapping", "onnxruntime", "model.onnx", [mapping_file], mapping_spec, mapping_metadata, "KIND_CPU"))
    for model_name, *_ in models:
        if (repo / model_name).exists() and not overwrite:
            raise CipsError(f"{repo / model_name} already exists; pass --force to replace it.")
    written = []
    for model_name, model_backend, model_filename, files, model_spec, model_meta, kind in models:
        written.append(
            _write_model_folder(repo, model_name, model_backend, model_filename, files, model_spec, model_meta, kind)
        )
    return written


def _write_model_folder(
    repo: Path,
    name: str,
    backend: str,
    filename: str,
    files: list[Path],
    spec: EngineSpec,
    metadata: EngineMetadata,
    kind: str,
) -> Path:
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=repo))
    try:
        version = stage / "1"
        version.mkdir()
        engine, *companions = files
        _place(engine, version / filename)
        for companion in companions:
            if companion.name == engine.name + ".json":  # the plan's sidecar follows the plan's name
                _place(companion, version / (filename + ".json"))
            else:
                _place(companion, version / companion.name)
        (stage / "config.pbtxt").write_text(config_pbtxt(name, backend, spec, metadata, kind))
        for folder in (stage, version):
            os.chmod(folder, 0o777 & ~_current_umask())
        destination = repo / name
        if destination.exists():
            # Swap: the old folder steps aside first, so a failure leaves one of the two.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repo))
            os.replace(destination, old / name)
            os.replace(stage, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, destination)
        return destination
    except OSError as error:
        raise CipsError(f"Cannot write {repo / name}: {error.strerror or error}.") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _place(source: Path, destination: Path) -> None:
    """Hard-link where possible (engines can be gigabytes), copy otherwise."""
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


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
