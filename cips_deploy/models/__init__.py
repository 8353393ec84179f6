"""The models that ship inside the package, as files (no code of theirs runs).

``demo-panorama``: a tiny cylinder-space CIPSskip trained by this package's training core
(docs/models.md), the default model of ``cips-deploy render`` so that it works offline
right after install. It ships as its validated ONNX engines (synthesis + mapping:
``DEMO_ENGINE``, which the torch-free runtime renders and ``render`` uses by default; and
``demo-panorama.spatial.onnx``, the same weights for per-point styles, which ``render
--blend-seed`` takes) and as its safetensors checkpoint (``DEMO_MODEL``: the torch backend,
export and training).

``creps-demo``: the tiny cylinder-space CREPS of docs/creps.md (``docs/pictures/creps-demo.safetensors``,
trained on one panorama), as its checkpoint (``CREPS_DEMO_MODEL``) and its validated engines
(``CREPS_DEMO_ENGINE``: per-point synthesis, mapping, and the line + compose grid engines of
docs/line-engines.md beside it), so a base install renders a line-factored model too.

Every engine was written by ``cips-deploy export <checkpoint> --engine onnx -o <engine>`` (the
spatial one with ``--spatial-style``) from
the checkpoint beside it (validated against torch within 1e-4) and names that checkpoint's
SHA-256 in its metadata; after a change to the export format, run that command again.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DEMO_MODEL = HERE / "demo-panorama.safetensors"
DEMO_ENGINE = HERE / "demo-panorama.onnx"  # + demo-panorama.mapping.onnx and demo-panorama.spatial.onnx beside it
CREPS_DEMO_MODEL = HERE / "creps-demo.safetensors"
CREPS_DEMO_ENGINE = HERE / "creps-demo.onnx"  # + creps-demo.{mapping,lines,compose}.onnx beside it
