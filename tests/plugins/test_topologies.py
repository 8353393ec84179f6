"""The built-in topologies: flat, cylinder, foveated, rotated, and parameter handling."""

from __future__ import annotations

import numpy as np
import pytest

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.runtime.render import render, render_detailed
from cips_deploy.contracts.topology import Parameter, TopologyRequest, resolve_parameters

from ..helpers.seams import pooled_seam_ratio


@pytest.fixture(scope="module")
def tiny_cylinder():
    return cips_deploy.create("tiny", coordinate_space="cylinder", seed=0)


def layout_of(registry, name, height, width, space="plane", **params):
    topology = registry.topologies[name].item
    return topology.layout(TopologyRequest(height, width, space, resolve_parameters(topology, params)))


# ------------------------------------------------------------------------ parameters


@pytest.mark.runtime
def test_parameters_convert_strings_and_check_bounds():
    count = Parameter("count", int, 2, "how many", minimum=1, maximum=9)
    assert count.convert("7", "demo") == 7
    assert Parameter("on", bool, False, "flag").convert("yes", "demo") is True
    assert Parameter("x", float, 0.0, "x").convert(3, "demo") == 3.0
    with pytest.raises(CipsError, match="The demo topology's parameter count must be at most 9, not 10"):
        count.convert(10, "demo")
    with pytest.raises(CipsError, match="must be a whole number, not '2.5'"):
        count.convert("2.5", "demo")
    with pytest.raises(CipsError, match="must be a whole number, not True"):
        count.convert(True, "demo")
    with pytest.raises(CipsError, match="must be a finite number, not nan"):
        Parameter("x", float, 0.0, "x").convert("nan", "demo")
    with pytest.raises(CipsError, match="must be true or false, not 'maybe'"):
        Parameter("on", bool, False, "flag").convert("maybe", "demo")


@pytest.mark.runtime
def test_unknown_parameters_are_refused_with_the_known_ones(registry):
    with pytest.raises(CipsError, match=r"The flat topology has no parameter zoom \(its parameters: u_min, u_max, v_min, v_max\)"):
        resolve_parameters(registry.topologies["flat"].item, {"zoom": 2})


# ----------------------------------------------------------------------------- flat


def test_flat_is_the_official_grid_at_any_size(tiny):
    import torch

    for height, width in [(64, 64), (37, 150)]:  # the training size and a super-resolved odd one
        image = render(tiny, "flat", height, width, seed=4)
        z = np.random.RandomState(4).randn(1, 64).astype(np.float32)  # the seed rule of StyleGAN and CREPS
        with torch.inference_mode():
            w = tiny.map(torch.from_numpy(z))
            grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")[::-1], dim=-1)
            rgb = tiny.synthesize(grid.reshape(1, -1, 2), w)  # the official code's torch grid
        assert np.array_equal(image, cips_deploy.rgb_to_uint8(rgb).reshape(height, width, 3))


def test_flat_viewport_crops(tiny):
    whole = render(tiny, "flat", 65, 65, seed=2).astype(int)
    quarter = render(tiny, "flat", 33, 33, seed=2, u_min=-1.0, u_max=0.0, v_min=0.0, v_max=1.0).astype(int)
    assert np.abs(quarter - whole[32:, :33]).mean() < 0.5  # same points up to float rounding
    with pytest.raises(CipsError, match="u_min and u_max are both 0.5; the viewport is empty"):
        render(tiny, "flat", 8, 8, u_min=0.5, u_max=0.5)


# ------------------------------------------------------------------------- cylinder


@pytest.mark.runtime
def test_cylinder_columns_are_sector_centres_so_the_seam_is_an_ordinary_neighbour(registry):
    width = 10
    u = layout_of(registry, "cylinder", 1, width, "cylinder").points(0, width)[:, 0].astype(np.float64)
    steps = np.remainder(np.diff(np.concatenate([u, u[:1]])), 2.0)  # including last -> first
    assert np.allclose(steps, np.full(width, 2.0 / width), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["skip", "res", "ne", "creps"])
