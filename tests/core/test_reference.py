"""The fast pixel-major path equals the official-style reference path (grouped convolutions)."""

from __future__ import annotations

import pytest
import torch

import cips_deploy
from cips_deploy import CipsError
from cips_deploy.runtime.coords import planar_to_points
from cips_deploy.families.reference import reference_synthesize


def test_reference_path_reproduces_the_official_fixtures(official_dir):
    generator = cips_deploy.load(official_dir / "cipsskip_s8.pt")
    case = torch.load(official_dir / "reference_outputs.pt", weights_only=True)["eval_upsampled_grid_16"]
    with torch.no_grad():
        rgb = reference_synthesize(generator, case["coords"], generator.map(case["latent"]))
    assert (rgb - case["rgb"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ["skip", "res", "ne"])
def test_fast_path_equals_reference_path(arch):
    generator = cips_deploy.create("small", arch=arch, seed=11)
    coords = torch.rand(2, 2, 24, 20, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    with torch.no_grad():
        w = generator.map(torch.randn(2, generator.config.style_dim, generator=torch.Generator().manual_seed(2)))
        reference = reference_synthesize(generator, coords, w)
        fast = generator.synthesize(planar_to_points(coords), w)
    torch.testing.assert_close(fast, planar_to_points(reference), rtol=1e-5, atol=1e-5)


def test_reference_path_refuses_cylinder_models():
    generator = cips_deploy.create("tiny", coordinate_space="cylinder")
    with pytest.raises(CipsError, match="no cylinder"):
        reference_synthesize(generator, torch.zeros(1, 2, 4, 4), torch.zeros(1, 64))
