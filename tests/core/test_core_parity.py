"""Official-checkpoint parity: our generator reproduces the official CIPS code's outputs."""

from __future__ import annotations

import json

import pytest
import torch

import cips_deploy
from cips_deploy.runtime.coords import planar_to_points
from cips_deploy.families.generator import Generator
from cips_deploy.families.official import generator_from_official_state_dict

from ..conftest import OFFICIAL_FIXTURES

CASES = [
    ("cipsskip_s8.pt", "reference_outputs.pt", "skip"),
    ("cipsres_s8_g_ema.pt", "reference_outputs_cipsres.pt", "res"),
]


def reference_cases():
    """Every case in the reference files (one placeholder each when the fixtures are absent)."""
    for checkpoint, references, arch in CASES:
        path = OFFICIAL_FIXTURES / references
        names = torch.load(path, weights_only=True).keys() if path.exists() else ["missing-fixtures"]
        for case in names:
            yield pytest.param(checkpoint, references, arch, case, id=f"{arch}-{case}")


@pytest.mark.parametrize("checkpoint, references, arch, case", list(reference_cases()))
def test_official_outputs_reproduced_within_1e5(official_dir, checkpoint, references, arch, case):
    data = torch.load(official_dir / references, weights_only=True)[case]
    generator = cips_deploy.load(official_dir / checkpoint)
    assert generator.config.arch == arch
    coords = planar_to_points(data["coords"])  # x -> u, y -> v
    with torch.no_grad():
        w = data["latent"] if data["input_is_latent"] else generator.map(data["latent"])
        rgb = generator.synthesize(coords, w)
    batch, _, height, width = data["rgb"].shape
    expected = data["rgb"].permute(0, 2, 3, 1).reshape(batch, height * width, 3)
    assert rgb.shape == expected.shape
    assert (rgb - expected).abs().max().item() <= 1e-5


def test_fixture_architecture_is_inferred(official_dir):
    skip = cips_deploy.load(official_dir / "cipsskip_s8.pt").config
    res = cips_deploy.load(official_dir / "cipsres_s8_g_ema.pt").config
    for config, arch in ((skip, "skip"), (res, "res")):
        assert (config.arch, config.size, config.hidden, config.style_dim, config.n_mlp) == (arch, 8, 32, 64, 2)
        assert config.widths == (512, 512)
        assert config.coordinate_space == "plane"


def _random_official_state_dict(shapes: dict[str, list[int]], device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if device == "meta":
        return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


@pytest.mark.parametrize(
    "name, arch, size, device",
    [
        ("CIPSskip_size256", "skip", 256, "cpu"),
        ("CIPSres_size256", "res", 256, "cpu"),
        # 547 M parameters: checked on the meta device, without allocating the weights.
        ("CIPSskip_size1024", "skip", 1024, "meta"),
    ],
)
def test_paper_size_manifests_import_with_exact_parameter_counts(official_dir, name, arch, size, device):
    manifest = json.loads((official_dir / "official_paper_shapes.json").read_text())[name]
    state_dict = _random_official_state_dict(manifest["state_dict_shapes"], device)
    generator = generator_from_official_state_dict(state_dict, source=name)
    config = generator.config
    constructor = manifest["constructor"]
    assert (config.arch, config.size, config.hidden, config.style_dim, config.n_mlp) == (
        arch,
        size,
        constructor["hidden_size"],
        constructor["style_dim"],
        constructor["n_mlp"],
    )
    assert config.channel_multiplier == constructor["channel_multiplier"]
    assert generator.num_parameters == manifest["n_params"]
    # The preset of the same name is exactly the official configuration.
    preset = "paper1024" if size == 1024 else "paper256"
    assert cips_deploy.preset_config(preset, arch=arch) == config


def test_paper_presets_have_the_official_parameter_counts():
    with torch.device("meta"):
        counts = {
            (preset, arch): Generator(cips_deploy.preset_config(preset, arch=arch)).num_parameters
            for preset, arch in [("paper256", "skip"), ("paper256", "res"), ("paper1024", "skip")]
        }
    assert counts == {
        ("paper256", "skip"): 44_317_092,
        ("paper256", "res"): 43_027_858,
        ("paper1024", "skip"): 547_846_414,
    }


def test_paper256_costs_3_40_million_multiply_adds_per_pixel():
    with torch.device("meta"):
        generator = Generator(cips_deploy.preset_config("paper256"))
    assert generator.flops_per_point() // 2 == pytest.approx(3.40e6, rel=0.005)
