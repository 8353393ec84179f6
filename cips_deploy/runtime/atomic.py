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

It is also the one output guard (docs/security.md, "Outputs"):

- :func:`check_destination` and :func:`guard_outputs` refuse, before any work, a name the
  file system cannot hold (over NAME_MAX or PATH_MAX), a folder that is missing or is a
  file, and anything that exists unless ``overwrite`` (``--force``);
- with ``overwrite`` the path the user named is replaced; everything else an output occupies
  (:func:`guard_owned`: a Deep Zoom pyramid's ``NAME_files/`` and ``NAME.html``, a Triton
  model folder, a training run's files) is replaced only when cips-deploy wrote it: a folder
  holds :data:`MARKER` with its kind's text (:func:`marker_problem`; never a link) and nothing
  a link could redirect, a file carries :data:`SIGNATURE` in its first bytes
  (:func:`ownership_problem`), a run file sits in a folder marked as a training's;
- without ``overwrite`` the final move never replaces anything (:func:`publish`, and
  :func:`atomic_path` through ``os.link``), so of two commands writing one new output at
  once, one succeeds and the other ends in a sentence (:class:`Clobbered`);
- streamed renders own their partial folder through :func:`lock_folder` (``flock``) and
  read its small files through :func:`read_small_file` (a regular file, never a link, a
  FIFO or a device, with a size cap); :func:`check_plain_tree` refuses links in it;
- ENOSPC, EDQUOT and ENAMETOOLONG become one sentence wherever a write fails
  (:func:`write_failure`), also when a library reports them in its own exception text.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cips_deploy.errors import CipsError

SUFFIXES = ("partial", "probe")
# .<label>.<pid>.<random>.<suffix>: what this module creates (mkstemp/mkdtemp add <random>).
_OURS = re.compile(r"^\.(?P<label>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:partial|probe)$")
# The earlier scheme: .<label>.<random>.partial and the exporter's .cips-export.<random>.
_OLD = re.compile(r"^\.(?P<label>.+)\.[A-Za-z0-9_]{8}(?:\.partial|\.probe)?$")
OLD_LEFTOVER_AGE = 3600.0  # seconds: an older nameless-writer leftover is from a dead run
EXPORT_LABEL = "cips-export"  # the exporter's work folder beside its output
LOW_SPACE = 1 << 20  # bytes left on a file system that count as "full"
NAME_MAX = 255  # bytes in one file name, where the file system does not say (pathconf)
PATH_MAX = 4096  # bytes in a path handed to the kernel, where the file system does not say
PATH_ROOM = 64  # bytes this package adds under an output's path (partial folders, tiles, temporary names)
LONG_LABEL = 100  # longer labels are shortened in temporary names, so that those stay under NAME_MAX
# Ownership (docs/security.md): a folder cips-deploy wrote holds MARKER; a page it wrote carries SIGNATURE.
MARKER = ".cips-deploy-output"
MARKER_TEXT = "This folder was written by cips-deploy; render --force may replace it as a whole.\n"
SIGNATURE = b'<meta name="generator" content="cips-deploy">'
SIGNATURE_WINDOW = 4096  # the signature is looked for in a file's first bytes only
# Errors that libraries report as text (safetensors' SafetensorError, torch's RuntimeError).
_TEXT_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "storagefull", "os error 28"),
    errno.EDQUOT: ("disk quota exceeded", "os error 122"),
    errno.ENAMETOOLONG: ("file name too long", "os error 36"),
}


def check_destination(destination: Path, *, overwrite: bool, probe: bool = True) -> None:
    """Refuse, before any expensive work, a destination that cannot or must not be written.

    ``probe`` writes and removes an empty file beside it, the only reliable test of writability.
    """
    destination = Path(destination)
    check_names(destination)
    check_folder(destination)
    found = _lstat(destination)
    if found is not None and stat.S_ISDIR(_stat_or(destination, found).st_mode):
        raise CipsError(f"Cannot write {shown(destination)}: it is a directory.")
    if found is not None and not overwrite:
        raise OutputConflict(f"{shown(destination)} already exists; pass --force to replace it.")
    if not probe:
        return
    # Probe by writing: permission bits say nothing for root, read-only mounts or /proc.
    try:
        handle, probe_file = tempfile.mkstemp(prefix=_prefix(destination.name), suffix=".probe", dir=destination.parent)
    except OSError as error:
        raise _write_error(error, destination) from None
    os.close(handle)
    os.unlink(probe_file)


