"""CREPS behind the common contract: the official architecture, its lines, the fast path, the cylinder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.contracts.config import preset_config
from cips_deploy.families.creps_spec import creps_config
from cips_deploy.runtime import coords
from cips_deploy.families.creps import CrepsGenerator
from cips_deploy.errors import CipsError
from cips_deploy.exporters import OnnxEngine, export_onnx
from cips_deploy.contracts.footprint import render_bytes_per_point
from cips_deploy.plugins.line_cache import LineCache
from cips_deploy.plugins.torch_backend import TorchBackend
from cips_deploy.runtime.render import render, render_detailed


def grid_coords(height: int, width: int) -> torch.Tensor:
    """The runtime's grid (numpy) as the tensor the torch modules under test take: [1, H*W, 2]."""
    return torch.from_numpy(coords.grid_coords(height, width))


@pytest.fixture(scope="module")
def creps() -> CrepsGenerator:
    return cips_deploy.create("tiny", arch="creps", seed=2)


def styles(generator, count=1, seed=0):
    z = torch.randn(count, generator.config.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.map(z)


def test_create_builds_the_official_module_tree(creps):
    assert isinstance(creps, CrepsGenerator) and isinstance(creps, cips_deploy.Generator)
    assert type(cips_deploy.create("tiny")) is not CrepsGenerator
    assert creps.config.widths == (32, 32, 32, 16) and creps.num_ws == 9
    keys = set(creps.state_dict())
    for key in ("synthesis.b4.input.freqs", "synthesis.b4.tores.weight", "synthesis.decoder_8.3.bias",
                "synthesis.decoder_last.0.weight", "synthesis.block1.tores.affine.bias", "mapping.fc1.weight", "w_avg"):
        assert key in keys
    assert creps_config("small").widths == (256, 256, 256, 256, 128, 64)
    with pytest.raises(CipsError, match="has 4 block widths"):
        preset_config("tiny", arch="creps", widths=(64, 32))
    with pytest.raises(CipsError, match="power of two of at least 8"):
        preset_config("tiny", arch="creps", size=4)


def test_the_grid_fast_path_is_the_per_point_path_and_meets_each_line_once(creps):
    w = styles(creps, 2)
    coords = grid_coords(40, 56).expand(2, -1, -1)  # two samples on the same grid
    cache = LineCache(creps, max_bytes=1 << 30)
    with torch.inference_mode():
        direct = creps.synthesize(coords, w)
        chunks = [cache.synthesize(coords[:, start : start + 333], w) for start in range(0, 40 * 56, 333)]
    assert torch.equal(torch.cat(chunks, dim=1), direct)  # the same operations per pixel
    # Every row and column was evaluated once, though 7 chunks met them.
    assert cache.axes["row"].count == 40 and cache.axes["column"].count == 56
    per_value = 4 * 2 * creps.line_floats_per_value()
    assert 96 * per_value <= cache.nbytes <= 2 * 96 * per_value


def test_the_cache_folds_each_layer_once_per_style(creps, monkeypatch):
    """Folded weights are per-style work: chunks after the first reuse them (the same bits)."""
    from cips_deploy.families.creps import ModulatedFC

    folded, fold = [], ModulatedFC.fold
    monkeypatch.setattr(ModulatedFC, "fold", lambda self, w, dtype: folded.append(id(self)) or fold(self, w, dtype))
    w = styles(creps)
    coords = grid_coords(24, 40)
    cache = LineCache(creps, max_bytes=1 << 30)
    with torch.inference_mode():
        chunks = [cache.synthesize(coords[:, start : start + 128], w) for start in range(0, 24 * 40, 128)]
        layers = sum(isinstance(module, ModulatedFC) for module in creps.modules()) - 1  # b4.tores is dead
        assert sorted(folded) == sorted(set(folded)) and len(folded) == layers  # once each, in 8 chunks
        folded.clear()
        assert torch.equal(torch.cat(chunks, dim=1), creps.synthesize(coords, w))
        assert len(folded) == layers  # the per-point path folds once per call
        cache.synthesize(coords[:, :128], styles(creps, seed=5))  # a new style folds afresh
        assert len(folded) > layers
        # Folds held past max_fold_bytes (large batches): none kept, the same pixels.
        need = creps.folded_bytes_per_sample()
        assert need == 4 * sum(m.weight.numel() for m in creps.modules() if isinstance(m, ModulatedFC)) + 4 * 16 * 32
        small = LineCache(creps, max_bytes=1 << 30, max_fold_bytes=need - 1)
        again = [small.synthesize(coords[:, start : start + 128], w) for start in range(0, 24 * 40, 128)]
        assert small.folds is None and torch.equal(torch.cat(again, dim=1), torch.cat(chunks, dim=1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_fast_path_is_the_per_point_path_in_reduced_precision(creps, dtype):
    """bf16 (our option) and the official float16 mixed precision (CPU half here; the torch
    backend runs it on CUDA): the line cache composes with the per-point path's operations."""
    w = styles(creps)
    coords = grid_coords(24, 40)
    cache = LineCache(creps, max_bytes=1 << 30, dtype=dtype)
    with torch.inference_mode():
        chunks = [cache.synthesize(coords[:, start : start + 192], w) for start in range(0, 24 * 40, 192)]
        direct = creps.synthesize(coords, w, dtype=dtype)
        fp32 = creps.synthesize(coords, w)
    assert torch.equal(torch.cat(chunks, dim=1), direct)
    assert 0 < (direct - fp32).abs().max() <= 3e-2 * fp32.abs().max()


def test_the_cache_is_bounded_and_follows_the_style(creps):
    value_bytes = 4 * creps.line_floats_per_value()
    cache = LineCache(creps, max_bytes=2 * 100 * value_bytes)  # room for 100 values in all
    first_grid = grid_coords(90, 4)  # 90 rows of 4 points: worth caching
    second_grid = first_grid + torch.tensor([0.0, 0.001])  # 90 other rows
    w1, w2 = styles(creps, seed=1), styles(creps, seed=2)
    with torch.inference_mode():
        first = cache.synthesize(first_grid, w1)
        assert cache.axes["row"].count == 90
        cache.synthesize(second_grid, w1)  # would pass the cap: starts afresh
        assert cache.axes["row"].count == 90 and cache.nbytes <= cache.max_bytes
        assert torch.equal(first, creps.synthesize(first_grid, w1))
        other = cache.synthesize(first_grid, w2)  # a new style: only w2's lines are held
        assert torch.equal(cache.w, w2) and cache.axes["row"].count == 90
        assert torch.equal(other, creps.synthesize(first_grid, w2))
        scattered = torch.rand(1, 300, 2) * 2 - 1  # no shared rows or columns: the per-point path
        assert torch.equal(cache.synthesize(scattered, w2), creps.synthesize(scattered, w2))
        assert cache.axes["row"].count == 90


def test_per_point_styles_equal_per_sample_styles(creps):
    w = styles(creps)
    coords = torch.rand(1, 200, 2) * 2 - 1
    with torch.no_grad():
        per_sample = creps.synthesize(coords, w)
        per_point = creps.synthesize(coords, w[:, None].expand(-1, 200, -1))
    torch.testing.assert_close(per_point, per_sample, rtol=1e-5, atol=1e-5)


def test_per_layer_styles(creps):
    w = styles(creps, 2)
    coords = torch.rand(2, 50, 2) * 2 - 1
    with torch.no_grad():
        same = creps.synthesize_ws(coords, creps.layer_styles(w))
        assert torch.equal(same, creps.synthesize(coords, w))
        mixed = creps.layer_styles(w).clone()
        mixed[:, creps.num_ws // 2 :] = w.flip(0)[:, None]
        assert not torch.allclose(creps.synthesize_ws(coords, mixed), same)
    with pytest.raises(CipsError, match=r"\[B, 9, S\]"):
        creps.synthesize_ws(coords, w)


def test_cylinder_creps_is_periodic_in_u():
    generator = cips_deploy.create("tiny", arch="creps", coordinate_space="cylinder", seed=4)
    freqs = generator.synthesis.b4.input.freqs
    assert torch.equal(freqs, freqs.round())  # integer frequencies: whole periods per turn
    w = styles(generator)
    coords = torch.rand(1, 500, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1  # seeded: the test must not depend on what ran before
    shifted = coords + torch.tensor([2.0, 0.0])
    seam = torch.tensor([[[-1.0, 0.3], [1.0, 0.3]]])
    with torch.no_grad():
        torch.testing.assert_close(generator.synthesize(shifted, w), generator.synthesize(coords, w), rtol=1e-5, atol=1e-5)
        left, right = generator.synthesize(seam, w)[0]
    assert torch.equal(left, right)  # u = -1 and u = +1 are the same meridian


def test_mixed_precision_is_the_official_float16_path(creps):
    w = styles(creps)
    coords = grid_coords(8, 8)
    with torch.no_grad():
        fp32 = creps.synthesize(coords, w)
        fp16 = creps.synthesize(coords, w, dtype=torch.float16)
    assert fp16.dtype == torch.float32 and 0 < (fp16 - fp32).abs().max() <= 1e-2 * fp32.abs().max()


def test_costs_follow_the_official_count():
    with torch.device("meta"):
        creps = cips_deploy.Generator(creps_config("paper256"))
    # README of the official fixtures: 86.6 GFLOP of lines and 20.7 GFLOP of pixels at 256^2.
    assert 2 * creps.line_macs() * 512 == 86_641_737_728
    assert 2 * creps.pixel_macs() * 256**2 == 20_690_501_632
    assert creps.flops_per_point() > 100 * creps.grid_flops_per_point(256, 256)  # per-point engines pay two lines
    assert creps.grid_flops_per_point(2048, 2048) < creps.grid_flops_per_point(256, 256)
    assert render_bytes_per_point(creps.config) > 4 * 8 * 1024  # a point holds r slots of 1024 channels


def test_checkpoint_round_trip_and_info(creps, tmp_path):
    path = tmp_path / "creps.safetensors"
    creps.save(path)
    loaded = cips_deploy.load(path)
    assert isinstance(loaded, CrepsGenerator) and loaded.config == creps.config
    w, coords = styles(creps), grid_coords(8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(coords, w), creps.synthesize(coords, w))
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0 and "CREPS" in result.output
    assert "line_flops_per_position" in result.output and "pixel_flops_per_pixel" in result.output


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
            w = generator.map(cips_deploy.seed_latent(1, generator.config))
            direct = cips_deploy.rgb_to_uint8(generator.synthesize(grid_coords(24, 32), w)).reshape(24, 32, 3)
        assert np.array_equal(direct, rendering.image)


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
    rgb = engine.synthesize(coords.numpy(), w.expand(2, -1).contiguous().numpy())  # the engines run on numpy
    torch.testing.assert_close(torch.from_numpy(rgb), expected, rtol=0, atol=1e-4)
    assert engine.metadata.config.arch == "creps"


def test_bench_reference_runs_the_official_way_for_creps():
    result = CliRunner().invoke(cli, ["bench", "--preset", "tiny", "--arch", "creps", "--reference", "--resolution", "16",
                                      "--repeats", "1", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    rows = __import__("json").loads(result.output)["results"]
    assert {case["backend"] for case in rows} == {"torch", "reference"}


def test_chunks_are_sized_for_composing_and_the_per_point_path_runs_in_batches(creps):
    backend = TorchBackend(creps)
    per_point_bytes = render_bytes_per_point(creps.config)
    assert backend.bytes_per_point() < per_point_bytes  # chunks compose from cached lines
    assert backend.lines.point_batch % 64 == 0
    assert backend.lines.point_batch * per_point_bytes <= backend.preferred_memory_budget() * 2**20
    cache = LineCache(creps, max_bytes=1 << 20, point_batch=64)
    coords = torch.rand(1, 320, 2) * 2 - 1
    w = styles(creps)
    with torch.inference_mode():
        assert torch.equal(cache.per_point(coords, w), creps.synthesize(coords, w))
        per_point_w = w[:, None].expand(-1, 320, -1)
        assert torch.equal(cache.per_point(coords, per_point_w), creps.synthesize(coords, per_point_w))
