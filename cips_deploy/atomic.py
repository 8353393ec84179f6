"""Write files so that a reader never sees half of one.

Output goes to a temporary file in the destination's folder and is renamed over the
destination only once it is complete, so a crash, a full disk or Ctrl-C leaves either the
old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import CipsError


def check_destination(destination: Path, *, overwrite: bool, probe: bool = True) -> None:
    """Refuse, before any expensive work, a destination that cannot or must not be written.

    ``probe`` writes and removes an empty file beside it, the only reliable test of writability.
    """
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
        handle, probe = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".probe", dir=folder)
    except OSError as error:
        raise CipsError(f"Cannot write {destination}: {error.strerror or error}.") from None
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; rename it into place on success.

    The caller writes the whole file to the yielded path. If the body raises, the
    temporary file is removed and ``destination`` is untouched.
    """
    destination = Path(destination)
    check_destination(destination, overwrite=overwrite, probe=False)  # creating the temporary file probes
    folder = destination.parent
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=folder)
    except OSError as error:
        raise CipsError(f"Cannot write {destination}: {error.strerror or error}.") from None
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        # mkstemp creates the file private (0600); give it the permissions of a normal file.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, destination)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CipsError(f"Cannot write {destination}: {error.strerror or error}.") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
