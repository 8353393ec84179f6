"""CREPS: the bi-line generator behind the same contract as CIPS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.config import preset_config
from cips_deploy.coords import grid_coords
from cips_deploy.creps import CrepsGenerator, LineCache, bi_line, block_bi_line
from cips_deploy.errors import CipsError
from cips_deploy.exporters import OnnxEngine, export_onnx
from cips_deploy.plugins.torch_backend import TorchBackend
from cips_deploy.render import render, render_detailed


@pytest.fixture(scope="module")
def creps() -> CrepsGenerator:
    return cips_deploy.create("tiny", arch="creps", seed=2)


def styles(generator, count=1, seed=0):
    z = torch.randn(count, generator.config.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.map(z)


def test_create_builds_creps_behind_the_common_type(creps):
    assert isinstance(creps, CrepsGenerator) and isinstance(creps, cips_deploy.Generator)
    assert type(cips_deploy.create("tiny")) is not CrepsGenerator
    # Line widths follow CIPSskip's layers (first, then two per block); compositions are width / rank.
    assert creps.config.widths == (64,) * 5
    assert creps.layer_widths == [64] * 11 and creps.composed_widths == [16] * 11
    with pytest.raises(CipsError, match="multiple of the line rank"):
        preset_config("tiny", arch="creps", widths=(64, 30))


def test_bi_line_product_is_a_rank_d_sum_of_row_column_products():
    row, column = torch.randn(2, 5, 12), torch.randn(2, 5, 12)  # rank 3, composed width 4
    expected = sum(row[..., d * 4 : (d + 1) * 4] * column[..., d * 4 : (d + 1) * 4] for d in range(3)) / math.sqrt(3)
    torch.testing.assert_close(bi_line(row, column, 3), expected)
    block = block_bi_line(row[:1, :2], column[:1], 3).view(2, 5, 4)  # every (row, column) pair
    for i in range(2):
        assert torch.equal(block[i], bi_line(row[:1, i : i + 1].expand(1, 5, 12), column[:1], 3)[0])


def test_a_pixel_depends_on_its_row_and_column_only_through_lines(creps):
    """Bi-line structure: with all lines fixed, the first composed feature map has rank <= D."""
    w = styles(creps)
    coords = grid_coords(24, 24)
    with torch.no_grad():
        rows = creps.line_features("row", coords[..., 1], w)[0]  # [1, N, C0]
        columns = creps.line_features("column", coords[..., 0], w)[0]
        composed = bi_line(rows, columns, creps.config.line_rank).reshape(24, 24, -1)
    for channel in range(composed.shape[-1]):
        assert torch.linalg.matrix_rank(composed[..., channel].double(), rtol=1e-6) <= creps.config.line_rank


def test_the_grid_fast_path_equals_the_per_point_path(creps):
    w = styles(creps, 2)
    coords = grid_coords(40, 56).expand(2, -1, -1)  # two samples on the same grid
    cache = LineCache(creps)
    with torch.inference_mode():
        direct = creps.synthesize(coords, w)
        chunks = [cache.synthesize(coords[:, start : start + 333], w) for start in range(0, 40 * 56, 333)]
    assert torch.equal(torch.cat(chunks, dim=1), direct)  # the same operations per pixel
    # Every row and column was evaluated once, though 7 chunks met them.
    assert cache.axes["row"].count == 40 and cache.axes["column"].count == 56


def test_the_cache_is_bounded_and_follows_the_style(creps):
    cache = LineCache(creps, max_bytes=100 * 4 * sum(creps.layer_widths))  # room for 100 values per axis
    first_grid = grid_coords(90, 4)  # 90 rows of 4 points: worth caching
    second_grid = first_grid + torch.tensor([0.0, 0.001])  # 90 other rows
    w1, w2 = styles(creps, seed=1), styles(creps, seed=2)
    with torch.inference_mode():
        first = cache.synthesize(first_grid, w1)
        cache.synthesize(second_grid, w1)  # would pass the cap: starts afresh
        assert cache.axes["row"].count == 90
        torch.testing.assert_close(first, creps.synthesize(first_grid, w1), rtol=0, atol=1e-5)
        other = cache.synthesize(first_grid, w2)  # a new style empties the cache
        assert cache.axes["row"].count == 90
        torch.testing.assert_close(other, creps.synthesize(first_grid, w2), rtol=0, atol=1e-5)
        scattered = torch.rand(1, 300, 2) * 2 - 1  # no shared rows or columns: the per-point path
        torch.testing.assert_close(cache.synthesize(scattered, w2), creps.synthesize(scattered, w2), rtol=0, atol=0)
        assert cache.axes["row"].count == 90


def test_per_point_styles_equal_per_sample_styles(creps):
    w = styles(creps)
    coords = torch.rand(1, 200, 2) * 2 - 1
    with torch.no_grad():
        per_sample = creps.synthesize(coords, w)
        per_point = creps.synthesize(coords, w[:, None].expand(-1, 200, -1))
    torch.testing.assert_close(per_point, per_sample, rtol=1e-5, atol=1e-5)


def test_cylinder_creps_is_periodic_in_u():
    generator = cips_deploy.create("tiny", arch="creps", coordinate_space="cylinder", seed=4)
    w = styles(generator)
    coords = torch.rand(1, 500, 2) * 2 - 1
    shifted = coords + torch.tensor([2.0, 0.0])
    with torch.no_grad():
        torch.testing.assert_close(generator.synthesize(shifted, w), generator.synthesize(coords, w), rtol=1e-5, atol=1e-5)


def test_cost_per_pixel_is_far_below_cips_at_equal_width():
    cips_config, creps_config = preset_config("paper256"), preset_config("paper256", arch="creps")
    with torch.device("meta"):
        cips, creps = cips_deploy.Generator(cips_config), cips_deploy.Generator(creps_config)
    assert creps.grid_flops_per_point(256, 256) < cips.flops_per_point() / 10
    assert creps.grid_flops_per_point(2048, 2048) < creps.grid_flops_per_point(256, 256)
    # The per-point path evaluates two lines per point: what an exported engine runs.
    assert creps.flops_per_point() > creps.grid_flops_per_point(256, 256)


def test_checkpoint_round_trip_and_info(creps, tmp_path):
    path = tmp_path / "creps.safetensors"
    creps.save(path)
    loaded = cips_deploy.load(path)
    assert isinstance(loaded, CrepsGenerator) and loaded.config == creps.config
    w, coords = styles(creps), grid_coords(8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(coords, w), creps.synthesize(coords, w))
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0 and "CREPS" in result.output and "line_rank" in result.output


@pytest.mark.parametrize(
    "space, topology, params",
    [
        ("plane", "flat", {}),
        ("plane", "flat", {"u_min": -0.5, "u_max": 0.5}),
        ("plane", "rotated", {"angle": 30.0}),
        ("plane", "foveated", {}),
        ("cylinder", "cylinder", {}),
    ],
)
def test_every_builtin_topology_renders_creps_like_direct_synthesis(space, topology, params):
    generator = cips_deploy.create("tiny", arch="creps", coordinate_space=space, seed=5)
    rendering = render_detailed(generator, topology, 24, 32, seed=1, **params)
    assert rendering.image.shape == (24, 32, 3) and rendering.image.std() > 0
    if topology == "flat" and not params:  # the whole image equals one direct per-point synthesis
        with torch.no_grad():
            w = generator.map(torch.randn(1, generator.config.style_dim, generator=torch.Generator().manual_seed(1)))
            direct = cips_deploy.rgb_to_uint8(generator.synthesize(grid_coords(24, 32), w)).reshape(24, 32, 3)
        assert np.abs(direct.astype(int) - rendering.image.astype(int)).max() <= 1  # 1e-5 can flip a rounding


def test_torch_backend_takes_the_fast_path_for_grids_only(creps):
    backend = TorchBackend(creps)
    render(backend, "flat", 30, 20, seed=0, chunk_size=64)
    assert backend.lines.axes["row"].count == 30 and backend.lines.axes["column"].count == 20
    backend = TorchBackend(creps)
    render(backend, "rotated", 30, 20, seed=0, angle=30.0)  # no shared rows or columns: per-point path
    assert backend.lines.w is None


def test_onnx_export_validates_like_cips(creps, tmp_path):
    result = export_onnx(creps, tmp_path / "creps.onnx")
    assert result.report.ok and result.report.max_abs <= 1e-4
    engine = OnnxEngine(result.synthesis)
    w = styles(creps)
    coords = torch.rand(2, 77, 2) * 2.4 - 1.2
    with torch.no_grad():
        expected = creps.synthesize(coords, w.expand(2, -1))
    torch.testing.assert_close(engine.synthesize(coords, w.expand(2, -1)), expected, rtol=0, atol=1e-4)
    assert engine.metadata.config.arch == "creps"


def test_reference_path_refuses_creps(creps):
    result = CliRunner().invoke(cli, ["bench", "--preset", "tiny", "--arch", "creps", "--reference", "--resolution", "8", "--repeats", "1", "--warmup", "0"])
    assert result.exit_code == 1 and "CREPS" in result.output and "Traceback" not in result.output
