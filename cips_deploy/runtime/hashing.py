"""Content hashes of files: what engines, caches and provenance records name a model by."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cips_deploy.contracts.limits import regular_file


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    path = regular_file(path)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
