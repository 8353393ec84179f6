"""Checkpoints: the project's safetensors format, and loading any supported file.

A cips-deploy checkpoint is one safetensors file: the generator's tensors (``w_avg``, the
centre of truncation, among them) and, in the header's metadata, JSON strings for the
config and the provenance plus the package version. safetensors holds raw tensors only, so
loading one can never run code. Official CIPS PyTorch files go through :mod:`.official`,
which reads them with ``torch.load(weights_only=True)``; official CREPS snapshots (plain
pickles) through :mod:`.official_creps`, an allow-list unpickler.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from cips_deploy._version import __version__
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.models import DEMO_MODEL  # noqa: F401  (its home before the models package)
from cips_deploy.runtime.hashing import file_sha256  # noqa: F401  (its home before the runtime package)
from cips_deploy.families.generator import Generator
from cips_deploy.contracts.limits import MAX_HEADER_BYTES, check_memory, check_zip_declared_size, parse_json, regular_file
from cips_deploy.families.model_size import check_model_size

from cips_deploy.families.weights import FORMAT, FORMAT_VERSION, check_finite, load_exact_state_dict, save_generator  # noqa: F401


def load(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a generator from a cips-deploy checkpoint, an official CIPS ``.pt`` file or an
    official CREPS snapshot ``.pkl``.

    Official CIPS files may be training checkpoints (a dict with ``g_ema``) or bare ``g_ema``
    state dicts; their architecture is inferred from the keys and shapes. CREPS snapshots
    give their ``G_ema``, read without running anything (:mod:`.official_creps`).
    """
    path = regular_file(path, "checkpoint")  # a FIFO or a device would block or never end
    kind = sniff_format(path)
    if kind == "torch-zip":
        check_zip_declared_size(path)  # torch.load inflates every member in memory
    if kind == "safetensors":
        generator = _load_safetensors(path)
    elif kind in ("torch-zip", "torch-legacy"):
        from cips_deploy.families.official import load_official

        generator = load_official(path)
    elif kind == "pickle":  # official CREPS snapshots are plain pickles, read by an allow-list
        from cips_deploy.families.official_creps import load_official_creps

        generator = load_official_creps(path)
    else:
        raise CipsError(f"{path} is not a checkpoint: it is neither a safetensors file nor a PyTorch file.")
    check_finite(generator, str(path))
    return generator.to(device).eval()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a cips-deploy checkpoint (config, provenance, version)."""
    path = regular_file(path, "checkpoint")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError, MemoryError) as error:
        raise CipsError(f"{path} is corrupt or truncated ({_first_line(error)}).") from None
    if raw.get("format") != FORMAT:
        raise CipsError(f"{path} is a safetensors file but not a cips-deploy generator (its metadata has no cips-deploy config).")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CipsError(
            f"{path} uses checkpoint format version {raw.get('format_version')}, "
            f"but this cips-deploy ({__version__}) reads version {FORMAT_VERSION}."
        )
    if "config" not in raw:
        raise CipsError(f"{path} has a damaged cips-deploy config in its metadata.")
    config = parse_json(raw["config"], f"The config in {path}")
    provenance = parse_json(raw.get("provenance", "{}"), f"The provenance in {path}")
    if not isinstance(provenance, dict):
        raise CipsError(f"The provenance in {path} is not a JSON object.")
    try:
        config = GeneratorConfig.from_dict(config)
    except TypeError:  # a field missing or given twice
        raise CipsError(f"{path} has a damaged cips-deploy config in its metadata.") from None
    except CipsError as error:
        raise CipsError(f"{path}: {error}") from None
    return {"config": config, "provenance": provenance, "package_version": str(raw.get("package_version", "unknown"))}


def check_safetensors_header(path: Path) -> None:
    """Read a safetensors header ourselves, with caps, before the library maps the file.

    The header is ``u64 length`` then that many bytes of JSON naming each tensor's dtype,
    shape and byte range. Refused: a header longer than MAX_HEADER_BYTES, byte ranges that
    run past the end of the file (a truncated or sparse-padded file), and declared tensors
    larger than the memory available (a sparse 1 TB file would otherwise be mapped and read).
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CipsError(f"{path} is corrupt or truncated (shorter than a safetensors header).")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or length > size - 8:
            raise CipsError(f"{path} is corrupt or truncated (its header claims {length:,} bytes).")
        text = handle.read(length)
    try:
        header = parse_json(text.decode("utf-8"), f"The safetensors header of {path}", MAX_HEADER_BYTES)
    except UnicodeDecodeError:
        raise CipsError(f"{path} is corrupt (its safetensors header is not UTF-8 text).") from None
    if not isinstance(header, dict):
        raise CipsError(f"{path} is corrupt (its safetensors header is not a JSON object).")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 for offset in offsets)
        ):
            raise CipsError(f"{path} is corrupt (tensor {name!r:.60} has no valid byte range).")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise CipsError(f"{path} is corrupt or truncated (its tensors need {8 + length + end:,} bytes; the file has {size:,}).")
    check_memory(end, f"Loading {path}")


def _load_safetensors(path: Path) -> Generator:
    metadata = read_metadata(path)
    check_model_size(metadata["config"], f"The model in {path}")
    with torch.device("meta"):
        generator = Generator(metadata["config"])
    expected = generator.state_dict()
    try:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # shapes from the header, before any tensor is read
                shape = handle.get_slice(name).get_shape()
                if name in expected and list(shape) != list(expected[name].shape):
                    raise CipsError(
                        f"{path}: tensor {name!r} has shape {list(shape)}, "
                        f"but the generator expects {list(expected[name].shape)}."
                    )
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, MemoryError) as error:
        raise CipsError(f"{path} is corrupt or truncated ({_first_line(error)}).") from None
    load_exact_state_dict(generator, tensors, source=str(path))
    generator.provenance = metadata["provenance"]
    return generator


# A legacy (pre-zip) torch.save stream opens with a protocol-2 pickle of this magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def sniff_format(path: Path) -> str | None:
    """What a file is, from its bytes alone: ``safetensors``, ``torch-zip``, ``torch-legacy``,
    ``pickle`` or None.

    safetensors is tested first and strictly, because its first byte is the low byte of
    its header length and can be anything, 0x80 (a pickle's first byte) included: the
    header must open with ``{`` right after the length, fit in the file and close with
    ``}`` (or the spaces that pad it). A pickle is 0x80 followed by a protocol number.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
        if len(head) >= 10 and head[8:9] == b"{":
            (header_length,) = struct.unpack("<Q", head[:8])
            if 2 <= header_length <= path.stat().st_size - 8:
                handle.seek(8 + header_length - 1)
                if handle.read(1) in (b"}", b" "):
                    return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__
