"""Write a set of files (an engine, its external data, its sidecar) so that none is half-written.

An export writes several files that belong together: ``model.onnx`` and perhaps
``model.onnx.data``, ``model.mapping.onnx``, a TensorRT plan and its sidecar JSON. They are
written into a hidden staging folder beside their destination and moved into place only
when everything (export, checker, validation) has succeeded; on any failure the staging
folder is deleted and the destination folder is exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from cips_deploy.errors import CipsError


class StagedFolder:
    """A hidden temporary folder inside ``folder``; :meth:`commit` moves its files into ``folder``."""

    def __init__(self, folder: Path, label: str) -> None:
        self.folder = folder
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{label}.", suffix=".partial", dir=folder))
        except OSError as error:
            raise CipsError(f"Cannot write into {folder}: {error.strerror or error}.") from None

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
        try:
            for name in ordered:
                destination = self.folder / name
                os.chmod(self.path / name, 0o666 & ~_current_umask())
                os.replace(self.path / name, destination)
                moved.append(destination)
        except OSError as error:
            raise CipsError(f"Cannot write {self.folder / name}: {error.strerror or error}.") from None
        return moved

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged(folder: Path, label: str) -> Iterator[StagedFolder]:
    """A :class:`StagedFolder` that is always removed on exit; commit it inside the block."""
    stage = StagedFolder(folder, label)
    try:
        yield stage
    finally:
        stage.discard()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