def test_cylinder_panorama_is_seamless(arch):
    """Mean |last - first column| <= 1.5 x the median adjacent-column difference.

    For one random model the ratio is a statistic of whatever content happens to sit at
    u = +-1 (seamless panoramas of single tiny models range from about 0.6 to 1.6), so it is
    pooled over three random models and four seeds each. A real seam is unmistakable: the
    same grid on a plane model, where u = -1 and u = +1 are different places, scores 4 to 100.
    """
    models = [cips_deploy.create("tiny", arch=arch, coordinate_space="cylinder", seed=seed) for seed in range(3)]
    panoramas = [render(model, "cylinder", 32, 256, seed=seed) for model in models for seed in range(4)]
    assert pooled_seam_ratio(panoramas) <= 1.5
    planes = [cips_deploy.create("tiny", arch=arch, seed=seed) for seed in range(3)]
    sector_centres = dict(u_min=-1 + 1 / 256, u_max=1 - 1 / 256)  # the cylinder's columns, on a plane
    seams = [render(plane, "flat", 32, 256, seed=seed, **sector_centres) for plane in planes for seed in range(4)]
    assert pooled_seam_ratio(seams) > 3


@pytest.mark.parametrize("arch", ["skip", "res", "ne", "creps"])
def test_the_seam_is_an_ordinary_neighbour_pair(arch):
    """Turned by 180 degrees, the panorama is the original rolled by half: columns W-1 and 0
    meet in the middle exactly as they do at the edges, so there is nothing to see at the seam."""
    for model_seed in range(3):
        generator = cips_deploy.create("tiny", arch=arch, coordinate_space="cylinder", seed=model_seed)
        panorama = render(generator, "cylinder", 16, 128, seed=model_seed)
        turned = render(generator, "cylinder", 16, 128, seed=model_seed, heading=180.0)
        assert np.abs(np.roll(panorama, 64, axis=1).astype(int) - turned.astype(int)).mean() < 0.05
    # The classic mistake, linspace(-1, 1, W), samples the meridian u = -1 = +1 twice: the
    # first and last columns are identical, a doubled column. The flat grid does exactly that:
    flat = render(generator, "flat", 16, 128, seed=1)
    assert np.array_equal(flat[:, 0], flat[:, -1])


def test_cylinder_heading_turns_the_panorama(tiny_cylinder):
    width = 128
    still = render(tiny_cylinder, "cylinder", 16, width, seed=3).astype(int)
    turned = render(tiny_cylinder, "cylinder", 16, width, seed=3, heading=360.0 * 16 / width).astype(int)
    assert np.abs(turned - np.roll(still, -16, axis=1)).mean() < 0.5
    assert np.abs(turned - still).mean() > 5


def test_cylinder_on_a_plane_model_suggests_flat(tiny):
    with pytest.raises(CipsError, match="cylinder topology needs a cylinder-space model.*use --topology flat"):
        render(tiny, "cylinder", 16, 64)


# -------------------------------------------------------------------------- rotated


def test_rotated_quarter_turn_is_rot90_of_flat(tiny):
    flat = render(tiny, "flat", 48, 48, seed=5)
    assert np.array_equal(render(tiny, "rotated", 48, 48, seed=5, angle=90.0), np.rot90(flat, 1))
    assert np.array_equal(render(tiny, "rotated", 48, 48, seed=5, angle=-90.0), np.rot90(flat, -1))
    assert np.array_equal(render(tiny, "rotated", 48, 48, seed=5, angle=0.0), flat)


