"""What an ONNX file is, read from its bytes without the ``onnx`` package (``cips-deploy inspect``).

:func:`onnx_graph_facts` walks the protobuf wire format with :mod:`.onnx_proto` (the file
memory-mapped, weights never copied) and reports what Polygraphy's ``inspect model`` shows:
the IR version, producer, opsets, the graph's inputs and outputs (names, element types,
shapes with their dynamic axes by name), an operator histogram, and the initializers
(count, elements and bytes per element type: the parameters as stored, quantised ones
included) with any external data files. The torch-free install inspects every engine.

Field numbers, from onnx.proto (proto2), besides those :mod:`.onnx_proto` names:

- ``ModelProto``: ir_version 1, producer_name 2, producer_version 3, domain 4, model_version 5;
- ``OperatorSetIdProto``: domain 1, version 2;  ``GraphProto``: name 2;
- ``NodeProto``: op_type 4, attribute 5, domain 7;  ``AttributeProto``: g 6, graphs 11 (the
  bodies of ``If``, ``Loop`` and ``Scan``, whose nodes and weights count with the main graph's);
- ``ValueInfoProto``: name 1, type 2;
- ``TypeProto``: tensor_type 1;  ``TypeProto.Tensor``: elem_type 1, shape 2;
- ``TensorShapeProto``: dim 1;  ``Dimension``: dim_value 1, dim_param 2;
- ``TensorProto``: dims 1 (packed or not), data_type 2, name 8.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cips_deploy.contracts.limits import regular_file
from cips_deploy.errors import CipsError

from . import onnx_proto
from .onnx_proto import LENGTH, VARINT, fields

MAX_GRAPH_DEPTH = 64  # subgraphs within subgraphs; a hostile file could nest them until Python's stack ends

# TensorProto.DataType -> (name, bytes per element); 8 (string) has no fixed width.
ELEMENT_TYPES = {
    1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2), 6: ("int32", 4),
    7: ("int64", 8), 8: ("string", 0), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8), 12: ("uint32", 4),
    13: ("uint64", 8), 14: ("complex64", 8), 15: ("complex128", 16), 16: ("bfloat16", 2),
}


def element_type(code: int) -> str:
    return ELEMENT_TYPES.get(code, (f"type {code}", 0))[0]


def onnx_graph_facts(path: str | Path) -> dict[str, Any]:
    """The facts of the ONNX model at ``path`` as plain JSON-able values; one sentence if it is none."""
    path = regular_file(path, "ONNX model")
    with onnx_proto.open_model(path) as mapped:
        try:
            facts = _model_facts(mapped.data)
        except onnx_proto.ProtoError as error:
            raise CipsError(f"{path} is not an ONNX model ({error}).") from None
    # Every ModelProto states its IR version (the ONNX checker requires it): an empty file or
    # another protobuf parses without error but is no model.
    if facts["ir_version"] is None:
        raise CipsError(f"{path} is not an ONNX model: it states no IR version (an empty file or another format).")
    return facts


def _model_facts(buffer) -> dict[str, Any]:
    facts: dict[str, Any] = {"ir_version": None, "producer": "", "opsets": {}, "graph": ""}
    producer = version = ""
    inputs, outputs, ops = [], [], Counter()
    initializers = {"count": 0, "elements": 0, "bytes": 0, "by_type": {}, "external_files": []}
    for item in fields(buffer):
        if item.number == 1 and item.wire_type == VARINT:
            facts["ir_version"] = item.number_value
        elif item.number == 2:
            producer = _text(buffer, item)
        elif item.number == 3:
            version = _text(buffer, item)
        elif item.number == onnx_proto.MODEL_OPSET_IMPORT:
            domain, opset = _opset(buffer, item)
            facts["opsets"][domain or "ai.onnx"] = opset
        elif item.number == onnx_proto.MODEL_GRAPH:
            _graph(buffer, item, facts, inputs, outputs, ops, initializers)
    facts["producer"] = f"{producer} {version}".strip()
    facts["inputs"], facts["outputs"] = inputs, outputs
    facts["operators"] = dict(sorted(ops.items(), key=lambda pair: (-pair[1], pair[0])))
    facts["nodes"] = sum(ops.values())
    initializers["external_files"] = sorted(set(initializers["external_files"]))
    facts["initializers"] = initializers
    return facts


def _graph(buffer, item, facts, inputs, outputs, ops, initializers, depth: int = 0) -> None:
    """Walk one GraphProto: the main graph's name, inputs and outputs; every graph's nodes
    and initializers (a subgraph's, ``depth`` > 0, are counted into the same totals)."""
    if depth > MAX_GRAPH_DEPTH:
        raise onnx_proto.ProtoError(f"its subgraphs nest deeper than {MAX_GRAPH_DEPTH} levels")
    start, end = _payload(item)
    for entry in fields(buffer, start, end):
        if entry.number == 2 and not depth:
            facts["graph"] = _text(buffer, entry)
        elif entry.number == onnx_proto.GRAPH_INPUT and not depth:
            inputs.append(_value_info(buffer, entry))
        elif entry.number == onnx_proto.GRAPH_OUTPUT and not depth:
            outputs.append(_value_info(buffer, entry))
        elif entry.number == onnx_proto.GRAPH_NODE:
            op, subgraphs = _node(buffer, entry)
            ops[op] += 1
            for subgraph in subgraphs:
                _graph(buffer, subgraph, facts, inputs, outputs, ops, initializers, depth + 1)
        elif entry.number == onnx_proto.GRAPH_INITIALIZER:
            _initializer(buffer, entry, initializers)
    if not depth:
        # Initializers listed among the inputs (older exporters) are weights, not inputs.
        names = set(initializers.pop("_names", ()))
        inputs[:] = [value for value in inputs if value["name"] not in names]


def _node(buffer, item) -> tuple[str, list]:
    """(the node's operator, with its domain unless ONNX's own; the graphs its attributes hold)."""
    op_type = domain = ""
    subgraphs = []
    for entry in fields(buffer, *_payload(item)):
        if entry.number == 4:
            op_type = _text(buffer, entry)
        elif entry.number == 7:
            domain = _text(buffer, entry)
        elif entry.number == 5:  # AttributeProto: g (6) or graphs (11) hold a body
            subgraphs.extend(part for part in fields(buffer, *_payload(entry)) if part.number in (6, 11))
    return (f"{domain}.{op_type}" if domain and domain != "ai.onnx" else op_type), subgraphs


def _value_info(buffer, item) -> dict[str, Any]:
    name, dtype, shape = "", None, None
    for entry in fields(buffer, *_payload(item)):
        if entry.number == 1:
            name = _text(buffer, entry)
        elif entry.number == 2:
            for kind in fields(buffer, *_payload(entry)):
                if kind.number == 1:  # tensor_type
                    dtype, shape = _tensor_type(buffer, kind)
    return {"name": name, "dtype": element_type(dtype) if dtype is not None else "unknown", "shape": shape}


def _tensor_type(buffer, item) -> tuple[int | None, list | None]:
    dtype, shape = None, None
    for entry in fields(buffer, *_payload(item)):
        if entry.number == 1 and entry.wire_type == VARINT:
            dtype = entry.number_value
        elif entry.number == 2:
            shape = []
            for dim in fields(buffer, *_payload(entry)):
                if dim.number != 1:
                    continue
                size: int | str | None = None  # neither: an unnamed dynamic axis
                for part in fields(buffer, *_payload(dim)):
                    if part.number == 1 and part.wire_type == VARINT:
                        size = part.number_value
                    elif part.number == 2:
                        size = _text(buffer, part)
                shape.append(size)
    return dtype, shape


def _initializer(buffer, item, initializers: dict) -> None:
    dims, dtype, name, external = [], 1, "", None
    for entry in fields(buffer, *_payload(item)):
        if entry.number == 1:
            if entry.wire_type == VARINT:
                dims.append(entry.number_value)
            else:  # packed
                position, stop = _payload(entry)
                while position < stop:
                    value, position = onnx_proto.read_varint(buffer, position, stop)
                    dims.append(value)
        elif entry.number == 2 and entry.wire_type == VARINT:
            dtype = entry.number_value
        elif entry.number == 8:
            name = _text(buffer, entry)
        elif entry.number == onnx_proto.TENSOR_EXTERNAL_DATA:
            key, value = onnx_proto.string_entry(buffer, *_payload(entry))
            if key == "location":
                external = value
    count = 1
    for dim in dims:
        count *= dim
    type_name, width = ELEMENT_TYPES.get(dtype, (f"type {dtype}", 0))
    initializers["count"] += 1
    initializers["elements"] += count
    initializers["bytes"] += count * width
    initializers["by_type"][type_name] = initializers["by_type"].get(type_name, 0) + count
    initializers.setdefault("_names", []).append(name)
    if external:
        initializers["external_files"].append(external)


def _opset(buffer, item) -> tuple[str, int]:
    domain, version = "", 0
    for entry in fields(buffer, *_payload(item)):
        if entry.number == 1:
            domain = _text(buffer, entry)
        elif entry.number == 2 and entry.wire_type == VARINT:
            version = entry.number_value
    return domain, version


def _payload(item) -> tuple[int, int]:
    if item.wire_type != LENGTH:
        raise onnx_proto.ProtoError(f"field {item.number} is not a message")
    return item.value_start, item.end


def _text(buffer, item) -> str:
    start, end = _payload(item)
    try:
        return bytes(buffer[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise onnx_proto.ProtoError(f"field {item.number} is not UTF-8") from None
