"""Files that say what they are: provenance text chunks and panorama (GPano) XMP in PNGs.

Every PNG that cips-deploy writes carries, as PNG ``tEXt`` chunks (keys ``cips-deploy.*``),
the model and its SHA-256, the seed(s), truncation, topology and its parameter values,
backend and package version, so a picture found on disk months later can be re-rendered
exactly. ``Software`` (a standard PNG keyword) names the package. A picture rendered from
an ONNX engine names the engine and its SHA-256, and adds the checkpoint and weights the
engine's metadata says it was exported from (``engine_*`` keys).

A cylinder panorama additionally carries Google's photo-sphere XMP tags (namespace
``GPano``) in an ``iTXt`` chunk with key ``XML:com.adobe.xmp``, which photo viewers
(Facebook, Photo Sphere Viewer, exiftool-aware tools) read to show a 360-degree pan:

    ProjectionType                cylindrical (height on the image is height on the cylinder)
    UsePanoramaViewer             True
    FullPanoWidthPixels           W (the strip covers the full 360 degrees)
    FullPanoHeightPixels          W / 2 (the 2:1 full-sphere convention viewers insist on)
    CroppedAreaImageWidthPixels   W
    CroppedAreaImageHeightPixels  H
    CroppedAreaLeftPixels         0
    CroppedAreaTopPixels          (W / 2 - H) / 2 (the horizon in the middle row; may be negative)
    PoseHeadingDegrees            compass heading of the image centre (the topology's heading)

Read back with :func:`read_png_metadata`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, PngImagePlugin

from cips_deploy._version import __version__
from cips_deploy.errors import CipsError
from cips_deploy.runtime.atomic import atomic_path
from cips_deploy.runtime.hashing import file_sha256

PREFIX = "cips-deploy."
XMP_KEY = "XML:com.adobe.xmp"
GPANO_NS = "http://ns.google.com/photos/1.0/panorama/"
ENGINE_SUFFIXES = (".onnx",)  # model files whose own metadata names the checkpoint they came from


# --------------------------------------------------------------------------- what a model is


def model_identity(model: Any) -> dict[str, str]:
    """``{"model": name, "model_sha256": hex}`` of a model file, an in-memory generator or a backend.

    A file is hashed as stored (the same hash ``sha256sum`` prints); an ONNX engine adds
    what its metadata says it was exported from (:func:`engine_identity`). A generator in
    memory (anything with a ``config`` and a ``state_dict()``, duck-typed so that this module
    needs no model family) is hashed by its config and tensors (name, dtype, shape and bytes,
    in name order), so the same weights give the same hash however they were made; a backend
    that wraps one (``.generator``) is that generator.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        identity = {"model": path.name, "model_sha256": file_sha256(path)}
        if path.suffix.lower() in ENGINE_SUFFIXES:
            identity.update(engine_identity(path))
        return identity
    generator = model if _is_generator(model) else getattr(model, "generator", None)
    if not _is_generator(generator):
        return {"model": type(model).__name__, "model_sha256": "unknown"}
    return {"model": generator_name(generator), "model_sha256": generator_sha256(generator)}


def engine_identity(path: Path) -> dict[str, str]:
    """What an engine's metadata says about its source: ``engine_source`` (the checkpoint's
    file name), ``engine_source_sha256``, ``engine_weights_sha256`` (the weights, whatever file
    held them) and ``engine_version`` (the cips-deploy that exported it); empty values left out.

    The engine's own hash is already the model's; these tie it to the checkpoint it came from.
    A file without cips-deploy metadata (a third-party backend's engine) has none of them.
    """
    from cips_deploy.exporters.metadata import read_onnx_metadata  # only for engines: the exporters' module

    try:
        metadata = read_onnx_metadata(path)
    except CipsError:  # not a cips-deploy engine: its file hash alone identifies it
        return {}
    facts = {
        "engine_source": metadata.source_file,
        "engine_source_sha256": metadata.source_sha256,
        "engine_weights_sha256": metadata.weights_sha256,
        "engine_version": metadata.package_version,
    }
    return {key: str(value) for key, value in facts.items() if value}


def _is_generator(model: Any) -> bool:
    """A generator as this module needs one: a ``config`` with ``to_dict()`` and a ``state_dict()``."""
    config = getattr(model, "config", None)
    return callable(getattr(config, "to_dict", None)) and callable(getattr(model, "state_dict", None))


def generator_name(generator: Any) -> str:
    """How provenance names an in-memory generator: its source file, or how it was made."""
    origin = getattr(generator, "provenance", None) or {}
    arch = generator.config.arch
    if origin.get("source") == "random initialisation":
        return f"random {origin.get('preset', '?')} {arch} (model seed {origin.get('seed', '?')})"
    return str(origin.get("source") or origin.get("file") or f"in-memory {arch} generator")