def test_rotated_turns_about_the_centre(tiny):
    flat = render(tiny, "flat", 65, 65, seed=6)
    turned = render(tiny, "rotated", 65, 65, seed=6, angle=37.0)
    assert np.array_equal(turned[32, 32], flat[32, 32])  # the centre pixel stays
    assert np.abs(turned.astype(int) - flat.astype(int)).mean() > 5  # the rest moves
    moved = render(tiny, "rotated", 65, 65, seed=6, angle=37.0, centre_u=0.5, centre_v=-0.25)
    # The centre pixel now shows the model point (0.5, -0.25): the top-left pixel of this viewport.
    corner = render(tiny, "flat", 2, 2, seed=6, u_min=0.5, u_max=1.0, v_min=-0.25, v_max=0.0)
    assert np.array_equal(moved[32, 32], corner[0, 0])


def test_rotated_scale_zooms(tiny):
    zoomed = render(tiny, "rotated", 41, 41, seed=7, angle=0.0, scale=0.5).astype(int)
    cropped = render(tiny, "flat", 41, 41, seed=7, u_min=-0.5, u_max=0.5, v_min=-0.5, v_max=0.5).astype(int)
    assert np.abs(zoomed - cropped).mean() < 0.5


# ------------------------------------------------------------------------- foveated


def test_foveated_evaluates_far_fewer_points_and_says_so(tiny):
    result = render_detailed(tiny, "foveated", 256, 256, seed=1)
    assert result.points_evaluated == result.report["evaluated_points"]
    assert result.points_evaluated < 0.3 * 256 * 256
    assert result.report["image_pixels"] == 256 * 256
    assert result.image.shape == (256, 256, 3)


def test_foveated_is_exact_where_it_evaluated(registry, tiny):
    params = dict(gaze_x=0.3, gaze_y=0.6, radius=0.15)
    layout = layout_of(registry, "foveated", 96, 128, **params)
    foveated = render(tiny, "foveated", 96, 128, seed=2, **params)
    flat = render(tiny, "flat", 96, 128, seed=2)
    assert np.array_equal(foveated[layout.mask], flat[layout.mask])
    gaze_row, gaze_column = round(0.6 * 95), round(0.3 * 127)
    assert layout.mask[gaze_row - 10 : gaze_row + 10, gaze_column - 10 : gaze_column + 10].all()  # fovea: every pixel
    assert not layout.mask.all()


@pytest.mark.runtime
def test_foveated_density_falls_off_with_distance(registry):
    layout = layout_of(registry, "foveated", 512, 512, radius=0.05, max_stride=8)
    levels = layout.levels
    assert levels[256, 256] == 0 and levels[0, 0] == 3
    far = layout.mask[:64, :64].mean()
    assert 1 / 64 <= far < 1 / 40  # one sample per 8 x 8 block (plus the lattice edges)
    assert layout.n_points < 0.15 * 512 * 512


@pytest.mark.runtime
def test_foveated_reconstruction_reproduces_linear_images_exactly(registry):
    """Between samples the reconstruction is (multi-level) bilinear: a linear ramp comes back whole."""
    layout = layout_of(registry, "foveated", 80, 120, gaze_x=0.8, gaze_y=0.2, radius=0.05)
    points = layout.points(0, layout.n_points)
    assert points.dtype == np.float32 and points.shape == (layout.n_points, 2)
    ramp = np.stack([points[:, 0], 0.5 * points[:, 1], points[:, 0] - points[:, 1]], axis=-1) * np.float32(0.9)
    layout.accept(0, ramp)
    full = layout.reconstruct()
    u = np.linspace(-1, 1, 120)[None, :]
    v = np.linspace(-1, 1, 80)[:, None]
    expected = np.stack(np.broadcast_arrays(u, 0.5 * v, u - v), axis=-1) * 0.9
    assert np.abs(full - expected).max() < 1e-5


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_stride=6), "max_stride must be a power of two, not 6"),
        (dict(radius=0.0), "radius must be at least 0.001"),
        (dict(gaze_x=1.5), "gaze_x must be at most 1, not 1.5"),
        (dict(falloff="fast"), "falloff must be a number, not 'fast'"),
    ],
)
def test_foveated_rejects_bad_parameters(tiny, params, message):
    with pytest.raises(CipsError, match=message):
        render(tiny, "foveated", 32, 32, **params)