def check_names(path: Path, *more: Path) -> None:
    """Refuse a path the file system cannot name: one of its names over NAME_MAX bytes, or
    the whole over PATH_MAX less the room this package adds under it (partial folders, tiles).

    Checked before anything looks at the path: ``Path.exists`` itself raises ENAMETOOLONG.
    """
    for each in (path, *more):
        each = Path(each)
        if "\0" in str(each):  # the kernel cannot take it; Python raises ValueError
            raise CipsError(f"Cannot write {shown(repr(str(each)))}: a path cannot hold a NUL character.")
        limit_name, limit_path = _limits(each.parent)
        for name in each.parts:
            size = len(os.fsencode(name))
            if size > limit_name:
                raise CipsError(
                    f"Cannot write {shown(each)}: the name {shown(Path(name))} is {size:,} bytes long, more than the "
                    f"{limit_name} bytes a file name may have."
                )
        size = len(os.fsencode(str(each)))
        if size + PATH_ROOM > limit_path:
            raise CipsError(
                f"Cannot write {shown(each)}: its path is {size:,} bytes long, more than the {limit_path - PATH_ROOM:,} "
                "bytes this file system leaves for it."
            )


def check_folder(destination: Path) -> None:
    """Refuse a destination whose folder is missing or is not a folder, naming the part that is wrong."""
    folder = Path(destination).parent
    for ancestor in (folder, *folder.parents):
        try:
            facts = ancestor.stat()
        except FileNotFoundError:
            continue
        except NotADirectoryError:  # some name above it is a file: found on the way up
            continue
        except OSError as error:
            raise _write_error(error, Path(destination)) from None
        if not stat.S_ISDIR(facts.st_mode):
            raise CipsError(f"Cannot write {shown(Path(destination))}: {shown(ancestor)} is not a folder.")
        if ancestor != folder:
            raise CipsError(f"Cannot write {shown(Path(destination))}: the folder {shown(folder)} does not exist.")
        return


# --------------------------------------------------------------------------- the output guard

Owner = Callable[[Path], "str | None"]  # None when cips-deploy wrote the path, else what is foreign in it


class OutputConflict(CipsError):
    """An output exists and must not be replaced: no ``--force``, or not cips-deploy's."""


class Clobbered(OutputConflict):
    """The destination appeared while this command ran (another writer), and overwriting was not allowed."""


def guard_outputs(
    named: Path, companions: Iterable[Path] = (), *, overwrite: bool, owner: Owner | None = None,
    extra_names: Iterable[Path] = (), probe: bool = False,
) -> None:
    """Refuse, before any work, outputs that must not be written (see the module text).

    named:       the path the user gave; with ``overwrite`` an existing file there is replaced.
    companions:  the other paths the output occupies; with ``overwrite`` one that exists is
                 replaced only if ``owner`` (default :func:`ownership_problem`) says cips-deploy wrote it.
    extra_names: paths the command will create besides (a partial folder): their names must fit too.
    probe:       also write and remove an empty file beside ``named`` (:func:`check_destination`).
    """
    named = Path(named)
    companions = [Path(path) for path in companions if Path(path) != named]
    check_names(named, *companions, *extra_names)
    check_destination(named, overwrite=overwrite, probe=probe)
    guard_owned(companions, overwrite=overwrite, owner=owner, belongs=named)


def guard_owned(
    paths: Iterable[Path], *, overwrite: bool, owner: Owner | None = None, belongs: Path | None = None,
    advice: str = "move it away or choose another output name",
) -> None:
    """Refuse, before any work, to replace any of ``paths`` that exists, unless ``overwrite``;
    with ``overwrite`` one is replaced only if ``owner`` (default :func:`ownership_problem`)
    says cips-deploy wrote it. The rule for every output that is not the one path the user
    named: a multi-file output's companions (``belongs``: the output they belong to), a
    Triton model folder, the files of a training run. ``advice`` ends a refusal with --force."""
    for path in paths:
        path = Path(path)
        if _lstat(path) is None:
            continue
        if not overwrite:
            part = f" (it belongs to the output {shown(belongs)})" if belongs is not None else ""
            raise OutputConflict(f"{shown(path)} already exists{part}; pass --force to replace it.")
        problem = (owner or ownership_problem)(path)
        if problem is not None:
            raise OutputConflict(f"{shown(path)} was not written by cips-deploy ({problem}), so --force does not replace it; {advice}.")


