"""``layers.styles_on_inputs``: modulated layers scale their inputs instead of folding the style
into the weight (how int8 exports are traced); the same numbers to float32 rounding."""

from __future__ import annotations

import pytest
import torch

import cips_deploy
from cips_deploy.families.layers import per_point_styles, styles_on_inputs
from cips_deploy.models import CREPS_DEMO_MODEL, DEMO_MODEL
from cips_deploy.runtime.coords import grid_coords


@pytest.mark.parametrize("path", [DEMO_MODEL, CREPS_DEMO_MODEL], ids=["cips", "creps"])
def test_the_same_pixels_to_float32_rounding(path):
    generator = cips_deploy.load(path).eval()
    coords = torch.from_numpy(grid_coords(24, 24)).repeat(2, 1, 1)  # two samples, two styles
    with torch.no_grad():
        w = generator.map(torch.randn(2, generator.config.latent_dim, generator=torch.Generator().manual_seed(0)))
        folded = generator.synthesize(coords, w)
        with styles_on_inputs():
            on_inputs = generator.synthesize(coords, w)
    assert (folded - on_inputs).abs().max() <= 1e-5
    assert not torch.equal(folded, on_inputs)  # the other path ran: rounding differs somewhere


def test_only_inside_the_block_and_only_one_style_per_sample():
    x, w = torch.zeros(2, 5, 7, 3), torch.ones(2, 4)
    assert per_point_styles(x, w) is w
    with styles_on_inputs():
        assert per_point_styles(x, w).shape == (2, 1, 1, 4)
        per_point = torch.ones(2, 5, 7, 4)
        assert per_point_styles(x, per_point) is per_point
    assert per_point_styles(x, w) is w