def generator_sha256(generator: Any) -> str:
    """SHA-256 of a generator's config (sorted JSON) and its tensors, in name order.

    Each tensor contributes ``name|dtype|shape`` and its raw bytes. The state dict holds
    torch tensors, so torch is imported here, where it is already loaded by the generator.
    """
    import torch

    digest = hashlib.sha256(json.dumps(generator.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(generator.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}".encode())
        # Raw bytes through a uint8 view: bfloat16 and other dtypes numpy lacks hash too.
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def render_provenance(
    identity: dict[str, str],
    *,
    seed: int | list[int] | str,
    truncation: float,
    topology: str,
    parameters: dict[str, Any],
    height: int,
    width: int,
    backend: str = "torch",
    **extra: Any,
) -> dict[str, str]:
    """The text chunks of one render: every value a string, keys without the prefix."""
    facts: dict[str, Any] = {
        **identity,
        "seed": seed if isinstance(seed, (int, str)) else ",".join(str(s) for s in seed),
        "truncation": float(truncation),
        "topology": topology,
        "parameters": json.dumps(_plain(parameters), sort_keys=True),
        "size": f"{height}x{width}",
        "backend": backend,
        "version": __version__,
    }
    facts.update({key: value for key, value in extra.items() if value is not None})
    return {key: value if isinstance(value, str) else json.dumps(_plain(value)) for key, value in facts.items()}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, 0-d tensors (``ndim == 0`` and ``item()``) and tuples as JSON-ready Python values."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic) or (getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None))):
        return value.item()
    return value


# --------------------------------------------------------------------------- panoramas


def gpano_tags(height: int, width: int, heading_degrees: float = 0.0) -> dict[str, Any]:
    """The GPano tags of a full 360-degree cylindrical strip of ``height x width`` pixels."""
    full_height = width // 2
    return {
        "ProjectionType": "cylindrical",
        "UsePanoramaViewer": "True",
        "FullPanoWidthPixels": width,
        "FullPanoHeightPixels": full_height,
        "CroppedAreaImageWidthPixels": width,
        "CroppedAreaImageHeightPixels": height,
        "CroppedAreaLeftPixels": 0,
        "CroppedAreaTopPixels": (full_height - height) // 2,
        "PoseHeadingDegrees": round(float(heading_degrees) % 360.0, 6),
        "StitchingSoftware": f"cips-deploy {__version__}",
    }


def xmp_packet(tags: dict[str, Any]) -> str:
    """An XMP packet with ``tags`` as GPano properties (elements, as exiftool writes them)."""
    body = "".join(f"   <GPano:{name}>{escape(str(value))}</GPano:{name}>\n" for name, value in tags.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        f'  <rdf:Description rdf:about="" xmlns:GPano="{GPANO_NS}">\n'
        f"{body}"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


# --------------------------------------------------------------------------- writing and reading


def png_info(provenance: dict[str, str] | None, xmp: str | None = None) -> PngImagePlugin.PngInfo:
    """PNG chunks: ``Software``, one ``tEXt`` per provenance key, the XMP ``iTXt`` if given."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"cips-deploy {__version__}")
    for key, value in (provenance or {}).items():
        # tEXt is Latin-1; a model name from a user's file system may not be, so use iTXt then.
        try:
            value.encode("latin-1")
            info.add_text(PREFIX + key, value)
        except UnicodeEncodeError:
            info.add_itxt(PREFIX + key, value)
    if xmp is not None:
        info.add_itxt(XMP_KEY, xmp)
    return info


def save_png(
    image: np.ndarray, path: str | Path, provenance: dict[str, str] | None, *, xmp: str | None = None, overwrite: bool = True
) -> None:
    """Write uint8 ``[H, W, 3]`` as a PNG with its provenance, atomically (an existing file only with ``overwrite``)."""
    with atomic_path(path, overwrite=overwrite) as temporary:
        Image.fromarray(image, mode="RGB").save(temporary, format="PNG", pnginfo=png_info(provenance, xmp))


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """``{"provenance": {key: text}, "software": str, "gpano": {tag: text}}`` of a PNG."""
    try:
        with Image.open(path) as image:
            image.load()  # text chunks after the image data are read only now
            text = dict(getattr(image, "text", {}) or {})
    except (OSError, SyntaxError) as error:
        raise CipsError(f"Cannot read {path} as a PNG ({error}).") from None
    return {
        "software": text.get("Software"),
        "provenance": {key[len(PREFIX):]: value for key, value in text.items() if key.startswith(PREFIX)},
        "gpano": parse_gpano(text.get(XMP_KEY, "")),
    }


def parse_gpano(xmp: str) -> dict[str, str]:
    """The GPano properties of an XMP packet (elements or attributes), by local name."""
    import xml.etree.ElementTree as ET

    if not xmp.strip():
        return {}
    start, end = xmp.find("<x:xmpmeta"), xmp.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    root = ET.fromstring(xmp[start : end + len("</x:xmpmeta>")])
    found: dict[str, str] = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            if name.startswith("{" + GPANO_NS + "}"):
                found[name.split("}", 1)[1]] = value
        if element.tag.startswith("{" + GPANO_NS + "}"):
            found[element.tag.split("}", 1)[1]] = (element.text or "").strip()
    return found
