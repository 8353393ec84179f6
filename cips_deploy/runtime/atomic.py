"""Write files and folders so that a reader never sees half of one; sweep what killed runs left.

Output goes to a temporary file (or a staging folder, for sets of files that belong
together: an engine, its external data, its sidecar) in the destination's folder and is
renamed into place only once complete, so a crash, a full disk or Ctrl-C leaves either the
old output or the new one, never a torn one.

Every temporary name carries its writer's process id: ``.<label>.<pid>.<random>.partial``.
A SIGKILL (or a power cut) leaves such a file or folder behind; the next run that writes
the same destination (or stages under the same label) in that folder removes those whose
writer is no longer running (:func:`sweep_leftovers`). Names of the earlier scheme,
without a process id, are removed once they are an hour old.

This is the one staging module: :func:`atomic_path` for one file, :func:`staged` for a
folder of files committed together, :func:`staging_folder` for scratch space beside a
destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from cips_deploy.errors import CipsError

SUFFIXES = ("partial", "probe")
# .<label>.<pid>.<random>.<suffix>: what this module creates (mkstemp/mkdtemp add <random>).
_OURS = re.compile(r"^\.(?P<label>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:partial|probe)$")
# The earlier scheme: .<label>.<random>.partial and the exporter's .cips-export.<random>.
_OLD = re.compile(r"^\.(?P<label>.+)\.[A-Za-z0-9_]{8}(?:\.partial|\.probe)?$")
OLD_LEFTOVER_AGE = 3600.0  # seconds: an older nameless-writer leftover is from a dead run
EXPORT_LABEL = "cips-export"  # the exporter's work folder beside its output
LOW_SPACE = 1 << 20  # bytes left on a file system that count as "full"


def check_destination(destination: Path, *, overwrite: bool, probe: bool = True) -> None:
    """Refuse, before any expensive work, a destination that cannot or must not be written.

    ``probe`` writes and removes an empty file beside it, the only reliable test of writability.
    """
    destination = Path(destination)
    if destination.is_dir():
        raise CipsError(f"Cannot write {destination}: it is a directory.")
    if destination.exists() and not overwrite:
        raise CipsError(f"{destination} already exists; pass --force to replace it.")
    folder = destination.parent
    if not folder.exists():
        raise CipsError(f"Cannot write {destination}: the folder {folder} does not exist.")
    if not folder.is_dir():
        raise CipsError(f"Cannot write {destination}: {folder} is not a folder.")
    if not probe:
        return
    # Probe by writing: permission bits say nothing for root, read-only mounts or /proc.
    try:
        handle, probe_file = tempfile.mkstemp(prefix=_prefix(destination.name), suffix=".probe", dir=folder)
    except OSError as error:
        raise CipsError(f"Cannot write {destination}: {error.strerror or error}.") from None
    os.close(handle)
    os.unlink(probe_file)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    The caller writes the whole file to the yielded path. If the body raises, the
    temporary file is removed and ``destination`` is untouched. A full disk reads as one
    sentence whatever the writer raised (torch, for one, raises RuntimeError).
    """
    destination = Path(destination)
    check_destination(destination, overwrite=overwrite, probe=False)  # creating the temporary file probes
    folder = destination.parent
    sweep_leftovers(folder, destination.name)
    try:
        handle, temporary = tempfile.mkstemp(prefix=_prefix(destination.name), suffix=".partial", dir=folder)
    except OSError as error:
        raise CipsError(f"Cannot write {destination}: {error.strerror or error}.") from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp creates the file private (0600); give it the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, destination)
    except BaseException as error:
        problem = write_failure(error, destination, folder)
        temporary.unlink(missing_ok=True)
        if problem is not None:
            raise problem from None
        raise


