"""What an output format is: finished tiles of a render in, a file (or folder) on disk out.

The last stage of topology -> chunker -> backend -> output. A streamed render
(:mod:`cips_deploy.runtime.gigapixel`) cuts the image into *cells*, rectangles whose corners lie
on a grid of ``TILE`` pixels, renders each cell on its own and hands its pixels to a
:class:`Sink`, which stores them in a partial output (a folder beside the destination).
When every cell is in, :meth:`Sink.finish` completes the output (a TIFF's tiles are
already in place; a Deep Zoom pyramid builds its lower levels) and moves it into place.

An :class:`OutputFormat` is what plugins register (``register_outputs`` hook): a name,
the file extensions that select it, and how to create or reopen a sink. A format that
does not stream (``streaming = False``, PNG) is written from a finished in-memory image
by the render command itself.

Contracts, all checked by the tests of the built-in formats:

- ``write(top, left, pixels)`` receives every cell exactly once per render (cells that an
  interrupted render finished are never written again), in any order (workers finish
  out of order); pixels are uint8 ``[h, w, 3]`` with ``top`` and ``left`` multiples of
  ``TILE``. A cell that ``write`` returned from must survive a SIGKILL of the process.
- ``read(top, left, h, w)`` returns what ``write`` stored (to verify a resumed output), or
  None when it is missing or unreadable.
- the finished output depends only on the pixels, never on the order of writes or on an
  interruption, so a resumed render is bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from cips_deploy.errors import CipsError, did_you_mean

TILE = 256  # the tile grid every cell is aligned to (TIFF tiles, Deep Zoom base tiles)


class Sink(ABC):
    """Stores the cells of one render in its partial folder and completes the output."""

    @abstractmethod
    def write(self, top: int, left: int, pixels: np.ndarray) -> None:
        """Store a finished cell, uint8 ``[h, w, 3]`` at output row ``top``, column ``left``."""

    @abstractmethod
    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        """The stored cell, uint8 ``[height, width, 3]``, or None when missing or unreadable."""

    @abstractmethod
    def finish(self) -> list[Path]:
        """Complete the output, move it to its destination; return the paths written there."""

    def close(self) -> None:
        """Release open files (the partial folder stays for a later resume)."""


class OutputFormat(ABC):
    """A registered output format; plugins subclass it and register an instance."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()  # lower case, with the dot: (".tif", ".tiff")
    streaming: ClassVar[bool] = True

    def check(self, destination: Path, height: int, width: int) -> None:
        """Refuse, before rendering, an output this format cannot hold (a CipsError)."""

    @abstractmethod
    def create(self, partial: Path, destination: Path, height: int, width: int, description: str) -> Sink:
        """A sink for a new render, storing into the existing empty folder ``partial``.

        ``description`` is a one-line JSON text of the render's settings, for formats
        that can carry it (the TIFF ImageDescription tag)."""

    @abstractmethod
    def reopen(self, partial: Path, destination: Path, height: int, width: int, description: str) -> Sink:
        """The sink of an interrupted render in ``partial``; a CipsError naming the folder if its
        files are not what :meth:`create` made for these arguments."""

    def save(self, image: np.ndarray, path: Path) -> None:
        """Write a finished in-memory image uint8 ``[H, W, 3]`` to ``path`` (formats that do not
        stream implement this; the render command calls it on a temporary path, then renames)."""
        raise CipsError(f"The {self.name} format cannot write an in-memory image.")

    def outputs(self, destination: Path) -> list[Path]:
        """Every path the finished output occupies (the destination and its companions)."""
        return [destination]


class ArraySink(Sink):
    """Cells into one in-memory uint8 image ``[height, width, 3]``: for renders that fit in
    memory but still want workers (``render_cells``), and for tests."""

    def __init__(self, height: int, width: int) -> None:
        self.image = np.zeros((height, width, 3), dtype=np.uint8)

    def write(self, top: int, left: int, pixels: np.ndarray) -> None:
        self.image[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        return self.image[top : top + height, left : left + width]

    def finish(self) -> list[Path]:
        return []


def format_for(destination: Path, name: str | None, formats: dict[str, OutputFormat]) -> OutputFormat:
    """The format named ``name``, else the one whose extension ``destination`` has."""
    if name is not None:
        if name not in formats:
            raise CipsError(f"Unknown output format {name!r}{did_you_mean(name, formats)}; available: {', '.join(sorted(formats))}.")
        chosen = formats[name]
        suffix = destination.suffix.lower()
        if chosen.extensions and suffix not in chosen.extensions:
            raise CipsError(f"The {name} format writes {' or '.join(chosen.extensions)} files, not {destination.name}.")
        return chosen
    suffix = destination.suffix.lower()
    for output_format in formats.values():
        if suffix in output_format.extensions:
            return output_format
    known = ", ".join(sorted(extension for each in formats.values() for extension in each.extensions))
    raise CipsError(f"The output {destination} has no known extension; use one of {known} (or --format).")


def replace_atomically(source: Path, destination: Path) -> None:
    """Move the file or folder ``source`` over ``destination`` (same filesystem).

    A file is replaced in one rename. A folder cannot be renamed over a non-empty one, so an
    existing one is first renamed aside and removed after the new one is in place."""
    if source.is_dir() and destination.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".old", dir=destination.parent))
        os.replace(destination, aside / destination.name)
        os.replace(source, destination)
        remove_tree(aside)
    else:
        os.replace(source, destination)


def remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