def ownership_problem(path: Path, pattern: re.Pattern | None = None) -> str | None:
    """None when cips-deploy wrote ``path``, else what says otherwise (a phrase).

    A folder is ours when it holds :data:`MARKER` with :data:`MARKER_TEXT`, nothing in it is
    a link, a FIFO or a device, and (``pattern``) every path in it, relative and with ``/``,
    matches; a file is ours when it is a regular file whose first bytes hold :data:`SIGNATURE`.
    """
    path = Path(path)
    found = _lstat(path)
    if found is None:
        return None
    if stat.S_ISLNK(found.st_mode):
        return "it is a symbolic link"
    if stat.S_ISREG(found.st_mode):
        try:
            return None if SIGNATURE in read_small_file(path, None, "file", head=SIGNATURE_WINDOW) else "it has no cips-deploy signature"
        except CipsError:
            return "it cannot be read"
    if not stat.S_ISDIR(found.st_mode):
        return "it is not a regular file or folder"
    problem = marker_problem(path)
    if problem is not None:
        return problem
    for entry, kind in walk_plain(path):
        relative = entry.relative_to(path).as_posix()
        if kind == "other":
            return f"{relative} in it is a link or a special file"
        if relative != MARKER and pattern is not None and not pattern.fullmatch(relative):
            return f"it holds {relative}"
    return None


def marker_problem(folder: Path, text: str = MARKER_TEXT) -> str | None:
    """None when ``folder`` holds :data:`MARKER` with ``text``, else what is wrong (a phrase).

    The marker must be a regular file, never a link (a link to a real marker elsewhere proves
    nothing about this folder), and hold exactly ``text``: each kind of output has its own, so
    that one kind's marker never vouches for another."""
    try:
        if read_small_file(Path(folder) / MARKER, len(text.encode("utf-8")) * 4, "marker").decode("utf-8", "replace") != text:
            return f"its {MARKER} is not cips-deploy's"
    except CipsError:
        return f"it holds no {MARKER} file"
    return None


