"""The few parts of an ONNX file the runtime reads, without the ``onnx`` package or protobuf.

An ONNX model is a protobuf ``ModelProto``. The torch-free runtime (numpy + onnxruntime)
needs two things from it besides what onnxruntime runs: the ``metadata_props`` (the engine's
description, :mod:`.metadata`) and the byte strings that the content hash covers
(:mod:`.integrity`). Both are read here straight from the wire format: a field is a varint
tag (``number << 3 | wire type``) followed by a varint, 8 or 4 bytes, or a length-prefixed
payload. The file is memory-mapped, so the graph (all the weights) is skipped without being
read when only the metadata is wanted.

Field numbers, from onnx.proto (proto2):

- ``ModelProto``: opset_import 8, graph 7, metadata_props 14;
- ``GraphProto``: node 1, initializer 5, input 11, output 12;
- ``TensorProto``: raw_data 9, external_data 13, data_location 14 (``EXTERNAL`` = 1);
- ``StringStringEntryProto``: key 1, value 2.

Embedded messages are hashed as the bytes in the file. That equals what
``SerializeToString(deterministic=True)`` gives for the parsed message as long as the file
was written by a canonical protobuf serializer (fields in number order, proto2 packing as
declared): every cips-deploy engine is written by ``onnx.save``, and a test compares both
ways of hashing on every kind of engine we export.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from cips_deploy.errors import CipsError
# The writer is shared with the core (measure.peaks writes product graphs), which may not
# import this layer: it lives below both. Its names stay importable from here.
from cips_deploy.runtime.protobuf import FIXED32, FIXED64, LENGTH, VARINT, encode_varint, length_field


# ModelProto
MODEL_OPSET_IMPORT, MODEL_GRAPH, MODEL_METADATA_PROPS = 8, 7, 14
# GraphProto
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
# TensorProto
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
EXTERNAL = 1


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass(frozen=True)
class Field:
    """One field of a message: its number, wire type, and where it lies in the buffer.

    ``start``: the tag's first byte; ``value_start``/``end``: the payload (for LENGTH) or
    the encoded value; ``number_value``: the decoded varint (VARINT fields only)."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int
    number_value: int = 0


