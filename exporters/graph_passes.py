"""Small rewrites of exported ONNX graphs that change no value.

- :func:`remove_redundant_casts`: a ``Cast`` whose input already has the target type is an
  identity. The tracer records one wherever the generator writes ``tensor.float()`` on a
  tensor that is float32 already (CIPSskip's colour sum, ``/Cast``); such a float-to-float
  Cast is harmless to onnxruntime but makes onnxconverter-common's float16 conversion emit
  an invalid graph (it re-types the Cast's output and leaves its ``to`` attribute at float).
- :func:`coordinate_and_style_nodes`: which nodes compute from the coordinates alone
  (Fourier features, the embedding reads) or from the style alone (affine maps, weight
  folding). Reduced-precision passes keep both in float32: the first because sines of
  large arguments and bilinear weights lose everything in 16 bits, the second because it
  is per-sample work (cheap) whose rounding would shift every pixel alike.
"""

from __future__ import annotations

import onnx


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types: dict[str, int] = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


def remove_redundant_casts(model: onnx.ModelProto) -> int:
    """Drop every ``Cast`` whose input already has the type it casts to; returns how many.

    Consumers are rewired to the Cast's input. A Cast that produces a graph output is kept
    unless its input can take the output's name (it is not a graph input or initializer).
    """
    types = _elem_types(model)
    graph = model.graph
    outputs = {value.name for value in graph.output}
    protected = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer}
    removed = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or len(node.input) != 1:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        source, target = node.input[0], node.output[0]
        if to is None or types.get(source) != to:
            continue
        if target in outputs:
            if source in protected or source in outputs:
                continue
            rename_from, rename_to = source, target  # the producer now writes the output itself
        else:
            rename_from, rename_to = target, source  # consumers read the input directly
        graph.node.remove(node)
        for other in graph.node:
            for index, name in enumerate(other.input):
                if name == rename_from:
                    other.input[index] = rename_to
            for index, name in enumerate(other.output):
                if name == rename_from:
                    other.output[index] = rename_to
        removed += 1
    if removed:
        kept = [value for value in graph.value_info if value.name not in _dangling(graph)]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return removed


def bypass_weight_identities(model: onnx.ModelProto) -> int:
    """Let every reader of an ``Identity`` of an initializer read the initializer itself, and
    drop the Identity; returns how many. The TorchScript exporter writes such an Identity
    for a weight used in two places (CREPS's shared layers), and a quantiser sees through
    none: behind one, a constant weight looks computed. Identities that produce a graph
    output stay."""
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}
    renamed = {node.output[0]: node.input[0] for node in graph.node
               if node.op_type == "Identity" and node.input[0] in weights and node.output[0] not in outputs}
    if not renamed:
        return 0
    for node in list(graph.node):
        if node.op_type == "Identity" and node.output[0] in renamed:
            graph.node.remove(node)
            continue
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
    kept = [value for value in graph.value_info if value.name not in renamed]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return len(renamed)


def split_shared_initializers(model: onnx.ModelProto, kept: set[str]) -> int:
    """Give the nodes outside ``kept`` their own copy of every initializer that nodes in
    ``kept`` read too; returns how many were copied. onnxconverter-common's fp16 conversion
    leaves an initializer float32 when a blocked node reads it, and then feeds it unconverted
    to a converted node (a float + float16 ``Add``: a graph onnxruntime refuses); CREPS's
    compose engine reads a bias both through an Identity of the style stage and directly."""
    graph = model.graph
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            if name in tensors:
                readers.setdefault(name, set()).add(node.name in kept)
    shared = {name for name, sides in readers.items() if sides == {True, False}}
    taken = {tensor.name for tensor in graph.initializer} | {name for node in graph.node for name in node.output}
    copies = {}
    for name in sorted(shared):
        copy_name, suffix = f"{name}.converted", 1
        while copy_name in taken:
            copy_name, suffix = f"{name}.converted{suffix}", suffix + 1
        copy = onnx.TensorProto()
        copy.CopyFrom(tensors[name])
        copy.name = copy_name
        graph.initializer.append(copy)
        copies[name] = copy_name
    for node in graph.node:
        if node.name not in kept:
            for index, name in enumerate(node.input):
                node.input[index] = copies.get(name, name)
    return len(copies)


def _dangling(graph: onnx.GraphProto) -> set[str]:
    produced = {name for node in graph.node for name in node.output}
    return {value.name for value in graph.value_info} - produced


def coordinate_and_style_nodes(
    model: onnx.ModelProto, coords: str | tuple[str, ...] = "coords", style: str = "w"
) -> tuple[set[str], set[str]]:
    """(names of nodes that depend on ``coords`` but not on ``style``, and the reverse).

    ``coords``: the coordinate input, or several (a line engine's ``v`` and ``u``), or none
    (a compose engine, whose other inputs are activations). Nodes that depend on both carry
    the synthesis activations [B, N, C]: the layers' products, biases, activations and the
    colour sums. Constant nodes depend on neither.
    """
    coordinate_token, activation_token = "\0coordinates", "\0activations"  # no ONNX names
    names = (coords,) if isinstance(coords, str) else tuple(coords)
    # Every other input carries activations (a compose engine's lines): what depends on it is
    # neither stage, even where the style joins it.
    depends: dict[str, set[str]] = {value.name: {activation_token} for value in model.graph.input}
    depends.update({name: {coordinate_token} for name in names})
    depends[style] = {style}
    coordinate, styled = set(), set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        seen: set[str] = set()
        for name in node.input:
            seen |= depends.get(name, set())
        for name in node.output:
            depends[name] = seen
        if seen == {coordinate_token}:
            coordinate.add(node.name)
        elif seen == {style}:
            styled.add(node.name)
    return coordinate, styled


def constant_nodes(model: onnx.ModelProto, inputs: tuple[str, ...] = ("coords", "w")) -> set[str]:
    """Names of the nodes that depend on none of the graph's ``inputs`` (Constants,
    Identities of initializers and whatever computes from them alone)."""
    variable = set(inputs)
    constant = set()
    for node in model.graph.node:
        if any(name in variable for name in node.input):
            variable.update(node.output)
        else:
            constant.add(node.name)
    return constant
