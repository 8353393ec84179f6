"""The generator family: layers, coordinate spaces, styles, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cips_deploy
from cips_deploy import CipsError
from cips_deploy.families.layers import CoordinateEmbedding


def random_points(batch: int, count: int, spread: float = 1.3, seed: int = 0) -> torch.Tensor:
    """Points in [-spread, spread]^2: inside and outside the training square."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, count, 2, generator=generator) * 2 - 1) * spread


def test_embedding_read_equals_grid_sample_with_border_padding():
    embedding = CoordinateEmbedding(hidden=7, size=9)
    coords = random_points(2, 500)
    coords[0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]])  # corners and centre
    grid = embedding.grid.permute(2, 0, 1).unsqueeze(0).expand(2, -1, -1, -1)  # official [B, C, S, S]
    expected = F.grid_sample(grid, coords.unsqueeze(1), mode="bilinear", padding_mode="border", align_corners=False)
    expected = expected.squeeze(2).transpose(1, 2)  # [B, C, 1, N] -> [B, N, C]
    torch.testing.assert_close(embedding(coords), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["skip", "res", "ne"])
def test_cylinder_models_wrap_around_in_u(arch):
    generator = cips_deploy.create("tiny", arch=arch, coordinate_space="cylinder", seed=1)
    v = torch.linspace(-1.2, 1.2, 50)
    left = torch.stack([torch.full_like(v, -1.0), v], dim=-1)[None]
    for shift in (2.0, 4.0, -2.0):  # one and two whole turns, either way
        right = left + torch.tensor([shift, 0.0])
        w = generator.map(torch.randn(1, 64))
        with torch.no_grad():
            difference = (generator.synthesize(left, w) - generator.synthesize(right, w)).abs().max().item()
        assert difference < 1e-5


def test_plane_models_do_not_wrap():
    generator = cips_deploy.create("tiny", seed=1)
    v = torch.linspace(-1, 1, 50)
    left = torch.stack([torch.full_like(v, -1.0), v], dim=-1)[None]
    right = left + torch.tensor([2.0, 0.0])
    w = generator.map(torch.randn(1, 64))
    with torch.no_grad():
        assert (generator.synthesize(left, w) - generator.synthesize(right, w)).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch", ["skip", "res", "ne"])
@pytest.mark.parametrize("space", ["plane", "cylinder"])
def test_per_point_styles_equal_per_sample_styles_when_constant(arch, space):
    generator = cips_deploy.create("tiny", arch=arch, coordinate_space=space, seed=2)
    coords = random_points(3, 123)
    with torch.no_grad():
        w = generator.map(torch.randn(3, 64, generator=torch.Generator().manual_seed(5)), truncation=0.8)
        per_sample = generator.synthesize(coords, w)
        per_point = generator.synthesize(coords, w[:, None, :].expand(-1, coords.shape[1], -1))
    torch.testing.assert_close(per_point, per_sample, rtol=1e-5, atol=1e-5)


def test_per_point_styles_select_each_points_own_style():
    generator = cips_deploy.create("tiny", seed=3)
    coords = random_points(1, 40)
    with torch.no_grad():
        w = generator.map(torch.randn(2, 64))
        mixed = torch.where(torch.arange(40)[None, :, None] < 20, w[0], w[1])  # [1, 40, S]
        out = generator.synthesize(coords, mixed)
        first = generator.synthesize(coords, w[:1])
        second = generator.synthesize(coords, w[1:])
    assert torch.allclose(out[0, :20], first[0, :20], atol=1e-5)
    assert torch.allclose(out[0, 20:], second[0, 20:], atol=1e-5)


def test_points_are_independent_of_each_other():
    """Conditionally independent: a point's colour does not depend on the batch it is in."""
    generator = cips_deploy.create("tiny", arch="res", seed=4)
    coords = random_points(1, 300)
    with torch.no_grad():
        w = generator.map(torch.randn(1, 64))
        whole = generator.synthesize(coords, w)
        parts = torch.cat([generator.synthesize(coords[:, i : i + 77], w) for i in range(0, 300, 77)], dim=1)
    assert torch.allclose(whole, parts, atol=1e-6)


