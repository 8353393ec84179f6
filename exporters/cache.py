"""A cache of ONNX exports keyed by checkpoint hash, for rendering a checkpoint with onnxruntime.

``cached_onnx("churches.pt")`` exports (and validates) the checkpoint once and returns the
cached ``model.onnx`` on every later call. The key is the checkpoint's SHA-256 plus what
changes the graph (opset, spatial styles) and the package version (a new version may
trace a different graph). Location: ``$CIPS_DEPLOY_CACHE``, else
``$XDG_CACHE_HOME/cips-deploy``, else ``~/.cache/cips-deploy``; entries live in ``onnx/``.

Every use verifies the entry's content hash (:mod:`.integrity`) and the metadata of every
engine in it (the mapping and grid engines must be of the same weights); an entry that
fails, or that is not a real folder of regular files (a file, or a link to elsewhere), is
removed (a link itself, never what it points to) and exported again: never used and never
a hard error.

Concurrent runs: an entry is exported into a hidden staging folder in ``onnx/`` and renamed
into place complete, so a reader never sees half of one, and exports of one entry are
serialised by an ``flock`` on ``onnx/.<entry>.lock`` (released by the kernel when its holder
dies), so that of several renders started together one exports and the others use its entry.

Exporting traces the PyTorch model (the ``build`` extra): torch, onnx and the families are
imported only when an entry has to be written, so the paths and checks here load without them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import regular_file
from cips_deploy.runtime.atomic import current_umask, staging_folder
from cips_deploy.runtime.hashing import file_sha256

from . import integrity
from .engine_files import ROLES as GRID_ROLES
from .engine_files import line_engine_path, mapping_path_for
from .metadata import EngineMetadata, read_onnx_metadata, weights_sha256
from .spec import DEFAULT_OPSET, MAPPING

try:
    import fcntl
except ImportError:  # not POSIX: exports of one entry are not serialised (the rename still is atomic)
    fcntl = None

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

    An entry is used only if its content hashes verify and its metadata names this
    checkpoint's hash; anything else (damaged, replaced, half-written) is deleted and
    exported again.
    """
    checkpoint = regular_file(checkpoint, "checkpoint")
    digest = file_sha256(checkpoint)
    path = cache_entry(digest, opset=opset, spatial_style=spatial_style)

    def matches(meta: EngineMetadata) -> bool:
        return meta.source_sha256 == digest and meta.spatial_style == spatial_style

    def export(destination: Path) -> None:
        from cips_deploy.families.checkpoint import load

        _export(destination, load(checkpoint), opset, spatial_style, source_file=checkpoint.name, source_sha256=digest)

    return _entry(path, matches, export)


def cached_generator_onnx(generator: "Generator", *, opset: int = DEFAULT_OPSET, spatial_style: bool = False) -> Path:
    """The cached ONNX engine of an in-memory generator (a ``--preset`` model), keyed by its weights.

    Verified exactly as :func:`cached_onnx` does, against the weights' hash and config.
    """
    digest = weights_sha256(generator)
    path = cache_entry("w" + digest, opset=opset, spatial_style=spatial_style)

    def matches(meta: EngineMetadata) -> bool:
        return meta.weights_sha256 == digest and meta.config == generator.config and meta.spatial_style == spatial_style

    return _entry(path, matches, lambda destination: _export(destination, generator, opset, spatial_style))


def _entry(path: Path, matches: Callable[[EngineMetadata], bool], export: Callable[[Path], None]) -> Path:
    """``path`` once its entry is usable: as it is, else exported again under the entry's lock.

    The first check takes no lock (a read-only cache with a good entry keeps working); a bad
    entry is only removed under the lock, after a second look, since a concurrent run may
    have just put a good one in its place."""
    if _usable(path, matches):
        return path
    folder = path.parent
    _make_folder(folder.parent)
    with _locked(folder):
        if _usable(path, matches):  # a concurrent run exported it while we waited
            return path
        _discard(folder)
        stage = staging_folder(folder.parent, folder.name)
        try:
            export(stage / path.name)
            _publish(stage, folder)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return path


def _usable(path: Path, matches: Callable[[EngineMetadata], bool]) -> bool:
    """Whether the entry at ``path`` is a real folder of regular files whose engines verify,
    belong together and match; never raises, never removes anything."""
    folder = path.parent
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):  # missing, a file, or a link to elsewhere
            return False
        if any(entry.is_symlink() or not entry.is_file() for entry in folder.iterdir()):
            return False  # every file of an entry is written here by the export: anything else is foreign
        meta = _verified(path)
        return matches(meta) and _companions_match(path, meta)
    except (CipsError, OSError, ValueError):
        return False


def _verified(path: Path) -> EngineMetadata:
    integrity.verify(path, required=True)
    return read_onnx_metadata(path)


def _companions_match(path: Path, main: EngineMetadata) -> bool:
    """The mapping engine (and, for line-factored models, the grid engines) verify and are of
    ``main``'s weights: a renderer refuses a mismatched set, so such an entry is not usable."""
    mapping = _verified(mapping_path_for(path))
    if mapping.role != MAPPING or mapping.weights_sha256 != main.weights_sha256:
        return False
    grid = {role: line_engine_path(path, role) for role in GRID_ROLES}
    expected = main.config.family.line_factored and not main.spatial_style  # as the exporter decides
    if not expected:
        return not any(file.exists() for file in grid.values())
    for role, file in grid.items():
        meta = _verified(file)
        if meta.role != role or meta.weights_sha256 != main.weights_sha256 or meta.config != main.config:
            return False
    return True


def _export(path: Path, generator: "Generator", opset: int, spatial_style: bool, **source) -> None:
    from .onnx_export import export_onnx

    export_onnx(generator, path, opset=opset, spatial_style=spatial_style, overwrite=True, **source)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CipsError(f"Cannot use the export cache: {folder} is not a folder (set CIPS_DEPLOY_CACHE elsewhere or remove it).") from None
    except OSError as error:
        raise CipsError(f"Cannot create the export cache {folder}: {error.strerror or error}.") from None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``onnx/.<entry>.lock`` (waiting for a concurrent export)."""
    if fcntl is None:
        yield
        return
    lock = folder.parent / f".{folder.name}.lock"
    handle = _open_lock(lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def _open_lock(lock: Path) -> int:
    """The lock file's descriptor; whatever else stands at its name (a link, a folder) is removed first."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(2):
        try:
            return os.open(lock, flags, 0o666)
        except OSError as error:
            if attempt or error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise CipsError(f"Cannot lock the export cache entry {lock.parent / lock.name[1:-5]}: {error.strerror or error}.") from None
            _remove_path(lock)
    raise AssertionError("unreachable")


def _publish(stage: Path, folder: Path) -> None:
    """Rename the complete staged entry into place (readers see all of it or nothing)."""
    os.chmod(stage, 0o777 & ~current_umask())  # the staging folder was made private
    try:
        os.rename(stage, folder)
    except OSError as error:
        raise CipsError(f"Cannot write the export cache entry {folder}: {error.strerror or error}.") from None


def _discard(folder: Path) -> None:
    """Remove whatever stands at an entry's name: a folder with its files, or a file or link
    itself (never what a link points to); never anything outside the cache's ``onnx/``."""
    root = (cache_root() / "onnx").resolve()
    if folder.parent.resolve() != root or folder.name in ("", ".", ".."):
        return
    _remove_path(folder)


def _remove_path(path: Path) -> None:
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        raise CipsError(f"Cannot replace the export cache entry {path}: {error.strerror or error}.") from None


