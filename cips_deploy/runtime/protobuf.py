"""The protobuf wire format, written by hand: the few bytes cips-deploy writes without the
``protobuf`` or ``onnx`` packages (so that the torch-free runtime can).

A message is a sequence of fields; a field is a varint tag (``number << 3 | wire type``)
followed by its value: a varint (``VARINT``: integers, enums, bools) or a varint length and
that many bytes (``LENGTH``: strings, bytes, embedded messages). Those two wire types are all
the writers here need; the readers of ONNX files are :mod:`cips_deploy.exporters.onnx_proto`.

Writers: :mod:`cips_deploy.measure.peaks` (one-node product graphs, written as ``ModelProto``
bytes) and :mod:`cips_deploy.exporters.onnx_proto` (metadata entries appended to a model,
the content hash's canonical tensors). Both sit above this layer; this module imports nothing.
"""

from __future__ import annotations

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # wire types (3 and 4, groups, are not used by ONNX)


def encode_varint(value: int) -> bytes:
    """The base-128 varint of a non-negative integer: 7 bits a byte, least significant first,
    the high bit set on every byte but the last."""
    if value < 0:  # protobuf writes negative int64 as ten bytes of two's complement: nothing here needs it
        raise ValueError(f"a varint here is non-negative, not {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    """The tag that opens field ``number`` of ``wire_type``."""
    if number < 1:
        raise ValueError(f"a field number is at least 1, not {number}")
    return encode_varint(number << 3 | wire_type)


def length_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload (bytes, a UTF-8 string, a message)."""
    return tag(number, LENGTH) + encode_varint(len(payload)) + bytes(payload)


def field(number: int, payload: bytes | str | int) -> bytes:
    """One field: a varint for an int (a bool is 0 or 1), a length-delimited value for bytes
    (an embedded message) or a str (written as UTF-8)."""
    if not isinstance(payload, (int, str, bytes, bytearray)):
        raise TypeError(f"a field holds an int, a str or bytes, not {type(payload).__name__}")
    if isinstance(payload, int):
        return tag(number, VARINT) + encode_varint(int(payload))
    return length_field(number, payload.encode("utf-8") if isinstance(payload, str) else payload)