def walk_plain(folder: Path) -> Iterator[tuple[Path, str]]:
    """Every path under ``folder`` with its kind, ``file``, ``folder`` or ``other`` (a link, a
    FIFO, a device, a socket), without following any link."""
    pending = [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as error:
            raise CipsError(f"Cannot read {shown(current)}: {error.strerror or error}.") from None
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
                yield path, "folder"
            elif entry.is_file(follow_symlinks=False):
                yield path, "file"
            else:
                yield path, "other"


def check_plain_tree(folder: Path, advice: str) -> None:
    """Refuse ``folder`` if it, or anything in it, is a link or a special file: writing
    through a link planted there would write outside it. ``advice`` ends the sentence."""
    found = _lstat(folder)
    if found is None:
        return
    if not stat.S_ISDIR(found.st_mode):
        raise CipsError(f"{shown(folder)} is {'a symbolic link' if stat.S_ISLNK(found.st_mode) else 'not a folder'}; {advice}")
    for path, kind in walk_plain(folder):
        if kind == "other":
            what = "a symbolic link" if path.is_symlink() else "a special file (a FIFO, a device or a socket)"
            raise CipsError(f"{shown(folder)} holds {what}, {shown(path.relative_to(folder))}, which cips-deploy never makes; {advice}")


def write_marker(folder: Path, text: str = MARKER_TEXT) -> None:
    """Mark ``folder`` as written by cips-deploy (:func:`ownership_problem`, :func:`marker_problem`)."""
    write_new_file(Path(folder) / MARKER, text.encode("utf-8"))


def write_new_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole, without following a link: a temporary ``NAME.tmp`` created
    exclusively (``O_EXCL`` never opens an existing name, link or not), then renamed over ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    with exclusive_file(temporary) as handle:
        handle.write(data)
    os.replace(temporary, path)


@contextlib.contextmanager
def exclusive_file(path: Path) -> Iterator:
    """A new file at ``path`` (``O_CREAT | O_EXCL | O_NOFOLLOW``), open for binary writing; removed if the body fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


_OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("cips_deploy_overwrite", default=True)


@contextlib.contextmanager
def output_policy(*, overwrite: bool) -> Iterator[None]:
    """Whether :func:`publish` calls inside the block may replace existing outputs (``--force``).

    The streamed render sets it around ``Sink.finish``, whose signature (a plugin contract)
    carries no such flag. Outside any block, replacing is allowed (the earlier behaviour)."""
    token = _OVERWRITE.set(overwrite)
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


def publish(source: Path, target: Path, *, named: bool, owner: Owner | None = None) -> None:
    """Move the finished file or folder ``source`` to ``target`` (same file system).

    Without overwriting (:func:`output_policy`) nothing existing is replaced, atomically:
    a file is hard-linked into place (``link`` fails on an existing name), a folder is
    renamed onto an empty folder this call has just created exclusively. With overwriting,
    ``named`` paths are replaced, companions only when ``owner`` says cips-deploy wrote them.
    """
    source, target = Path(source), Path(target)
    overwrite = _OVERWRITE.get()
    if overwrite and _lstat(target) is not None:
        if not named:
            problem = (owner or ownership_problem)(target)
            if problem is not None:
                raise OutputConflict(f"{shown(target)} was not written by cips-deploy ({problem}), so --force does not replace it; move it away or choose another output name.")
        if source.is_dir():
            replace_folder(source, target, set_modes=False)
        else:
            os.replace(source, target)
        return
    if source.is_dir():
        _folder_no_clobber(source, target)
    else:
        link_no_clobber(source, target)


def link_no_clobber(source: Path, target: Path) -> None:
    """Rename the file ``source`` to ``target`` unless ``target`` exists (:class:`Clobbered`).

    ``os.link`` is the atomic test-and-create; where the file system has no hard links the
    fallback checks first, which a concurrent writer can still race."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise _clobbered(target) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        if _lstat(target) is not None:
            raise _clobbered(target) from None
        os.replace(source, target)
        return
    os.unlink(source)


def _folder_no_clobber(source: Path, target: Path) -> None:
    try:
        os.mkdir(target)  # the exclusive claim: fails if anything has the name
    except FileExistsError:
        raise _clobbered(target) from None
    try:
        os.rename(source, target)  # a folder may be renamed onto an empty folder
    except OSError as error:
        with contextlib.suppress(OSError):
            os.rmdir(target)  # still the empty claim, unless someone filled it: then it is theirs
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _clobbered(target) from None
        raise


def _clobbered(target: Path) -> Clobbered:
    return Clobbered(f"Cannot write {shown(target)}: another program created it while this command ran; pass --force to replace it.")


# --------------------------------------------------------------------------- locks and small reads


def lock_folder(folder: Path, busy: str, name: str = "lock") -> int:
    """Hold an exclusive ``flock`` on ``folder / name`` (created if missing, never through a
    link); returns its descriptor, which the caller closes to release. ``busy`` is the
    sentence when another process holds it. The kernel releases a dead process's lock, so a
    lock is never stale."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        raise  # the folder itself is gone (finished by its owner meanwhile): the caller decides
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CipsError(f"{shown(path)} is a symbolic link, which cips-deploy never makes; delete {shown(folder)} to start again.") from None
        raise _write_error(error, path) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CipsError(f"{shown(path)} is not a regular file; delete {shown(folder)} to start again.")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CipsError(busy) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_file(path: Path, limit: int | None, what: str, *, head: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` (None: no cap with ``head``),
    or its first ``head`` bytes. A link, a FIFO (which would block), a device (which may never
    end) or a larger file is one sentence, decided from the open descriptor's ``fstat``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CipsError(f"No such {what}: {shown(path)}.") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CipsError(f"The {what} {shown(path)} is a symbolic link, not a regular file.") from None
        raise CipsError(f"Cannot read the {what} {shown(path)}: {error.strerror or error}.") from None
    try:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(facts.st_mode) else "a device" if stat.S_ISCHR(facts.st_mode) or stat.S_ISBLK(facts.st_mode) else "a folder" if stat.S_ISDIR(facts.st_mode) else "not a regular file"
            raise CipsError(f"The {what} {shown(path)} is {kind}, not a regular file.")
        wanted = head if head is not None else limit
        if head is None and facts.st_size > limit:
            raise CipsError(f"The {what} {shown(path)} is {facts.st_size:,} bytes, more than the {limit:,} it can be.")
        chunks, size = [], 0
        while size <= wanted:  # read one byte past the cap: a file that grew is caught too
            chunk = os.read(fd, min(1 << 20, wanted + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise CipsError(f"Cannot read the {what} {shown(path)}: {error.strerror or error}.") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if head is not None:
        return data[:head]
    if len(data) > limit:
        raise CipsError(f"The {what} {shown(path)} is more than the {limit:,} bytes it can be.")
    return data


def shown(path: Path | str) -> str:
    """How a path is named in a message: whole, or its start and end when it is very long."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}"


def _lstat(path: Path) -> os.stat_result | None:
    """``lstat`` of ``path``, or None when nothing has that name (or a name above it is a file)."""
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise _write_error(error, Path(path)) from None


def _stat_or(path: Path, fallback: os.stat_result) -> os.stat_result:
    """``stat`` following a link (a link to a folder is a folder), else the link's own facts."""
    try:
        return os.stat(path)
    except OSError:
        return fallback


def _limits(folder: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system holding ``folder`` (its nearest existing ancestor)."""
    for ancestor in (folder, *folder.parents):
        try:
            return os.pathconf(ancestor, "PC_NAME_MAX"), os.pathconf(ancestor, "PC_PATH_MAX")
        except (OSError, ValueError):
            continue
    return NAME_MAX, PATH_MAX


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
        raise _write_error(error, destination) from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp creates the file private (0600); give it the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~current_umask())
        if overwrite:
            os.replace(temporary, destination)
        else:  # no-clobber: a file another command wrote meanwhile is kept, and this one says so
            link_no_clobber(temporary, destination)
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
            raise _write_error(error, self.folder / name) from None
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


def replace_folder(stage: Path, destination: Path, *, set_modes: bool = True) -> None:
    """Rename the finished folder ``stage`` to ``destination`` (same file system), replacing
    an existing one: the old folder steps aside first, so a failure leaves one of the two,
    never a mixture. With ``set_modes``, folders get the permissions of a normal ``mkdir``
    (a stage made by ``mkdtemp`` is private)."""
    if set_modes:
        for folder in (stage, *(entry for entry in Path(stage).rglob("*") if entry.is_dir() and not entry.is_symlink())):
            os.chmod(folder, 0o777 & ~current_umask())
    if _lstat(destination) is None:
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
        problem = write_failure(error, Path(folder) / label, folder)
        raise CipsError(f"Cannot write into {folder}: {error.strerror or error}.") if problem is None else problem from None


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
    short = _short_label(label)
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is not None:
            if match["label"] not in (label, short) or _alive(int(match["pid"])):
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
        return _write_error(error, destination)
    number = _errno_in_text(error)  # safetensors, for one, reports ENOSPC as text in its own type
    if number is not None:
        return _write_error(OSError(number, os.strerror(number)), destination)
    if disk_full(folder):
        return CipsError(f"Cannot write {shown(destination)}: the disk is full.")
    return None


def _write_error(error: OSError, destination: Path) -> CipsError:
    """The one sentence for an OSError while writing ``destination``."""
    if error.errno == errno.ENOSPC:
        return CipsError(f"Cannot write {shown(destination)}: the disk is full.")
    if error.errno == errno.EDQUOT:
        return CipsError(f"Cannot write {shown(destination)}: the disk quota is used up.")
    if error.errno == errno.ENAMETOOLONG:
        return CipsError(f"Cannot write {shown(destination)}: its name or path is longer than the file system allows.")
    return CipsError(f"Cannot write {shown(destination)}: {error.strerror or error}.")


def _errno_in_text(error: BaseException) -> int | None:
    """The errno a library's exception names in its text (ENOSPC, EDQUOT, ENAMETOOLONG), or None."""
    text = str(error).lower()
    for number, phrases in _TEXT_ERRNOS.items():
        if any(phrase in text for phrase in phrases):
            return number
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
    return f".{_short_label(label)}.{os.getpid()}."


def _short_label(label: str) -> str:
    """``label`` as temporary names carry it: a long one is cut and tagged with its hash,
    so that ``.<label>.<pid>.<random>.partial`` stays under NAME_MAX for any valid name."""
    if len(os.fsencode(label)) <= LONG_LABEL:
        return label
    digest = hashlib.sha256(os.fsencode(label)).hexdigest()[:12]
    cut = label[: LONG_LABEL - 13]
    while len(os.fsencode(cut)) > LONG_LABEL - 13:  # whole characters, however many bytes each takes
        cut = cut[:-1]
    return f"{cut}~{digest}"


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