def test_truncation_moves_w_towards_w_avg():
    generator = cips_deploy.create("tiny", seed=5)
    z = torch.randn(4, 64)
    with torch.no_grad():
        w = generator.map(z)
        assert torch.allclose(generator.map(z, truncation=0.0), generator.w_avg.expand(4, -1))
        half = generator.map(z, truncation=0.5)
    assert torch.allclose(half, (w + generator.w_avg) / 2, atol=1e-6)
    assert torch.allclose(generator.w_avg, generator.mean_w(), atol=1e-6)


def test_synthesis_is_deterministic_and_noise_only_when_asked():
    generator = cips_deploy.create("tiny", seed=6)
    with torch.no_grad():
        for module in generator.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.5)
        coords = random_points(1, 64)
        w = generator.map(torch.randn(1, 64))
        assert torch.equal(generator.synthesize(coords, w), generator.synthesize(coords, w))
        assert not torch.equal(generator.synthesize(coords, w, noise=True), generator.synthesize(coords, w))


def test_create_is_deterministic_per_seed():
    a, b, c = (cips_deploy.create("tiny", seed=s) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.first.linear.weight, c.first.linear.weight)


@pytest.mark.parametrize("arch", ["skip", "res", "ne"])
@pytest.mark.parametrize("space", ["plane", "cylinder"])
def test_tiny_renders_a_64x64_image(arch, space):
    generator = cips_deploy.create("tiny", arch=arch, coordinate_space=space)
    with torch.no_grad():
        rgb = generator.synthesize(torch.from_numpy(cips_deploy.grid_coords(64, 64)).expand(2, -1, -1), generator.map(torch.randn(2, 64)))
    assert rgb.shape == (2, 64 * 64, 3) and torch.isfinite(rgb).all()
    assert rgb.std().item() > 0.01  # not a constant image
    (image,) = cips_deploy.to_pil(rgb[:1], 64, 64)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_presets_and_overrides():
    assert cips_deploy.create("tiny").config.coordinate_space == "plane"
    small = cips_deploy.preset_config("small", size=32, hidden=16)
    assert (small.size, small.hidden, small.n_blocks) == (32, 16, 4)
    assert cips_deploy.preset_config("tiny", widths=(8, 16)).widths == (8, 16)
    assert cips_deploy.preset_config("paper256", arch="res").widths == (512, 512, 512, 512, 512, 256, 128)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(preset="huge"), "Unknown preset"),
        (dict(arch="conv"), "Unknown architecture"),
        (dict(coordinate_space="sphere"), "Unknown coordinate space"),
        (dict(size=100), "power of two"),
        (dict(depth=3), "Unknown generator option"),
    ],
)
def test_bad_generator_options_are_one_clear_sentence(kwargs, message):
    with pytest.raises(CipsError, match=message):
        cips_deploy.create(**kwargs)


def test_synthesize_rejects_mismatched_shapes(tiny_skip):
    with pytest.raises(CipsError, match=r"\[B, N, 2\]"):
        tiny_skip.synthesize(torch.zeros(1, 5, 3), torch.zeros(1, 64))
    with pytest.raises(CipsError, match="style width is 64"):
        tiny_skip.synthesize(torch.zeros(1, 5, 2), torch.zeros(1, 32))
    with pytest.raises(CipsError, match="matching coordinates"):
        tiny_skip.synthesize(torch.zeros(2, 5, 2), torch.zeros(1, 64))


def test_rgb_to_uint8_maps_minus_one_to_black_and_one_to_white():
    rgb = torch.tensor([[-1.0, 0.0, 1.0], [-3.0, 3.0, 0.5]])
    assert cips_deploy.rgb_to_uint8(rgb).tolist() == [[0, 128, 255], [0, 255, 191]]
    assert cips_deploy.rgb_to_uint8(rgb).dtype == np.uint8
