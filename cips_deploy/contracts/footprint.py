"""How much memory a chunk of N points needs: the basis of the ``memory`` chunker.

Synthesis is pixel-major, so every activation is ``[N, C]`` float32 and a chunk's working
memory is N times a per-point figure that depends only on the model's widths. Per point,
in floats, at the worst moment of ``Generator.synthesize`` under inference mode:

- input stage, with the embedding grid: the Fourier features (h), the running sum of the
  four bilinear reads and the read being added (2h), and the concatenation (2h) minus what
  is already freed: ``4h``; without the grid, the Fourier layer's output and its sine: ``2h``.
- a styled layer ``in -> out``: its input, the layer output and its biased / activated
  copies: ``in + 3 * out`` (CIPSres's skip branch is the third; CIPSskip peaks at
  ``in + 2 * out``).
- with one style per point (``w [N, S]``, spatially varying styles): the modulated input
  doubles the input term and w is held alongside its blend: ``2 * in + 3 * out + 2 * S``.

Each family gives its own figure (:meth:`cips_deploy.contracts.families.Family.activation_floats_per_point`;
CIPS: :mod:`cips_deploy.families.cips_spec`, CREPS: :mod:`cips_deploy.families.creps_spec`).

The maximum over the stages, plus 9 floats of summed colours, is
``activation_floats_per_point``; the renderer adds ``RENDERER_FLOATS_PER_POINT`` for the
chunk's points, the padded coordinate batch, the colours and a grid layout's index tables.
These coefficients were counted from the code and checked against measured peak resident
memory (400k-point batches; tiny and small presets; skip, res and ne; plane and cylinder:
within about 5%); ``benchmarks/chunk_memory.py`` shows the whole renderer against the prediction.
"""

from __future__ import annotations

from cips_deploy.contracts.config import GeneratorConfig

BYTES_PER_FLOAT = 4
# points (2), padded coordinates (2), rgb (3), u/v gathers (2), int64 row/column indices (3 x 2).
RENDERER_FLOATS_PER_POINT = 16


def activation_floats_per_point(config: GeneratorConfig, *, per_point_style: bool = False) -> int:
    """Peak float32 activations per point of synthesis: the family's own figure."""
    return config.family.activation_floats_per_point(config, per_point_style)


def render_bytes_per_point(config: GeneratorConfig, *, per_point_style: bool = False) -> int:
    """Bytes of renderer working memory per point of a chunk (activations plus bookkeeping)."""
    floats = activation_floats_per_point(config, per_point_style=per_point_style) + RENDERER_FLOATS_PER_POINT
    return BYTES_PER_FLOAT * floats
