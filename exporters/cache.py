"""A cache of ONNX exports keyed by checkpoint hash, for rendering a checkpoint with onnxruntime.

``cached_onnx("churches.pt")`` exports (and validates) the checkpoint once and returns the
cached ``model.onnx`` on every later call. The key is the checkpoint's SHA-256 plus what
changes the graph (opset, spatial styles) and the package version (a new version may
trace a different graph). Location: ``$CIPS_DEPLOY_CACHE``, else
``$XDG_CACHE_HOME/cips-deploy``, else ``~/.cache/cips-deploy``; entries live in ``onnx/``.

Every use verifies the entry's content hash (:mod:`.integrity`) and its metadata; an entry
that fails is removed and exported again, never used and never a hard error.

Exporting traces the PyTorch model (the ``build`` extra): torch, onnx and the families are
imported only when an entry has to be written, so the paths and checks here load without them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import regular_file
from cips_deploy.runtime.hashing import file_sha256

from . import integrity
from .engine_files import ROLES as GRID_ROLES
from .engine_files import line_engine_path, mapping_path_for
from .metadata import EngineMetadata, read_onnx_metadata, weights_sha256
from .spec import DEFAULT_OPSET

if TYPE_CHECKING:
    from cips_deploy.families.generator import Generator


def cache_root() -> Path:
    if os.environ.get("CIPS_DEPLOY_CACHE"):
        return Path(os.environ["CIPS_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cips-deploy"


def cache_entry(checkpoint_sha256: str, *, opset: int = DEFAULT_OPSET, spatial_style: bool = False) -> Path:
    """Where the synthesis engine of a checkpoint with this hash is cached."""
    style = "spatial" if spatial_style else "sample"
    return cache_root() / "onnx" / f"{checkpoint_sha256[:32]}-opset{opset}-{style}-v{__version__}" / "model.onnx"


def cached_onnx(checkpoint: str | Path, *, opset: int = DEFAULT_OPSET, spatial_style: bool = False) -> Path:
    """The cached ONNX engine of ``checkpoint``, exported and validated on first use.

    An entry is used only if its content hash verifies and its metadata names this
    checkpoint's hash; anything else (damaged, replaced, half-written) is deleted and
    exported again.
    """
    checkpoint = regular_file(checkpoint, "checkpoint")
    digest = file_sha256(checkpoint)
    path = cache_entry(digest, opset=opset, spatial_style=spatial_style)
    if _usable(path, lambda meta: meta.source_sha256 == digest and meta.spatial_style == spatial_style):
        return path
    from cips_deploy.families.checkpoint import load

    generator = load(checkpoint)
    _export_into(path, generator, opset, spatial_style, source_file=checkpoint.name, source_sha256=digest)
    return path


def cached_generator_onnx(generator: "Generator", *, opset: int = DEFAULT_OPSET, spatial_style: bool = False) -> Path:
    """The cached ONNX engine of an in-memory generator (a ``--preset`` model), keyed by its weights.

    Verified exactly as :func:`cached_onnx` does, against the weights' hash and config.
    """
    digest = weights_sha256(generator)
    path = cache_entry("w" + digest, opset=opset, spatial_style=spatial_style)

    def matches(meta: EngineMetadata) -> bool:
        return meta.weights_sha256 == digest and meta.config == generator.config and meta.spatial_style == spatial_style

    if _usable(path, matches):
        return path
    _export_into(path, generator, opset, spatial_style)
    return path


def _usable(path: Path, matches: Callable[[EngineMetadata], bool]) -> bool:
    """Whether the entry at ``path`` verifies and matches; a bad entry is removed."""
    if not path.exists() and not path.parent.exists():
        return False
    try:
        grid = [line_engine_path(path, role) for role in GRID_ROLES]
        for file in (path, mapping_path_for(path), *(file for file in grid if file.exists())):
            integrity.verify(file, required=True)
        if matches(read_onnx_metadata(path)):
            return True
    except CipsError:
        pass
    _remove_entry(path.parent)
    return False


def _export_into(path: Path, generator: "Generator", opset: int, spatial_style: bool, **source) -> None:
    from .onnx_export import export_onnx

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CipsError(f"Cannot create the export cache {path.parent}: {error.strerror or error}.") from None
    export_onnx(generator, path, opset=opset, spatial_style=spatial_style, overwrite=True, **source)


def _remove_entry(folder: Path) -> None:
    """Delete one cache entry folder (never anything outside the cache's ``onnx/``)."""
    root = (cache_root() / "onnx").resolve()
    folder = folder.resolve()
    if folder.parent == root and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
