"""Checkpoints: the project's safetensors format, and loading any supported file.

A cips-deploy checkpoint is one safetensors file: the generator's tensors (``w_avg``, the
centre of truncation, among them) and, in the header's metadata, JSON strings for the
config and the provenance plus the package version. safetensors holds raw tensors only, so
loading one can never run code. Official CIPS PyTorch files go through :mod:`.official`,
which reads them with ``torch.load(weights_only=True)``; official CREPS snapshots (plain
pickles) through :mod:`.official_creps`, an allow-list unpickler.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ._version import __version__
from .atomic import atomic_path
from .config import GeneratorConfig
from .errors import CipsError
from .generator import Generator

FORMAT = "cips-deploy/generator"
# A tiny cylinder-space model trained by this package's training core (README, "Demo model"):
# the default of `cips-deploy render`, so that it works offline right after install.
DEMO_MODEL = Path(__file__).parent / "models" / "demo-panorama.safetensors"
FORMAT_VERSION = "1"


def save_generator(generator: Generator, path: str | Path, *, overwrite: bool = True) -> None:
    """Write ``generator`` to ``path`` atomically (temporary file, then rename)."""
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in generator.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(generator.config.to_dict()),
        "provenance": json.dumps(generator.provenance),
        "package_version": __version__,
    }
    with atomic_path(path, overwrite=overwrite) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a generator from a cips-deploy checkpoint, an official CIPS ``.pt`` file or an
    official CREPS snapshot ``.pkl``.

    Official CIPS files may be training checkpoints (a dict with ``g_ema``) or bare ``g_ema``
    state dicts; their architecture is inferred from the keys and shapes. CREPS snapshots
    give their ``G_ema``, read without running anything (:mod:`.official_creps`).
    """
    path = Path(path)
    if not path.exists():
        raise CipsError(f"No such checkpoint: {path}.")
    if path.is_dir():
        raise CipsError(f"{path} is a directory, not a checkpoint file.")
    kind = sniff_format(path)
    if kind == "safetensors":
        generator = _load_safetensors(path)
    elif kind in ("torch-zip", "torch-legacy"):
        from .official import load_official

        generator = load_official(path)
    elif kind == "pickle":  # official CREPS snapshots are plain pickles, read by an allow-list
        from .official_creps import load_official_creps

        generator = load_official_creps(path)
    else:
        raise CipsError(f"{path} is not a checkpoint: it is neither a safetensors file nor a PyTorch file.")
    return generator.to(device).eval()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a cips-deploy checkpoint (config, provenance, version)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CipsError(f"{path} is corrupt or truncated ({_first_line(error)}).") from None
    if raw.get("format") != FORMAT:
        raise CipsError(f"{path} is a safetensors file but not a cips-deploy generator (its metadata has no cips-deploy config).")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CipsError(
            f"{path} uses checkpoint format version {raw.get('format_version')}, "
            f"but this cips-deploy ({__version__}) reads version {FORMAT_VERSION}."
        )
    try:
        return {
            "config": GeneratorConfig.from_dict(json.loads(raw["config"])),
            "provenance": json.loads(raw.get("provenance", "{}")),
            "package_version": raw.get("package_version", "unknown"),
        }
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CipsError(f"{path} has a damaged cips-deploy config in its metadata.") from None


def _load_safetensors(path: Path) -> Generator:
    metadata = read_metadata(path)
    with torch.device("meta"):
        generator = Generator(metadata["config"])
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CipsError(f"{path} is corrupt or truncated ({_first_line(error)}).") from None
    load_exact_state_dict(generator, tensors, source=str(path))
    generator.provenance = metadata["provenance"]
    return generator


def load_exact_state_dict(generator: Generator, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Assign ``tensors`` to ``generator``, insisting on exactly its names and shapes."""
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CipsError(f"{source} lacks {len(missing)} tensor(s) this generator needs, such as {missing[0]!r}.")
    if unexpected:
        raise CipsError(f"{source} has {len(unexpected)} tensor(s) this generator does not use, such as {unexpected[0]!r}.")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CipsError(
                f"{source}: tensor {name!r} has shape {list(tensor.shape)}, "
                f"but the generator expects {list(expected[name].shape)}."
            )
        if not tensor.dtype.is_floating_point:
            raise CipsError(f"{source}: tensor {name!r} is {tensor.dtype}, not a floating-point tensor.")
    generator.load_state_dict({name: tensor.float() for name, tensor in tensors.items()}, assign=True)


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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__