class StagedFolder:
    """A hidden temporary folder inside ``folder``; :meth:`commit` moves its files into ``folder``."""

    def __init__(self, folder: Path, label: str) -> None:
        self.folder = Path(folder)
        self.label = label
        self.path = staging_folder(self.folder, label)

    def file(self, name: str) -> Path:
        """Where to write the file that will become ``folder / name``."""
        return self.path / name

    def commit(self, last: list[str] | tuple[str, ...] = ()) -> list[Path]:
        """Move every staged file into place; the names in ``last`` go last, in that order.

        Models go last so that a reader who sees the model file also finds its external
        data and sidecar already in place.
        """
        names = sorted(entry.name for entry in self.path.iterdir() if entry.is_file())
        ordered = [name for name in names if name not in last] + [name for name in last if name in names]
        moved = []
        name = ""
        try:
            for name in ordered:
                destination = self.folder / name
                os.chmod(self.path / name, 0o666 & ~current_umask())
                os.replace(self.path / name, destination)
                moved.append(destination)
        except OSError as error:
            raise CipsError(f"Cannot write {self.folder / name}: {error.strerror or error}.") from None
        return moved

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged(folder: Path, label: str, destination: Path | None = None) -> Iterator[StagedFolder]:
    """A :class:`StagedFolder` that is always removed on exit; commit it inside the block.

    A full disk or another write error inside the block reads as one sentence naming
    ``destination`` (default: ``folder / label``).
    """
    stage = StagedFolder(folder, label)
    try:
        yield stage
    except CipsError as error:
        stage.discard()
        text = str(error)
        if f"{stage.path}{os.sep}" in text:  # name the file where the user will look for it
            raise CipsError(text.replace(f"{stage.path}{os.sep}", _shown(stage.folder))) from None
        raise
    except BaseException as error:
        problem = write_failure(error, Path(destination or Path(folder) / label), stage.path)
        stage.discard()
        if problem is not None:
            raise problem from None
        raise
    stage.discard()


def replace_folder(stage: Path, destination: Path) -> None:
    """Rename the finished folder ``stage`` to ``destination`` (same file system), replacing
    an existing one: the old folder steps aside first, so a failure leaves one of the two,
    never a mixture. Folders get the permissions of a normal ``mkdir``."""
    for folder in (stage, *(entry for entry in Path(stage).rglob("*") if entry.is_dir())):
        os.chmod(folder, 0o777 & ~current_umask())
    if not destination.exists():
        os.replace(stage, destination)
        return
    old = Path(tempfile.mkdtemp(prefix=_prefix(destination.name), suffix=".partial", dir=destination.parent))
    os.replace(destination, old / destination.name)
    os.replace(stage, destination)
    shutil.rmtree(old, ignore_errors=True)


def _shown(folder: Path) -> str:
    """How a file in ``folder`` is named in a message: no ``./`` for the current folder."""
    return "" if str(folder) in ("", ".") else f"{folder}{os.sep}"


def staging_folder(folder: Path, label: str) -> Path:
    """A new hidden folder ``.<label>.<pid>.<random>.partial`` in ``folder`` (swept first).

    The caller removes it; if the process is killed first, the next one sweeps it.
    """
    folder = Path(folder)
    sweep_leftovers(folder, label)
    try:
        return Path(tempfile.mkdtemp(prefix=_prefix(label), suffix=".partial", dir=folder))
    except OSError as error:
        raise CipsError(f"Cannot write into {folder}: {error.strerror or error}.") from None


def sweep_leftovers(folder: Path, label: str) -> list[Path]:
    """Remove the temporary files and staging folders for ``label`` in ``folder`` whose writer is dead.

    Returns what was removed. A leftover of a live process (a concurrent run) is kept.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is not None:
            if match["label"] != label or _alive(int(match["pid"])):
                continue
        else:
            old = _OLD.match(entry.name)
            if old is None or old["label"] != label:
                continue
            if not entry.name.endswith((".partial", ".probe")) and label != EXPORT_LABEL:
                continue  # only the exporter's old work folders had no suffix
            try:
                if now - entry.lstat().st_mtime < OLD_LEFTOVER_AGE:
                    continue
            except OSError:
                continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # not ours to remove after all (permissions): leave it
    return removed


def write_failure(error: BaseException, destination: Path, folder: Path) -> CipsError | None:
    """The one sentence for a failed write, or None when ``error`` is not about writing.

    An OSError is a write problem by definition here; any other exception counts as one
    when the file system has (almost) no space left, since writers such as torch.save
    report ENOSPC as a RuntimeError. Called before the partial output is removed, while
    the space it took is still taken.
    """
    if isinstance(error, CipsError) or not isinstance(error, Exception):
        return None
    if isinstance(error, OSError):
        if error.errno == errno.ENOSPC:
            return CipsError(f"Cannot write {destination}: the disk is full.")
        return CipsError(f"Cannot write {destination}: {error.strerror or error}.")
    if disk_full(folder):
        return CipsError(f"Cannot write {destination}: the disk is full.")
    return None


def disk_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has less than LOW_SPACE bytes left for us."""
    try:
        facts = os.statvfs(folder)
    except OSError:
        return False
    return facts.f_bavail * facts.f_frsize < LOW_SPACE


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_current_umask = current_umask  # the earlier private name


def _prefix(label: str) -> str:
    return f".{label}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a pid we cannot ask about: assume running
    return True
