"""The built-in output formats: ``png`` (in memory), ``tiff`` (tiled BigTIFF) and ``dzi``.

``tiff``: an uncompressed tiled BigTIFF (256 x 256 tiles, RGB, 8 bits), read by GDAL,
libvips, QuPath, tifffile, ImageJ. ``tifffile`` writes the header and tag tables of an empty
file once, whose tiles then lie back to back at known offsets: every finished cell is one
``pwrite`` of its row of tiles into place, in any order, from any point of an interrupted
render, and the file needs no final assembly (it is renamed into place at the end).

``dzi``: a Deep Zoom pyramid (``out.dzi``, ``out_files/<level>/<column>_<row>.png``, 256
pixel tiles without overlap) and ``out.html``, a self-contained viewer page. Base tiles are
written as cells finish; each lower level is built at the end from the level above, one
tile at a time from its (at most four) children, so memory stays at a few tiles whatever
the size. A 2 x 2 box filter with rounding, ``(a + b + c + d + 2) // 4`` (an odd edge
repeats its last row or column), makes every level exactly reproducible.

Both write only inside the render's partial folder, which the render has checked holds no
link: files are created with ``O_EXCL | O_NOFOLLOW`` (a name planted there is replaced,
never written through), and the finished output moves out through
:func:`cips_deploy.runtime.atomic.publish`, which never replaces anything without
``--force`` and, with it, a pyramid's folder or page only if cips-deploy wrote them
(:meth:`DziFormat.owns`: the folder's marker and tile names, the page's signature).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cips_deploy.runtime.atomic import (
    check_plain_tree, current_umask, exclusive_file, ownership_problem, publish, write_marker, write_new_file,
)
from cips_deploy.errors import CipsError
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.sinks import TILE, OutputFormat, Sink

from cips_deploy.media.viewers import deep_zoom_page

TILE_BYTES = TILE * TILE * 3
# What a finished pyramid folder holds besides its marker: level folders and their tiles.
PYRAMID_NAMES = re.compile(r"\d+(/\d+_\d+\.png)?")


class PngFormat(OutputFormat):
    name = "png"
    description = "PNG, assembled in memory (the default; up to cips_deploy.contracts.limits.MAX_IN_MEMORY_PIXELS)."
    extensions = (".png",)
    streaming = False

    def create(self, partial, destination, height, width, description):  # pragma: no cover - not streaming
        raise CipsError("The png format is written from an in-memory image; it does not stream.")

    reopen = create

    def save(self, image: np.ndarray, path: Path) -> None:
        Image.fromarray(image, mode="RGB").save(path, format="PNG")


# --------------------------------------------------------------------------- tiff


def _require_tifffile():
    try:
        import tifffile
    except ImportError:
        raise CipsError("Writing BigTIFF needs the tifffile package: pip install 'cips-deploy[gigapixel]'.") from None
    return tifffile


def _empty_tiff(path: Path, height: int, width: int, description: str) -> int:
    """Write the header of an empty tiled RGB BigTIFF (its data left as a sparse hole) and
    return where the tiles start; tile i (row-major) lies at ``start + i * TILE_BYTES``."""
    tifffile = _require_tifffile()
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            None, shape=(height, width, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
            metadata=None, description=description, software="cips-deploy",
        )
    tiles = math.ceil(height / TILE) * math.ceil(width / TILE)
    # tifffile writes the tables first and the tiles contiguously last (checked by the tests).
    return path.stat().st_size - tiles * TILE_BYTES


class TiffSink(Sink):
    """Cells into the tiles of ``partial/image.tif``; one cell is one row of tiles' worth."""

    def __init__(self, partial: Path, destination: Path, height: int, width: int, start: int) -> None:
        self.path = partial / "image.tif"
        self.destination = destination
        self.height, self.width, self.start = height, width, start
        self.columns = math.ceil(width / TILE)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # never through a planted link

    def _span(self, top: int, left: int, width: int) -> tuple[int, int]:
        """File offset and tile count of the tiles under a cell (consecutive in the file)."""
        first = (top // TILE) * self.columns + left // TILE
        return self.start + first * TILE_BYTES, math.ceil(width / TILE)

    def write(self, top: int, left: int, pixels: np.ndarray) -> None:
        height, width, _ = pixels.shape
        offset, count = self._span(top, left, width)
        # [h, w, 3] -> [TILE, count * TILE, 3] (zero padding at the edges) -> [count, TILE, TILE, 3]
        padded = np.zeros((TILE, count * TILE, 3), dtype=np.uint8)
        padded[:height, :width] = pixels
        tiles = padded.reshape(TILE, count, TILE, 3).transpose(1, 0, 2, 3)
        data = np.ascontiguousarray(tiles).tobytes()
        if os.pwrite(self.fd, data, offset) != len(data):
            raise CipsError(f"Cannot write {self.path}: the disk is full.")

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        offset, count = self._span(top, left, width)
        data = os.pread(self.fd, count * TILE_BYTES, offset)
        if len(data) != count * TILE_BYTES:
            return None
        tiles = np.frombuffer(data, dtype=np.uint8).reshape(count, TILE, TILE, 3)
        return tiles.transpose(1, 0, 2, 3).reshape(TILE, count * TILE, 3)[:height, :width]

    def finish(self) -> list[Path]:
        os.fsync(self.fd)
        self.close()
        os.chmod(self.path, 0o666 & ~current_umask())
        publish(self.path, self.destination, named=True)
        return [self.destination]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class TiffFormat(OutputFormat):
    name = "tiff"
    description = "Tiled BigTIFF (256 x 256 tiles, uncompressed), streamed tile row by tile row."
    extensions = (".tif", ".tiff")

    def check(self, destination: Path, height: int, width: int) -> None:
        _require_tifffile()
        needed = math.ceil(height / TILE) * math.ceil(width / TILE) * TILE_BYTES
        free = shutil.disk_usage(destination.parent).free
        if needed > free:
            raise CipsError(
                f"A {height:,} x {width:,} BigTIFF needs {needed / 2**30:.1f} GiB of disk, more than the "
                f"{free / 2**30:.1f} GiB free in {destination.parent}."
            )

    def create(self, partial: Path, destination: Path, height: int, width: int, description: str) -> TiffSink:
        start = _empty_tiff(partial / "image.tif", height, width, description)
        return TiffSink(partial, destination, height, width, start)

    def reopen(self, partial: Path, destination: Path, height: int, width: int, description: str) -> TiffSink:
        path = partial / "image.tif"
        handle, fresh = tempfile.mkstemp(prefix="header.", suffix=".tif.tmp", dir=partial)  # a new name: no link to follow
        os.close(handle)
        fresh = Path(fresh)
        try:  # the header a new render would write; the partial file must start with it
            start = _empty_tiff(fresh, height, width, description)
            expected_size = fresh.stat().st_size
            with open(fresh, "rb") as handle:
                header = handle.read(start)
        finally:
            fresh.unlink(missing_ok=True)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                found = handle.read(start)
                size = os.fstat(handle.fileno()).st_size
        except OSError:
            raise CipsError(f"The partial render {partial} has no readable image.tif; delete the folder to start again.") from None
        if found != header or size != expected_size:
            raise CipsError(f"The partial render {partial} is corrupt (its image.tif is not the file this render started); delete the folder to start again.")
        return TiffSink(partial, destination, height, width, start)


# --------------------------------------------------------------------------- dzi


def pyramid_levels(height: int, width: int) -> int:
    """The Deep Zoom level of the full image: levels halve (rounding up) down to 1 x 1 at 0."""
    return math.ceil(math.log2(max(height, width))) if max(height, width) > 1 else 0


def level_size(height: int, width: int, level: int, top_level: int) -> tuple[int, int]:
    scale = 1 << (top_level - level)
    return -(-height // scale), -(-width // scale)


def halve(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> [ceil(h / 2), ceil(w / 2), 3] by a rounded 2 x 2 mean; an odd last
    row or column is repeated (the image edge)."""
    if pixels.shape[0] % 2:
        pixels = np.concatenate([pixels, pixels[-1:]], axis=0)
    if pixels.shape[1] % 2:
        pixels = np.concatenate([pixels, pixels[:, -1:]], axis=1)
    wide = pixels.astype(np.uint16)
    total = wide[0::2, 0::2] + wide[1::2, 0::2] + wide[0::2, 1::2] + wide[1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path) -> None:
    """A tile as PNG, written under a temporary name and renamed (a present tile is whole).

    The temporary file is created exclusively: a leftover of a killed render (or anything
    planted under its name) is removed first, never written through."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    with exclusive_file(temporary) as handle:
        Image.fromarray(pixels, mode="RGB").save(handle, format="PNG", compress_level=3)
    os.replace(temporary, path)


def make_folder(path: Path) -> None:
    """``mkdir`` that accepts an existing folder but never a link to one (tiles would land elsewhere)."""
    try:
        path.mkdir()
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise CipsError(f"{path} is not a plain folder (cips-deploy never makes a link there); delete the partial render to start again.") from None


def load_png(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as image:
            if image.format != "PNG" or image.mode != "RGB":
                return None
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        return None


class DziSink(Sink):
    def __init__(self, partial: Path, destination: Path, height: int, width: int) -> None:
        self.partial, self.destination = partial, destination
        self.height, self.width = height, width
        self.top_level = pyramid_levels(height, width)
        self.files = partial / f"{destination.stem}_files"

    def _tile(self, level: int, column: int, row: int) -> Path:
        return self.files / str(level) / f"{column}_{row}.png"

    def write(self, top: int, left: int, pixels: np.ndarray) -> None:
        height, width, _ = pixels.shape
        for y in range(0, height, TILE):
            for x in range(0, width, TILE):
                save_png(
                    np.ascontiguousarray(pixels[y : y + TILE, x : x + TILE]),
                    self._tile(self.top_level, (left + x) // TILE, (top + y) // TILE),
                )

    def read(self, top: int, left: int, height: int, width: int) -> np.ndarray | None:
        cell = np.zeros((height, width, 3), dtype=np.uint8)
        for y in range(0, height, TILE):
            for x in range(0, width, TILE):
                tile = load_png(self._tile(self.top_level, (left + x) // TILE, (top + y) // TILE))
                want = (min(TILE, height - y), min(TILE, width - x), 3)
                if tile is None or tile.shape != want:
                    return None
                cell[y : y + TILE, x : x + TILE] = tile
        return cell

    def finish(self) -> list[Path]:
        for level in range(self.top_level - 1, -1, -1):
            self._build_level(level)
        name = self.destination.stem
        descriptor = self.partial / self.destination.name
        write_new_file(
            descriptor,
            (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="png" Overlap="0" '
                f'TileSize="{TILE}">\n  <Size Width="{self.width}" Height="{self.height}"/>\n</Image>\n'
            ).encode("utf-8"),
        )
        page = self.partial / f"{name}.html"
        write_new_file(page, deep_zoom_page(name, self.height, self.width, TILE, self.top_level).encode("utf-8"))
        write_marker(self.files)  # again: a partial of an earlier version has none
        # Nothing that leaves the partial folder may be a link (one planted during the render).
        check_plain_tree(self.files, f"delete {self.partial} to start again.")
        written = []
        # The tile folder moves last: killed before that, the partial folder still holds every
        # tile and --resume completes it again.
        for source, target, named in (
            (page, self.destination.with_name(page.name), False),
            (descriptor, self.destination, True),
            (self.files, self.destination.with_name(self.files.name), False),
        ):
            publish(source, target, named=named, owner=DziFormat.owns)
            written.append(target)
        return written

    def _build_level(self, level: int) -> None:
        """Level ``level`` from level + 1: each tile from its (up to four) children."""
        rows, columns = (math.ceil(side / TILE) for side in level_size(self.height, self.width, level, self.top_level))
        make_folder(self.files / str(level))
        for row in range(rows):
            for column in range(columns):
                children = [
                    [self._child(level + 1, 2 * column + dx, 2 * row + dy) for dx in (0, 1)] for dy in (0, 1)
                ]
                strips = [np.concatenate([tile for tile in pair if tile is not None], axis=1) for pair in children if pair[0] is not None]
                save_png(halve(np.concatenate(strips, axis=0)), self._tile(level, column, row))

    def _child(self, level: int, column: int, row: int) -> np.ndarray | None:
        path = self._tile(level, column, row)
        if not path.exists():
            return None
        tile = load_png(path)
        if tile is None:
            raise CipsError(f"The Deep Zoom tile {path} is unreadable; delete {self.partial} to start again.")
        return tile


class DziFormat(OutputFormat):
    name = "dzi"
    description = "Deep Zoom pyramid of 256-pixel PNG tiles, with a self-contained HTML viewer beside it."
    extensions = (".dzi",)

    def check(self, destination: Path, height: int, width: int) -> None:
        """Refuse a pyramid larger than the free disk, counted uncompressed (PNG tiles are
        usually smaller: this is the most it can take), one file-system block per tile more."""
        top = pyramid_levels(height, width)
        block = _block_size(destination.parent)
        needed = 0
        for level in range(top + 1):
            rows, columns = level_size(height, width, level, top)
            needed += rows * columns * 3 + math.ceil(rows / TILE) * math.ceil(columns / TILE) * block
        free = shutil.disk_usage(destination.parent).free
        if needed > free:
            raise CipsError(
                f"A {height:,} x {width:,} Deep Zoom pyramid may need {needed / 2**30:.1f} GiB of disk (its tiles "
                f"uncompressed), more than the {free / 2**30:.1f} GiB free in {destination.parent}."
            )

    def create(self, partial: Path, destination: Path, height: int, width: int, description: str) -> DziSink:
        sink = DziSink(partial, destination, height, width)
        (sink.files / str(sink.top_level)).mkdir(parents=True)
        write_marker(sink.files)  # what lets a later --force know cips-deploy wrote this folder
        return sink

    def reopen(self, partial: Path, destination: Path, height: int, width: int, description: str) -> DziSink:
        sink = DziSink(partial, destination, height, width)
        base = sink.files / str(sink.top_level)
        if base.is_symlink() or not base.is_dir():
            raise CipsError(f"The partial render {partial} has no {base.relative_to(partial)} folder of tiles; delete it to start again.")
        for leftover in base.glob("*.tmp"):  # a tile being written when the render was killed
            leftover.unlink()
        return sink

    def outputs(self, destination: Path) -> list[Path]:
        return [destination, destination.with_name(f"{destination.stem}_files"), destination.with_name(f"{destination.stem}.html")]

    @staticmethod
    def owns(path: Path) -> str | None:
        """None when cips-deploy wrote ``path`` (a companion of a pyramid), else what is foreign:
        the tile folder needs its marker and nothing but level folders of tiles, the page its signature."""
        if path.name.endswith("_files"):
            return ownership_problem(path, PYRAMID_NAMES)
        return ownership_problem(path)


def _block_size(folder: Path) -> int:
    try:
        return os.statvfs(folder).f_frsize or 4096
    except OSError:
        return 4096


@hookimpl
def register_outputs(register):
    register(PngFormat())
    register(TiffFormat())
    register(DziFormat())
