"""Limits on what input may ask of the machine, checked before anything is allocated.

A small hostile file must not be able to exhaust the machine: a config that asks for 10**8
mapping layers, a million blocks, a 2**40-pixel grid; a safetensors header that declares a
terabyte of tensors; a zip that inflates a few megabytes into gigabytes; a FIFO or a device
given as a file, which would block the reader forever. Everything here turns such input
into one :class:`~cips_deploy.errors.CipsError` sentence, cheaply: from declared sizes and
configs, never by trying.

The limits (docs/security.md lists them with the reasons):

- config fields: :data:`CONFIG_LIMITS` (whole numbers in a range), at most
  :data:`MAX_BLOCKS` blocks;
- a generator's parameters: at most :data:`MAX_PARAMETERS`, and their float32 bytes within
  the memory this machine has available;
- metadata JSON: at most :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH` levels;
- a safetensors header: at most :data:`MAX_HEADER_BYTES`; a zip's declared content: within
  available memory and at most :data:`MAX_ZIP_RATIO` times the archive's size;
- an image rendered in memory: at most :data:`MAX_IN_MEMORY_PIXELS`, its working memory
  within available memory (:func:`check_in_memory`, the one check every renderer uses).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from cips_deploy.errors import CipsError

# Whole-number config fields: (smallest, largest). The largest values are far beyond any
# published model (paper1024: size 1024, widths <= 512, n_mlp 8) and far below what
# overflows an index or a product of two of them.
CONFIG_LIMITS = {
    "size": (1, 65536),
    "hidden": (1, 65536),
    "style_dim": (1, 65536),
    "n_mlp": (0, 64),
    "line_rank": (1, 4096),
}
MAX_WIDTH = 65536  # one block's width
MAX_BLOCKS = 64  # log2 of the largest size, with room for deep custom models
MAX_PARAMETERS = 2**32  # 16 GiB of float32 weights; paper1024 has about 6e8
MAX_JSON_BYTES = 1 << 20  # a config or provenance string in a checkpoint's metadata
MAX_JSON_DEPTH = 32  # nesting of that JSON; configs are two levels deep
MAX_HEADER_BYTES = 16 << 20  # a safetensors header (the library's own cap is 100 MB)
MAX_ZIP_RATIO = 16  # torch.save stores members uncompressed: a ratio above this is a bomb
# The largest image assembled in memory (e.g. 16384 x 16384 or 32768 x 8192: 768 MiB of
# uint8 pixels, about twice that while the PNG is encoded); larger ones stream to disk.
MAX_IN_MEMORY_PIXELS = 1 << 28
# Topology.working_bytes_per_pixel's default (measured on the flat topology).
DEFAULT_WORKING_BYTES_PER_PIXEL = 24
# An assembled image's extra bytes a pixel while Pillow encodes it (its 4-byte RGBX copy, and slack).
ENCODING_BYTES_PER_PIXEL = 5
STREAMING = "render it to a streaming format instead, a tiled BigTIFF (-o out.tif) or a Deep Zoom pyramid (-o out.dzi)"


def available_memory() -> int | None:
    """Bytes this machine can give a new allocation now (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, advice: str = "") -> None:
    """Refuse ``what`` (a phrase: "A 9000 x 9000 foveated render") if it needs more memory than is
    available; ``advice`` (what to do instead) ends the sentence."""
    available = available_memory()
    if available is not None and needed > available:
        raise CipsError(
            f"{what} needs about {_gib(needed)} of memory, more than the {_gib(available)} this machine has "
            f"available{'; ' + advice if advice else ''}."
        )


def check_in_memory(height: int, width: int, topology: Any = None) -> None:
    """An image rendered in memory fits: at most :data:`MAX_IN_MEMORY_PIXELS`, and its working
    memory within the memory available now: the uint8 image plus ``topology``'s measured
    ``working_bytes_per_pixel`` (a :class:`~cips_deploy.runtime.plugin_manager.Registered` topology,
    whose layout is image-sized), or with ``topology=None`` an image assembled from parts (a
    seed grid, streamed cells) plus Pillow's copy while it is encoded. Larger images stream
    to disk cell by cell (:mod:`cips_deploy.runtime.gigapixel`), which the sentence says.
    """
    pixels = int(height) * int(width)
    if pixels > MAX_IN_MEMORY_PIXELS:
        raise CipsError(
            f"A {height:,} x {width:,} image ({pixels / 1e6:,.0f} megapixels) is over the in-memory limit of "
            f"{MAX_IN_MEMORY_PIXELS / 1e6:,.0f} megapixels; {STREAMING}."
        )
    if topology is None:
        check_memory(pixels * (3 + ENCODING_BYTES_PER_PIXEL), f"A {height:,} x {width:,} image", STREAMING)
        return
    working = int(getattr(topology.item, "working_bytes_per_pixel", DEFAULT_WORKING_BYTES_PER_PIXEL))
    check_memory(pixels * (3 + working), f"A {height:,} x {width:,} {topology.name} render", STREAMING)


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is an existing regular file (following links); else one sentence.

    Opening a FIFO blocks until a writer appears and a device can be endless, so both are
    refused from ``stat`` alone, before any ``open``.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CipsError(f"No such {what}: {path}.") from None
    except OSError as error:
        raise CipsError(f"Cannot read {what} {path}: {error.strerror or error}.") from None
    if stat.S_ISDIR(mode):
        raise CipsError(f"{path} is a directory, not a {what}.")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise CipsError(f"{path} is {kind}, not a regular {what}.")
    return path


def json_depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the brackets of JSON ``text`` nest at most ``limit`` deep (strings skipped).

    Checked before ``json.loads``, whose recursion a deeply nested document exhausts.
    """
    depth = 0
    in_string = escaped = False
    for character in text:
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            if depth > limit:
                return False
        elif character in "]}":
            depth -= 1
    return True


def parse_json(text: str, what: str, max_bytes: int = MAX_JSON_BYTES):
    """``json.loads`` of untrusted metadata with size and depth caps; one sentence on any problem."""
    import json

    if not isinstance(text, str) or len(text) > max_bytes:
        raise CipsError(f"{what} is not a JSON text of at most {max_bytes // 1024:,} KiB.")
    if not json_depth_ok(text):
        raise CipsError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise CipsError(f"{what} is not valid JSON.") from None


def check_zip_declared_size(path: Path, what: str = "checkpoint") -> None:
    """Refuse a zip whose members declare more content than memory holds or than a stored zip can.

    ``torch.load`` inflates every member in memory; the declared sizes in the central
    directory are read without inflating anything. A member may lie about its size, but
    then the zip reader stops at the declared size (and fails its CRC).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise CipsError(f"{path} is corrupt or truncated (not a readable zip: {error}).") from None
    declared = sum(member.file_size for member in members)
    size = path.stat().st_size
    if declared > MAX_ZIP_RATIO * size + (1 << 20):
        raise CipsError(
            f"{path} declares {_gib(declared)} of content in a {_gib(size)} {what}: a zip bomb, refused."
        )
    check_memory(declared, f"Reading {path}")


def _gib(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:,.1f} GiB"
    return f"{count / 2**20:,.1f} MiB"
