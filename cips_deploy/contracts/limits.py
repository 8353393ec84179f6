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
  within available memory (:func:`check_in_memory`, the one check every renderer uses);
- a pickle (an official snapshot, the pickles in a PyTorch file): nested at most
  :data:`MAX_PICKLE_DEPTH` deep, at most :data:`MAX_PICKLE_EXPANDED` objects counting shared ones
  at every use, plain dict keys, no cycles (:func:`check_pickle`, from the opcodes, before unpickling).
"""

from __future__ import annotations

import io
import lzma
import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from numbers import Real
from typing import Any

from cips_deploy.errors import CipsError, first_line

# What opening or reading a zip (or one member) may raise besides a clean refusal: a damaged
# directory, a member too large for the reader, a corrupt deflate/lzma stream, an unsupported
# method, an encrypted member (RuntimeError), a truncated file. One list for every zip reader.
ZIP_READ_ERRORS = (
    OSError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError,
    NotImplementedError, RuntimeError, ValueError,
)

# Whole-number config fields: (smallest, largest). The largest values are far beyond any
# published model (paper1024: size 1024, widths <= 512, n_mlp 8) and far below what
# overflows an index or a product of two of them.
CONFIG_LIMITS = {
    "size": (1, 65536),
    "hidden": (1, 65536),
    "style_dim": (1, 65536),
    "n_mlp": (0, 64),
    "line_rank": (1, 4096),
    "biline_channels": (1, 65536),
    "num_fp16_res": (0, 64),
    "c_dim": (0, 65536),  # classes of a conditional model (ImageNet: 1000)
}
Z_DIM_LIMIT = 65536  # z_dim (a whole number or None: then z is as wide as w)
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
    working = topology.attribute("working_bytes_per_pixel", DEFAULT_WORKING_BYTES_PER_PIXEL, _working_bytes)
    check_memory(pixels * (3 + working), f"A {height:,} x {width:,} {topology.name} render", STREAMING)


def _working_bytes(value: Any) -> int:
    """A topology's ``working_bytes_per_pixel``: a whole number from 0 to 2**20 (anything else is
    the plugin's mistake, which :meth:`Registered.attribute` names)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1 << 20:
        raise ValueError(f"working_bytes_per_pixel must be a number from 0 to {1 << 20}, not {type(value).__name__}")
    return int(value)


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


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (an identical image's infinite PSNR, a NaN)
    replaced by None, through dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def strict_json(value: Any, indent: int | None = 2) -> str:
    """The writer's side of :func:`parse_json`: JSON that strict readers (jq, JavaScript's
    ``JSON.parse``) accept, so no ``Infinity`` or ``NaN`` tokens (they become null)."""
    import json

    return json.dumps(finite_or_null(value), indent=indent, allow_nan=False)


def check_zip_declared_size(path: Path, what: str = "checkpoint") -> None:
    """Refuse a zip whose members declare more content than memory holds or than a stored zip can.

    ``torch.load`` inflates every member in memory; the declared sizes in the central
    directory are read without inflating anything. A member may lie about its size, but
    then the zip reader stops at the declared size (and fails its CRC).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_READ_ERRORS as error:
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



# ------------------------------------------------------------------ pickles, before unpickling
#
# Official CREPS snapshots are plain pickles, and every PyTorch file holds pickles too. An
# allow-list of globals stops code from running, but not the structure itself: a 300 KB pickle
# can nest a dict key 300,000 deep (hashing it overflows the C stack), reuse one memo entry
# twice per level so that 309 bytes stand for 2**60 objects (hashing, walking or printing them
# never ends), or store a memo entry at index 2**31 (the C unpickler grows its memo table to
# it). :func:`check_pickle` reads the opcodes, builds nothing, and refuses such a pickle from the
# shape its result would have; only then is it unpickled. Real files are far inside the limits.

MAX_PICKLE_DEPTH = 100  # containers inside containers (the official CREPS fixtures: 32)
MAX_PICKLE_OBJECTS = 1 << 20  # containers and objects one pickle builds (the fixtures: 6,600 to 8,100)
MAX_PICKLE_ITEMS = 1 << 22  # everything one pickle pushes, numbers and strings included
# Objects counted at every use of a shared one (the memo's fan-out): what hashing, walking or
# printing the result visits. Real files share little (the fixtures: 19,000 to 23,000).
MAX_PICKLE_EXPANDED = 1 << 24
MAX_PICKLE_LINE = 1 << 16  # a text argument: a global's name, a protocol-0 number

# The official CREPS constructor's whole-number arguments (``Generator(**init_kwargs)`` in a
# snapshot): (smallest, largest), checked like CONFIG_LIMITS before anything is sized by them.
# The published models: z = w = 512, channel_base 65536, channel_max 1024, biline_channels 32,
# num_fp16_res 0, 8 mapping layers; the largest values here are far beyond them.
OFFICIAL_CREPS_LIMITS = {
    "z_dim": (1, 65536),
    "w_dim": (1, 65536),
    "c_dim": (0, 1 << 31),
    "img_resolution": (8, 65536),
    "img_channels": (1, 65536),
    "channel_base": (1, 1 << 31),
    "channel_max": (1, MAX_WIDTH),
    "biline_channels": (4, MAX_WIDTH),
    "num_fp16_res": (0, MAX_BLOCKS),
    "mapping_kwargs.num_layers": (1, 64),
}
MAX_PROVENANCE_VALUES = 1024  # values in the official init kwargs copied into provenance (a snapshot: about 12)


class PickleRefused(CipsError):
    """A pickle refused from its opcodes. ``reason`` is a predicate ("nests containers deeper
    than ..."), so that the caller names the subject; ``corrupt``: damaged rather than hostile."""

    def __init__(self, reason: str, corrupt: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.corrupt = reason, corrupt

    def sentence(self, what: Any, subject: str = "it") -> str:
        if self.corrupt:
            return f"{what} is corrupt or truncated ({subject} {self.reason})."
        return f"Refusing to load {what}: {subject} {self.reason}."


class _Node:
    """A container or object the pickle would build: how deep it nests and how many objects it
    stands for, shared ones counted at every use; ``sealed`` once it sits inside another."""

    __slots__ = ("size", "depth", "sealed")

    def __init__(self) -> None:
        self.size, self.depth, self.sealed = 1, 1, False


# Leaves count as one object each. Only _SCALAR (numbers, strings, bytes) may be a dict key or
# a set member: hashing one never recurses.
_SCALAR, _LEAF = "scalar", "leaf"
_STOP = object()


class _PickleScan:
    """One pass over one pickle's opcodes, keeping a stack of :class:`_Node` and leaves."""

    def __init__(self, handle: Any, persistent_ids: bool) -> None:
        self.handle, self.persistent_ids = handle, persistent_ids
        position = handle.tell()
        self.end = handle.seek(0, os.SEEK_END)
        handle.seek(position)
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.objects = self.items = 0

    def run(self) -> None:
        while True:
            code = self.handle.read(1)
            if not code:
                raise PickleRefused("ends early", corrupt=True)
            handler = _OPCODES.get(code[0])
            if handler is None:
                raise PickleRefused(f"holds the unknown pickle opcode {code!r}", corrupt=True)
            if handler(self) is _STOP:
                return

    # -- arguments
    def read(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise PickleRefused("ends early", corrupt=True)
        return data

    def number(self, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read(size), "little", signed=signed)

    def skip(self, count: int) -> None:
        """Step over a length-prefixed argument (a string, a blob), checked against what is left."""
        if count < 0 or count > self.end - self.handle.tell():
            raise PickleRefused(f"declares a {count:,}-byte pickle argument past the end of the data", corrupt=True)
        self.handle.seek(count, os.SEEK_CUR)

    def line(self) -> bytes:
        text = self.handle.readline(MAX_PICKLE_LINE)
        if not text.endswith(b"\n"):
            raise PickleRefused("has an unterminated or overlong text argument in its pickle", corrupt=True)
        return text

    def line_number(self) -> int:
        try:
            return int(self.line())
        except ValueError:
            raise PickleRefused("has a damaged memo index in its pickle", corrupt=True) from None

    # -- the stack
    def push(self, item: Any) -> None:
        self.items += 1
        if self.items > MAX_PICKLE_ITEMS:
            raise PickleRefused(f"pickles more than {MAX_PICKLE_ITEMS:,} items")
        self.stack.append(item)

    def pop(self, count: int = 1) -> list[Any]:
        """The top ``count`` items, bottom first (never below the last mark)."""
        if len(self.stack) - count < (self.marks[-1] if self.marks else 0):
            raise PickleRefused("pops an empty pickle stack", corrupt=True)
        items = self.stack[len(self.stack) - count:]
        del self.stack[len(self.stack) - count:]
        return items

    def top(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise PickleRefused("works on an empty pickle stack", corrupt=True)
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise PickleRefused("has no mark where its pickle needs one", corrupt=True)
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def new(self, children: list[Any], immutable: bool = False) -> _Node:
        """A container or object built from ``children`` (a tuple, a list, a call's result, ...)."""
        self.objects += 1
        if self.objects > MAX_PICKLE_OBJECTS:
            raise PickleRefused(f"pickles more than {MAX_PICKLE_OBJECTS:,} objects")
        node = _Node()
        for child in children:
            self.attach(node, child)
        node.sealed = immutable  # a tuple or frozenset never changes again
        return node

    def attach(self, target: Any, child: Any) -> None:
        """``child`` goes inside ``target``: bound the depth and the expanded count, refuse cycles.

        A pickler completes every object before nesting it, so only a cyclic or hand-made
        pickle changes an object that already sits inside another; refusing that keeps every
        count exact (nothing grows after it was added into a parent) and the result acyclic.
        """
        if not isinstance(target, _Node) or target.sealed or child is target:
            raise PickleRefused("pickles a cycle, or changes an object after nesting it")
        if isinstance(child, _Node):
            child.sealed = True
            target.size += child.size
            target.depth = max(target.depth, child.depth + 1)
        else:
            target.size += 1
        if target.depth > MAX_PICKLE_DEPTH:
            raise PickleRefused(f"nests containers deeper than {MAX_PICKLE_DEPTH} levels")
        if target.size > MAX_PICKLE_EXPANDED:
            raise PickleRefused(f"expands to more than {MAX_PICKLE_EXPANDED:,} objects (shared ones counted at every use)")

    @staticmethod
    def check_keys(keys: list[Any]) -> None:
        if any(key is not _SCALAR for key in keys):
            raise PickleRefused("pickles a dict key or set member that is not a plain number or string")

    # -- the memo
    def put(self, index: int) -> None:
        if index > len(self.memo):  # picklers number entries 0, 1, 2, ...; a gap grows the C memo table
            raise PickleRefused(f"stores pickle memo entry {index:,} out of order")
        self.memo[index] = self.top()

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise PickleRefused(f"refers to pickle memo entry {index:,}, which it never stored", corrupt=True)
        self.push(self.memo[index])

    # -- opcodes that build
    def build(self, items: list[Any], *, immutable: bool = False, keys: str = "") -> None:
        """TUPLE*, LIST, DICT, FROZENSET: a new container of ``items``."""
        if keys == "dict":
            if len(items) % 2:
                raise PickleRefused("builds a dict from an odd number of items", corrupt=True)
            self.check_keys(items[0::2])
        elif keys == "set":
            self.check_keys(items)
        self.push(self.new(items, immutable))

    def fill(self, items: list[Any], keys: str = "") -> None:
        """APPEND(S), SETITEM(S), ADDITEMS, BUILD: ``items`` go into the object below them."""
        if keys == "dict":
            if len(items) % 2:
                raise PickleRefused("sets dict items from an odd number of items", corrupt=True)
            self.check_keys(items[0::2])
        elif keys == "set":
            self.check_keys(items)
        target = self.top()
        for item in items:
            self.attach(target, item)

    def persistent(self, pid: list[Any]) -> None:
        if not self.persistent_ids:
            raise PickleRefused("holds persistent references, which this kind of file never does")
        self.push(self.new(pid))


def _pop(scan: _PickleScan) -> None:
    if scan.marks and scan.marks[-1] == len(scan.stack):
        scan.marks.pop()  # POP right after a MARK drops the mark, as the C unpickler does
    else:
        scan.pop()


def _proto(scan: _PickleScan) -> None:
    if scan.number(1) > 5:
        raise PickleRefused("uses a pickle protocol that does not exist", corrupt=True)


def _frame(scan: _PickleScan) -> None:
    length = scan.number(8)  # the frame's opcodes follow and are read one by one
    if length > scan.end - scan.handle.tell():
        raise PickleRefused(f"declares a {length:,}-byte pickle frame past the end of the data", corrupt=True)


def _refuse(reason: str) -> Any:
    def handler(scan: _PickleScan) -> None:
        raise PickleRefused(reason)

    return handler


def _leaf(read: Any, kind: str = _SCALAR) -> Any:
    """An opcode that pushes one number, string, blob or global after reading its argument."""

    def handler(scan: _PickleScan) -> None:
        read(scan)
        scan.push(kind)

    return handler


def _sized(size: int, signed: bool = False) -> Any:
    """Read a length of ``size`` bytes, then step over that many bytes."""
    return lambda scan: scan.skip(scan.number(size, signed))


_OPCODES: dict[int, Any] = {
    # numbers, strings and blobs
    **{ord(code): _leaf(lambda scan, n=n: scan.read(n)) for code, n in (("J", 4), ("K", 1), ("M", 2), ("G", 8))},
    **{ord(code): _leaf(lambda scan: scan.line()) for code in "ILSVF"},  # protocol-0 text
    **{ord(code): _leaf(lambda scan: None) for code in "N\x88\x89"},  # None, True, False
    **{ord(code): _leaf(_sized(1)) for code in "\x8aUC\x8c"},  # LONG1, SHORT_BINSTRING/BYTES/UNICODE
    **{ord(code): _leaf(_sized(4, signed=True)) for code in "\x8bT"},  # LONG4, BINSTRING
    **{ord(code): _leaf(_sized(4)) for code in "BX"},  # BINBYTES, BINUNICODE
    **{ord(code): _leaf(_sized(8)) for code in "\x8e\x8d\x96"},  # BINBYTES8, BINUNICODE8, BYTEARRAY8
    # globals and persistent references
    ord("c"): _leaf(lambda scan: (scan.line(), scan.line()), _LEAF),  # GLOBAL
    0x93: _leaf(lambda scan: scan.pop(2), _LEAF),  # STACK_GLOBAL
    ord("P"): lambda scan: (scan.line(), scan.persistent([])),  # PERSID
    ord("Q"): lambda scan: scan.persistent(scan.pop()),  # BINPERSID
    # containers
    ord(")"): lambda scan: scan.build([], immutable=True),
    ord("t"): lambda scan: scan.build(scan.pop_mark(), immutable=True),
    **{0x85 + n: lambda scan, n=n: scan.build(scan.pop(n + 1), immutable=True) for n in range(3)},  # TUPLE1-3
    ord("]"): lambda scan: scan.build([]),
    ord("l"): lambda scan: scan.build(scan.pop_mark()),
    ord("}"): lambda scan: scan.build([]),
    ord("d"): lambda scan: scan.build(scan.pop_mark(), keys="dict"),
    0x8F: lambda scan: scan.build([]),  # EMPTY_SET
    0x91: lambda scan: scan.build(scan.pop_mark(), immutable=True, keys="set"),  # FROZENSET
    ord("a"): lambda scan: scan.fill(scan.pop()),  # APPEND
    ord("e"): lambda scan: scan.fill(scan.pop_mark()),  # APPENDS
    ord("s"): lambda scan: scan.fill(scan.pop(2), keys="dict"),  # SETITEM
    ord("u"): lambda scan: scan.fill(scan.pop_mark(), keys="dict"),  # SETITEMS
    0x90: lambda scan: scan.fill(scan.pop_mark(), keys="set"),  # ADDITEMS
    ord("b"): lambda scan: scan.fill(scan.pop()),  # BUILD: the state goes into the object
    # calls: an object holding its callable and arguments
    ord("R"): lambda scan: scan.push(scan.new(scan.pop(2))),  # REDUCE
    0x81: lambda scan: scan.push(scan.new(scan.pop(2))),  # NEWOBJ
    0x92: lambda scan: scan.push(scan.new(scan.pop(3))),  # NEWOBJ_EX
    ord("o"): lambda scan: scan.push(scan.new(scan.pop_mark())),  # OBJ
    ord("i"): lambda scan: (scan.line(), scan.line(), scan.push(scan.new([_LEAF, *scan.pop_mark()]))),  # INST
    # the stack and the memo
    ord("("): lambda scan: scan.marks.append(len(scan.stack)),  # MARK
    ord("0"): _pop,
    ord("1"): lambda scan: scan.pop_mark(),  # POP_MARK
    ord("2"): lambda scan: scan.push(scan.top()),  # DUP
    ord("p"): lambda scan: scan.put(scan.line_number()),
    ord("q"): lambda scan: scan.put(scan.number(1)),
    ord("r"): lambda scan: scan.put(scan.number(4)),
    0x94: lambda scan: scan.put(len(scan.memo)),  # MEMOIZE
    ord("g"): lambda scan: scan.get(scan.line_number()),
    ord("h"): lambda scan: scan.get(scan.number(1)),
    ord("j"): lambda scan: scan.get(scan.number(4)),
    # framing and the rest
    0x80: _proto,
    0x95: _frame,
    ord("."): lambda scan: _STOP,
    **{code: _refuse("uses the copyreg extension registry, which real files never do") for code in (0x82, 0x83, 0x84)},
    **{code: _refuse("refers to out-of-band pickle buffers, which real files never do") for code in (0x97, 0x98)},
}


def check_pickle(handle: Any, *, persistent_ids: bool = False) -> None:
    """Read one pickle from the seekable binary ``handle`` (through its STOP), building nothing,
    and raise :class:`PickleRefused` if unpickling it could crash, hang or flood the machine:
    containers nested deeper than :data:`MAX_PICKLE_DEPTH`; more than :data:`MAX_PICKLE_OBJECTS`
    objects built, :data:`MAX_PICKLE_ITEMS` items pushed or :data:`MAX_PICKLE_EXPANDED` objects
    with shared ones counted at every use; a dict key or set member that is not a number or a
    string; a cycle; memo entries out of order; arguments past the end of the data.
    ``persistent_ids``: whether persistent references (PyTorch's storages) may appear.
    """
    _PickleScan(handle, persistent_ids).run()


# A legacy torch.save stream is five pickles (magic number, protocol, system info, the object,
# its storage keys) followed by the raw storages; torch.load unpickles all five.
LEGACY_TORCH_PICKLES = 5


def check_torch_stream(handle: Any, slack: int = 1 << 20) -> None:
    """The pickles ``torch.load`` would unpickle from ``handle`` (a PyTorch file, or one nested in
    a snapshot), checked by :func:`check_pickle` before it runs; a zip is first checked for a
    bomb from its declared sizes (at most :data:`MAX_ZIP_RATIO` times its size plus ``slack``,
    and within available memory), since ``torch.load`` inflates its members in memory.
    Raises :class:`PickleRefused`; ``handle`` is left at its start.
    """

    start = handle.tell()
    try:
        if handle.read(4) != b"PK\x03\x04":
            handle.seek(start)
            starts = []
            for _ in range(LEGACY_TORCH_PICKLES):
                starts.append(handle.tell())
                check_pickle(handle, persistent_ids=True)
            data_start = handle.tell()  # the raw storages follow the five pickles
            _check_legacy_storages(handle, starts[3], handle.seek(0, os.SEEK_END) - data_start)
            return
        handle.seek(start)
        try:
            with zipfile.ZipFile(handle) as archive:
                members = archive.infolist()
                _check_declared(sum(member.file_size for member in members), handle.seek(0, os.SEEK_END) - start, slack)
                for member in members:  # every pickle in it, duplicates too: a reader may pick either
                    if member.filename.endswith(".pkl"):
                        check_pickle(io.BytesIO(archive.read(member)), persistent_ids=True)
        except ZIP_READ_ERRORS as error:
            raise PickleRefused(f"is not a readable zip ({first_line(error) or type(error).__name__})", corrupt=True) from None
    finally:
        handle.seek(start)


# Bytes per element of the legacy storage classes a persistent id names; any other (UntypedStorage
# among them) counts one byte per element, the smallest, so that the check never refuses real data.
_STORAGE_ELEMENT_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "IntStorage": 4,
    "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1, "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
}


def _check_legacy_storages(handle: Any, object_start: int, remaining: int) -> None:
    """The storages a legacy stream's object pickle (at ``object_start``) claims fit in the
    ``remaining`` bytes after its pickles, where each is stored as an 8-byte count and its data.

    ``torch.load`` allocates every storage from the element count in its persistent id before it
    reads a byte of it: a few bytes claiming 2**40 elements would reserve terabytes first. The
    pickle is replayed with every global and persistent reference replaced by an inert stub
    (nothing is imported or called), after :func:`check_pickle` has bounded its structure.
    """
    import pickle

    claimed: dict[str, int] = {}

    class Stubs(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return type(str(name)[:64], (_Stub,), {})

        def persistent_load(self, pid: Any) -> Any:
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                storage_type, key, numel = pid[1], pid[2], pid[4]
                if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
                    raise PickleRefused("claims a tensor storage whose size is not a whole number", corrupt=True)
                size = numel * _STORAGE_ELEMENT_BYTES.get(getattr(storage_type, "__name__", ""), 1)
                claimed[str(key)] = max(claimed.get(str(key), 0), size)
            return _Stub()

    handle.seek(object_start)
    try:
        Stubs(handle).load()
    except PickleRefused:
        raise
    except Exception as error:  # noqa: BLE001 - stubs accept anything; what fails is damage
        raise PickleRefused(f"has a damaged pickle ({type(error).__name__})", corrupt=True) from None
    needed = sum(8 + size for size in claimed.values())
    if needed > remaining:
        raise PickleRefused(f"claims {_bytes(needed)} of tensor storage but holds {_bytes(remaining)} of data", corrupt=True)


def _bytes(count: int) -> str:
    return f"{count:,} bytes" if count < 2**20 else _gib(count)


class _Stub:
    """What a global or a persistent reference becomes while a legacy stream's sizes are read:
    accepts any construction and any state, and does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Stub":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


def _check_declared(declared: int, size: int, slack: int) -> None:
    if declared > MAX_ZIP_RATIO * size + slack:
        raise PickleRefused(f"declares {_gib(declared)} of content in a {_gib(size)} zip: a zip bomb")
    available = available_memory()
    if available is not None and declared > available:
        raise PickleRefused(f"declares {_gib(declared)} of content, more than the {_gib(available)} of memory available")


def check_parameter_count(count: int, what: str) -> None:
    """Refuse ``what`` (a phrase: "The model in x.pt") if ``count`` parameters are more than
    :data:`MAX_PARAMETERS` or their float32 copies more than the memory available now."""
    if count > MAX_PARAMETERS:
        raise CipsError(f"{what} would have {count:,} parameters, more than the limit of {MAX_PARAMETERS:,}.")
    check_memory(4 * count, f"{what} ({count:,} parameters)")


def claimed_elements(shape: Any) -> int:
    """Elements a tensor of ``shape`` claims, whatever its strides (exact: Python integers)."""
    count = 1
    for size in shape:
        count *= int(size)
    return count
