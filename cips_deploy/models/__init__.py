"""The models that ship inside the package, as files (no code of theirs runs).

``demo-panorama``: a tiny cylinder-space CIPSskip trained by this package's training core
(docs/models.md), the default model of ``cips-deploy render`` so that it works offline
right after install. It ships as its safetensors checkpoint (for the torch backend, export
and training) and as its validated ONNX engines (synthesis + mapping), which the torch-free
runtime renders.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DEMO_MODEL = HERE / "demo-panorama.safetensors"
DEMO_ENGINE = HERE / "demo-panorama.onnx"