def read_varint(buffer, position: int, end: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``position``; at most 10 bytes."""
    value, shift = 0, 0
    for offset in range(10):
        if position + offset >= end:
            raise ProtoError("truncated varint")
        byte = buffer[position + offset]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position + offset + 1
        shift += 7
    raise ProtoError("varint longer than 10 bytes")


def fields(buffer, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """The fields of the message in ``buffer[start:end]``, in wire order."""
    end = len(buffer) if end is None else end
    position = start
    while position < end:
        item = _field_at(buffer, position, end)
        yield item
        position = item.end


def _field_at(buffer, position: int, end: int) -> Field:
    tag, value_start = read_varint(buffer, position, end)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
        raise ProtoError("field number 0")
    if wire_type == VARINT:
        value, stop = read_varint(buffer, value_start, end)
        return Field(number, wire_type, position, value_start, stop, value)
    if wire_type in (FIXED64, FIXED32):
        stop = value_start + (8 if wire_type == FIXED64 else 4)
        if stop > end:
            raise ProtoError("truncated fixed-width field")
        return Field(number, wire_type, position, value_start, stop)
    if wire_type == LENGTH:
        length, payload = read_varint(buffer, value_start, end)
        if payload + length > end:
            raise ProtoError("length-delimited field runs past its message")
        return Field(number, wire_type, position, payload, payload + length)
    raise ProtoError(f"wire type {wire_type}")  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist


def metadata_entry(key: str, value: str) -> bytes:
    """One ``metadata_props`` entry of a ``ModelProto``, as bytes to append to a serialized model
    (a repeated field may follow the others anywhere: parsers merge the occurrences)."""
    entry = length_field(1, key.encode("utf-8")) + length_field(2, value.encode("utf-8"))
    return length_field(MODEL_METADATA_PROPS, entry)


def _embedded(item: Field, what: str) -> tuple[int, int]:
    if item.wire_type != LENGTH:
        raise ProtoError(f"{what} is not a message")
    return item.value_start, item.end


def _text(buffer, item: Field, what: str) -> str:
    start, end = _embedded(item, what)
    try:
        return bytes(buffer[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError(f"{what} is not UTF-8") from None


def string_entry(buffer, start: int, end: int) -> tuple[str, str]:
    """(key, value) of a ``StringStringEntryProto`` (the last of a repeated scalar wins, as in protobuf)."""
    key = value = ""
    for item in fields(buffer, start, end):
        if item.number == 1:
            key = _text(buffer, item, "a metadata key")
        elif item.number == 2:
            value = _text(buffer, item, "a metadata value")
    return key, value


class MappedFile:
    """A read-only view of a whole file (memory-mapped; empty files as ``b""``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            try:
                self.data.close()
            except BufferError:  # views still alive (an error's traceback holds them): the map closes when they go
                pass
        self._file.close()

    def __enter__(self) -> "MappedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metadata_props(buffer) -> dict[str, str]:
    """The ``metadata_props`` of a serialized ``ModelProto`` (later keys win, as a dict of them would)."""
    props: dict[str, str] = {}
    for item in fields(buffer):
        if item.number == MODEL_METADATA_PROPS:
            props.update([string_entry(buffer, *_embedded(item, "a metadata entry"))])
    return props


@dataclass
class ComputeParts:
    """The byte strings of a model that compute, in the content hash's order (:mod:`.integrity`).

    Each part is a list of pieces (buffer slices: nothing is copied) whose concatenation is
    the part. External data files are mapped too (``external``); :meth:`close` unmaps them."""

    opsets: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    external: dict = field(default_factory=dict)  # path -> MappedFile

    def ordered(self) -> Iterator[tuple[bytes, list]]:
        for kind, parts in ((b"opset", self.opsets), (b"input", self.inputs), (b"output", self.outputs),
                            (b"node", self.nodes), (b"init", self.initializers)):
            for part in parts:
                yield kind, part

    def close(self) -> None:
        for kinds in (self.opsets, self.inputs, self.outputs, self.nodes, self.initializers):
            kinds.clear()  # the views go first, then the maps they point into
        for mapped in self.external.values():
            mapped.close()
        self.external.clear()


def compute_parts(buffer, folder: Path) -> ComputeParts:
    """Every part the content hash covers, as slices of ``buffer``; an initializer whose weights
    live in an external data file is rebuilt as ``onnx.load`` leaves it (raw_data inline, no
    location), its weights a slice of that file (beside the model, in ``folder``), mapped."""
    view = memoryview(buffer)
    parts = ComputeParts()
    try:
        for item in fields(buffer):
            if item.number == MODEL_OPSET_IMPORT:
                parts.opsets.append([view[slice(*_embedded(item, "an opset import"))]])
            elif item.number == MODEL_GRAPH:  # repeated occurrences merge, as protobuf merges them
                _graph_parts(buffer, view, *_embedded(item, "the graph"), parts, folder)
    except BaseException:
        parts.close()
        raise
    return parts


def _graph_parts(buffer, view: memoryview, start: int, end: int, parts: ComputeParts, folder: Path) -> None:
    targets = {GRAPH_INPUT: parts.inputs, GRAPH_OUTPUT: parts.outputs, GRAPH_NODE: parts.nodes}
    for item in fields(buffer, start, end):
        if item.number in targets:
            targets[item.number].append([view[slice(*_embedded(item, "a graph entry"))]])
        elif item.number == GRAPH_INITIALIZER:
            parts.initializers.append(canonical_tensor(buffer, view, *_embedded(item, "an initializer"), folder, parts))


def canonical_tensor(buffer, view: memoryview, start: int, end: int, folder: Path, parts: ComputeParts) -> list:
    """The pieces of a ``TensorProto`` with its data inline and no data location: the slice
    itself for an ordinary tensor; for one stored externally, its fields in number order (as a
    serializer writes them) with raw_data taken from the external file."""
    tensor_fields = list(fields(buffer, start, end))
    if not any(item.number in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION) for item in tensor_fields):
        return [view[start:end]]
    location = next((item.number_value for item in tensor_fields if item.number == TENSOR_DATA_LOCATION), 0)
    kept = [item for item in tensor_fields if item.number not in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION)]
    pieces = [(item.number, [view[item.start:item.end]]) for item in kept]
    if location == EXTERNAL:
        entries = dict(string_entry(buffer, *_embedded(item, "an external data entry"))
                       for item in tensor_fields if item.number == TENSOR_EXTERNAL_DATA)
        data = external_slice(folder, entries, parts.external)
        pieces = [piece for piece in pieces if piece[0] != TENSOR_RAW_DATA]  # onnx.load replaces any raw_data
        header = encode_varint(TENSOR_RAW_DATA << 3 | LENGTH) + encode_varint(len(data))
        pieces.append((TENSOR_RAW_DATA, [header, data]))
    pieces.sort(key=lambda piece: piece[0])  # stable: repeated fields keep their order
    return [chunk for _, chunks in pieces for chunk in chunks]


def external_slice(folder: Path, entries: dict[str, str], mapped: dict) -> memoryview:
    """The bytes an external data entry names (``location``, ``offset``, ``length``), as a view
    of the mapped file (kept in ``mapped``), from a file inside ``folder`` only: a location may
    not climb out of the model's folder."""
    location = entries.get("location", "")
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts:
        raise ProtoError(f"external data location {location!r} is not a file beside the model")
    path = folder / relative
    try:
        offset = int(entries.get("offset", "0") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ProtoError("external data offset or length is not a number") from None
    if path not in mapped:
        try:
            mapped[path] = MappedFile(path)
        except OSError as error:
            raise ProtoError(f"cannot read its external data {location} ({error.strerror or error})") from None
    data = memoryview(mapped[path].data)
    stop = len(data) if length is None else offset + length
    if offset < 0 or stop > len(data):
        raise ProtoError(f"its external data {location} is shorter than the model says")
    return data[offset:stop]


def open_model(path: Path) -> MappedFile:
    """The file at ``path`` mapped for reading; one sentence if it cannot be opened."""
    try:
        return MappedFile(path)
    except OSError as error:
        raise CipsError(f"Cannot read {path}: {error.strerror or error}.") from None


def external_data_location(buffer) -> str | None:
    """The external data file the first externally stored initializer names, or None."""
    for item in fields(buffer):
        if item.number != MODEL_GRAPH:
            continue
        for entry in fields(buffer, *_embedded(item, "the graph")):
            if entry.number != GRAPH_INITIALIZER:
                continue
            for tensor_field in fields(buffer, *_embedded(entry, "an initializer")):
                if tensor_field.number == TENSOR_EXTERNAL_DATA:
                    key, value = string_entry(buffer, *_embedded(tensor_field, "an external data entry"))
                    if key == "location":
                        return value
    return None


def external_data_of(path: Path) -> str | None:
    """The external data file the ONNX model at ``path`` refers to; None when there is none
    or the file is not a readable ONNX model (then it refers to nothing)."""
    try:
        with open_model(Path(path)) as mapped:
            return external_data_location(mapped.data)
    except (CipsError, ProtoError):
        return None
