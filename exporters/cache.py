"""A cache of ONNX exports keyed by checkpoint hash, for rendering a checkpoint with onnxruntime.

``cached_onnx("churches.pt")`` exports (and validates) the checkpoint once and returns the
cached ``model.onnx`` on every later call. The key is the checkpoint's SHA-256 plus what
changes the graph (opset, spatial styles) and the package version (a new version may
trace a different graph). Location: ``$CIPS_DEPLOY_CACHE``, else
``$XDG_CACHE_HOME/cips-deploy``, else ``~/.cache/cips-deploy``; entries live in ``onnx/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cips_deploy._version import __version__
from cips_deploy.checkpoint import file_sha256, load
from cips_deploy.errors import CipsError

from .metadata import read_onnx_metadata
from .onnx_export import DEFAULT_OPSET, export_onnx


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
    """The cached ONNX engine of ``checkpoint``, exported and validated on first use."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CipsError(f"No such checkpoint: {checkpoint}.")
    digest = file_sha256(checkpoint)
    path = cache_entry(digest, opset=opset, spatial_style=spatial_style)
    if path.is_file():
        try:
            metadata = read_onnx_metadata(path)
            if metadata.source_sha256 == digest and metadata.spatial_style == spatial_style:
                return path
        except CipsError:
            pass  # a damaged entry is exported again below
    generator = load(checkpoint)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CipsError(f"Cannot create the export cache {path.parent}: {error.strerror or error}.") from None
    export_onnx(
        generator,
        path,
        opset=opset,
        spatial_style=spatial_style,
        source_file=checkpoint.name,
        source_sha256=digest,
        overwrite=True,
    )
    return path
