"""Content hashes of ONNX engines: what was exported is what runs.

The metadata of an engine (:mod:`.metadata`) says which checkpoint and weights it came
from, but metadata is a few strings anyone can copy onto another graph. So every engine
also records ``cips_deploy.content_sha256``: a SHA-256 over everything that computes (opset
imports, graph inputs and outputs, every node, every initializer's name, type, shape and
bytes), taken before the metadata is added and independent of where the weights are stored
(inline or in an external data file). A reader recomputes it; a graph swapped under copied
metadata, or weights overwritten in place, no longer matches.

This detects damage and substitution, not forgery: whoever can rewrite the file can also
rewrite the hash (just as they could rewrite the checkpoint). docs/security.md says so.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import regular_file

KEY = "cips_deploy.content_sha256"


def content_sha256(model) -> str:
    """SHA-256 of an in-memory ``onnx.ModelProto``'s computation (weights loaded, metadata ignored).

    Each part is serialised on its own (a whole model over 2 GB cannot be) and
    length-prefixed, so that no two different sequences of parts hash alike.
    """
    digest = hashlib.sha256()

    def part(kind: bytes, data: bytes) -> None:
        digest.update(kind + len(data).to_bytes(8, "little"))
        digest.update(data)

    for opset in model.opset_import:
        part(b"opset", opset.SerializeToString(deterministic=True))
    graph = model.graph
    for value in graph.input:
        part(b"input", value.SerializeToString(deterministic=True))
    for value in graph.output:
        part(b"output", value.SerializeToString(deterministic=True))
    for node in graph.node:
        part(b"node", node.SerializeToString(deterministic=True))
    for tensor in graph.initializer:
        part(b"init", tensor.SerializeToString(deterministic=True))
    return digest.hexdigest()


def stamp(model) -> None:
    """Record ``model``'s content hash in its metadata (call after the last change to the graph)."""
    for prop in list(model.metadata_props):
        if prop.key == KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=KEY, value=content_sha256(model))


def verify(path: str | Path, *, required: bool = True) -> None:
    """Recompute the content hash of the engine at ``path`` and compare it with the recorded one.

    ``required``: an engine without a recorded hash (exported by an earlier version) is
    refused; otherwise it is accepted as it is. Loads the whole model, external data included.
    """
    import onnx

    path = regular_file(path, "engine")
    try:
        model = onnx.load(str(path))
    except MemoryError:
        raise CipsError(f"{path} does not fit in this machine's memory.") from None
    except Exception as error:  # protobuf's DecodeError, a missing external data file, ...
        raise CipsError(f"{path} is not a readable ONNX model ({type(error).__name__}).") from None
    recorded = next((prop.value for prop in model.metadata_props if prop.key == KEY), None)
    if recorded is None:
        if required:
            raise CipsError(f"{path} carries no content hash (an earlier cips-deploy exported it); export it again.")
        return
    if content_sha256(model) != recorded:
        raise CipsError(
            f"{path} was modified after export: its graph or weights no longer match its content hash; export it again."
        )
