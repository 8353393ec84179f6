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
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from cips_deploy.runtime.atomic import _current_umask
from cips_deploy.errors import CipsError
from cips_deploy.contracts.hookspecs import hookimpl
from cips_deploy.contracts.sinks import TILE, OutputFormat, Sink, replace_atomically

from cips_deploy.media.viewers import deep_zoom_page

TILE_BYTES = TILE * TILE * 3


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
        self.fd = os.open(self.path, os.O_RDWR)

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
        os.chmod(self.path, 0o666 & ~_current_umask())
        replace_atomically(self.path, self.destination)
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
        fresh = partial / "header.tif.tmp"
        try:  # the header a new render would write; the partial file must start with it
            start = _empty_tiff(fresh, height, width, description)
            expected_size = fresh.stat().st_size
            with open(fresh, "rb") as handle:
                header = handle.read(start)
        finally:
            fresh.unlink(missing_ok=True)
        try:
            with open(path, "rb") as handle:
                found = handle.read(start)
            size = path.stat().st_size
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
    """A tile as PNG, written under a temporary name and renamed (a present tile is whole)."""
    temporary = path.with_name(path.name + ".tmp")
    Image.fromarray(pixels, mode="RGB").save(temporary, format="PNG", compress_level=3)
    os.replace(temporary, path)


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
        descriptor.write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="png" Overlap="0" '
            f'TileSize="{TILE}">\n  <Size Width="{self.width}" Height="{self.height}"/>\n</Image>\n',
            encoding="utf-8",
        )
        page = self.partial / f"{name}.html"
        page.write_text(deep_zoom_page(name, self.height, self.width, TILE, self.top_level), encoding="utf-8")
        written = []
        # The tile folder moves last: killed before that, the partial folder still holds every
        # tile and --resume completes it again.
        for source, target in (
            (page, self.destination.with_name(page.name)),
            (descriptor, self.destination),
            (self.files, self.destination.with_name(self.files.name)),
        ):
            replace_atomically(source, target)
            written.append(target)
        return written

    def _build_level(self, level: int) -> None:
        """Level ``level`` from level + 1: each tile from its (up to four) children."""
        rows, columns = (math.ceil(side / TILE) for side in level_size(self.height, self.width, level, self.top_level))
        (self.files / str(level)).mkdir(exist_ok=True)
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

    def create(self, partial: Path, destination: Path, height: int, width: int, description: str) -> DziSink:
        sink = DziSink(partial, destination, height, width)
        (sink.files / str(sink.top_level)).mkdir(parents=True)
        return sink

    def reopen(self, partial: Path, destination: Path, height: int, width: int, description: str) -> DziSink:
        sink = DziSink(partial, destination, height, width)
        base = sink.files / str(sink.top_level)
        if not base.is_dir():
            raise CipsError(f"The partial render {partial} has no {base.relative_to(partial)} folder of tiles; delete it to start again.")
        for leftover in base.glob("*.tmp"):  # a tile being written when the render was killed
            leftover.unlink()
        return sink

    def outputs(self, destination: Path) -> list[Path]:
        return [destination, destination.with_name(f"{destination.stem}_files"), destination.with_name(f"{destination.stem}.html")]


@hookimpl
def register_outputs(register):
    register(PngFormat())
    register(TiffFormat())
    register(DziFormat())
