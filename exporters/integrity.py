"""Content hashes of ONNX engines: what was exported is what runs.

The metadata of an engine (:mod:`.metadata`) says which checkpoint and weights it came
from, but metadata is a few strings anyone can copy onto another graph. So every engine
also records ``cips_deploy.content_sha256``: a SHA-256 over everything that computes (opset
imports, graph inputs and outputs, every node, every initializer's name, type, shape and
bytes; never the metadata), independent of where the weights are stored (inline or in an
external data file). A reader recomputes it; a graph swapped under copied metadata, or
weights overwritten in place, no longer matches.

This detects damage and substitution, not forgery: whoever can rewrite the file can also
rewrite the hash (just as they could rewrite the checkpoint). docs/security.md says so.

One definition, on the file's bytes: :func:`file_content_sha256` reads the file without
``onnx`` or protobuf (through :mod:`.onnx_proto`), so the torch-free install verifies engines
too. The exporter stamps a written file with that same function (:func:`stamp_file`: the
hash of the bytes ``onnx.save`` actually wrote, its entry appended to the file), so stamping
and verifying agree whatever ``onnx`` writes. (An earlier exporter hashed its in-memory
model, which agrees with the file only while ``onnx`` writes exactly what that model
serialises to; external-data engines were reported refused by their own check.) An
initializer is hashed in its canonical form: weights inline, no data location; so an engine
hashes alike whether its weights are inline or in an external data file.
:func:`content_sha256` is the same definition on an in-memory ``onnx.ModelProto`` (for
graphs not yet written, and tests).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import regular_file

from . import onnx_proto

KEY = "cips_deploy.content_sha256"


def content_sha256(model) -> str:
    """SHA-256 of an in-memory ``onnx.ModelProto``'s computation (weights loaded, metadata ignored).

    Each part is serialised on its own (a whole model over 2 GB cannot be) and
    length-prefixed, so that no two different sequences of parts hash alike.
    """
    digest = hashlib.sha256()
    for opset in model.opset_import:
        _part(digest, b"opset", opset.SerializeToString(deterministic=True))
    graph = model.graph
    for value in graph.input:
        _part(digest, b"input", value.SerializeToString(deterministic=True))
    for value in graph.output:
        _part(digest, b"output", value.SerializeToString(deterministic=True))
    for node in graph.node:
        _part(digest, b"node", node.SerializeToString(deterministic=True))
    for tensor in graph.initializer:
        _part(digest, b"init", _canonical_tensor(tensor).SerializeToString(deterministic=True))
    return digest.hexdigest()


def file_content_sha256(path: Path) -> tuple[str | None, str]:
    """(recorded hash or None, recomputed hash) of the ONNX file at ``path``, read without
    ``onnx``: the same value :func:`content_sha256` gives for ``onnx.load(path)``.

    Raises :class:`.onnx_proto.ProtoError` for bytes that are not a well-formed model."""
    with onnx_proto.open_model(path) as mapped:
        data = mapped.data
        recorded = onnx_proto.metadata_props(data).get(KEY)
        parts = onnx_proto.compute_parts(data, path.parent)
        try:
            digest = hashlib.sha256()
            for kind, pieces in parts.ordered():
                _part(digest, kind, *pieces)
            pieces = None  # views into the maps: gone before they close
            return recorded, digest.hexdigest()
        finally:
            parts.close()


def _part(digest, kind: bytes, *pieces) -> None:
    """Each part (the concatenation of ``pieces``) length-prefixed, so that no two different
    sequences of parts hash alike."""
    digest.update(kind + sum(len(piece) for piece in pieces).to_bytes(8, "little"))
    for piece in pieces:
        digest.update(piece)


def _canonical_tensor(tensor):
    """``tensor`` with no data location: the form :mod:`.onnx_proto` rebuilds from a file
    (``onnx.load`` sets ``data_location = DEFAULT`` on tensors it read from external data)."""
    if not tensor.HasField("data_location") and not len(tensor.external_data):
        return tensor
    if tensor.data_location == tensor.EXTERNAL:
        raise ValueError(f"the weights of {tensor.name!r} are not loaded: hash a model loaded with its external data")
    canonical = type(tensor)()
    canonical.CopyFrom(tensor)
    canonical.ClearField("data_location")
    del canonical.external_data[:]
    return canonical


def stamp_file(path: str | Path) -> str:
    """Record the content hash of the ONNX file at ``path`` (external data beside it) in the
    file itself: computed by :func:`file_content_sha256`, the function :func:`verify` uses, and
    appended as one more ``metadata_props`` entry (metadata is outside the hash, so the
    recorded value stays true). Returns the hash. The file must carry none yet."""
    path = Path(path)
    recorded, computed = file_content_sha256(path)
    if recorded is not None:
        raise ValueError(f"{path} already carries a content hash")
    with open(path, "ab") as handle:
        handle.write(onnx_proto.metadata_entry(KEY, computed))
    return computed


def stamp(model) -> None:
    """Record ``model``'s content hash in its metadata (call after the last change to the graph).

    Prefer :func:`stamp_file` on the written file: it hashes what was written, not what
    the in-memory model would serialise to."""
    for prop in list(model.metadata_props):
        if prop.key == KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=KEY, value=content_sha256(model))


def verify(path: str | Path, *, required: bool = True) -> None:
    """Recompute the content hash of the engine at ``path`` and compare it with the recorded one.

    ``required``: an engine without a recorded hash (exported by an earlier version) is
    refused; otherwise it is accepted as it is. Reads the whole model (memory-mapped),
    external data included; needs neither ``onnx`` nor torch.
    """
    path = regular_file(path, "engine")
    try:
        recorded, computed = file_content_sha256(path)
    except MemoryError:
        raise CipsError(f"{path} does not fit in this machine's memory.") from None
    except onnx_proto.ProtoError as error:  # malformed bytes, a missing external data file, ...
        raise CipsError(f"{path} is not a readable ONNX model ({error}).") from None
    if recorded is None:
        if required:
            raise CipsError(f"{path} carries no content hash (an earlier cips-deploy exported it); export it again.")
        return
    if computed != recorded:
        raise CipsError(
            f"{path} was modified after export: its graph or weights no longer match its content hash; export it again."
        )


def recorded_hash(path: str | Path) -> str | None:
    """The content hash recorded in the engine at ``path`` (None for an engine without one)."""
    with onnx_proto.open_model(regular_file(path, "engine")) as mapped:
        return onnx_proto.metadata_props(mapped.data).get(KEY)


def external_data_files(path: str | Path) -> list[str]:
    """The external data files the engine at ``path`` keeps weights in (none for most engines)."""
    path = regular_file(path, "engine")
    with onnx_proto.open_model(path) as mapped:
        parts = onnx_proto.compute_parts(mapped.data, path.parent)
        try:
            return sorted(str(name) for name in parts.external)
        finally:
            parts.close()
