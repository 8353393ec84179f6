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

Other families give their own figure (``Generator.activation_floats_per_point``; CREPS:
:mod:`cips_deploy.families.creps`).

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
    """Peak float32 activations per point of ``Generator.synthesize``: the family's own figure."""
    from cips_deploy.families.generator import family_class

    return family_class(config.arch).activation_floats_per_point(config, per_point_style)


def cips_activation_floats(config: GeneratorConfig, per_point_style: bool = False) -> int:
    """Peak float32 activations per point of a CIPS generator (see the module text)."""
    h = config.hidden
    input_stage = 4 * h + 16 if config.has_embedding else 2 * h + 8
    first_in = 2 * h if config.has_embedding else h
    layers = [(first_in, config.widths[0])]
    in_features = config.widths[0]
    for width in config.widths:
        layers += [(in_features, width), (width, width)]
        in_features = width
    if per_point_style:
        worst_layer = max(2 * i + 3 * o for i, o in layers) + 2 * config.style_dim
    else:
        worst_layer = max(i + 3 * o for i, o in layers)
    return max(input_stage, worst_layer) + 9


def render_bytes_per_point(config: GeneratorConfig, *, per_point_style: bool = False) -> int:
    """Bytes of renderer working memory per point of a chunk (activations plus bookkeeping)."""
    floats = activation_floats_per_point(config, per_point_style=per_point_style) + RENDERER_FLOATS_PER_POINT
    return BYTES_PER_FLOAT * floats
