"""The comparison core (cips_deploy/runtime/compare.py) on made-up numpy backends: figures,
bounds, worst points, and that both sides get the same points in whole-row chunks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cips_deploy.contracts.backend import Backend
from cips_deploy.errors import CipsError
from cips_deploy.exporters.metadata import read_onnx_metadata
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.runtime.compare import GRID, POINTS, Tolerance, compare_backends

pytestmark = pytest.mark.runtime
CONFIG = read_onnx_metadata(DEMO_ENGINE).config  # a cylinder model, style width 64


class Exact(Backend):
    """rgb = (u + w0, v * w1, u * v) exactly; ``offset`` is added to channel 2 where u > 0.5 and v > 0.5
    (there u * v lies in (0.25, 1]: a negative offset stays inside [-1, 1], unclipped)."""

    name = "exact"

    def __init__(self, model=None, *, device="cpu", offset=0.0, map_shift=0.0):
        self.config, self.offset, self.map_shift, self.calls = CONFIG, offset, map_shift, []

    def map(self, z, truncation=1.0):
        return (z * 0.5 + self.map_shift).astype(np.float32)

    def run(self, coords, w):
        self.calls.append(coords.copy())
        u, v = coords[..., 0], coords[..., 1]
        rgb = np.stack([u + w[:, :1], v * w[:, 1:2], u * v], axis=-1).astype(np.float32)
        rgb[..., 2] += np.where((u > 0.5) & (v > 0.5), self.offset, 0.0).astype(np.float32)
        return rgb


def test_identical_models_compare_equal(registry):
    a, b = Exact(), Exact()
    result = compare_backends(registry, a, b, seeds=[0, 1], topology="cylinder", height=8, width=16)
    assert result.passed and result.max_abs == 0.0 and math.isinf(result.psnr) and result.beyond == 0
    assert result.points_per_seed == 128 and [case["seed"] for case in result.cases] == [0, 1]
    assert all(np.array_equal(x, y) for x, y in zip(a.calls, b.calls))  # the same points on both sides
    report = result.to_dict()  # strict JSON: an infinite PSNR is null, nowhere Infinity
    assert report["psnr"] is None and all(case["psnr"] is None for case in report["cases"])
    json.loads(json.dumps(report, allow_nan=False))


def test_an_offset_is_measured_and_located(registry):
    result = compare_backends(registry, Exact(offset=-0.25), Exact(), mode=POINTS, points=1000, seeds=[3],
                              tolerance=Tolerance(atol=0.1))
    assert result.max_abs == pytest.approx(0.25, abs=1e-6) and not result.passed
    assert "differ by more than atol 0.1" in result.failures[0]
    worst = result.worst_points[0]
    assert worst["u"] > 0.5 and worst["v"] > 0.5 and worst["abs_error"] == pytest.approx(0.25, abs=1e-6)
    assert worst["a"][2] - worst["b"][2] == pytest.approx(-0.25, abs=1e-6) and len(result.worst_points) == 5
    rng = np.random.default_rng(3)  # the documented points: default_rng(seed), uniform in [-1, 1]^2
    points = rng.uniform(-1, 1, (1000, 2)).astype(np.float32)
    assert np.array_equal(points[worst["index"]], [worst["u"], worst["v"]])
    shifted = int(((points[:, 0] > 0.5) & (points[:, 1] > 0.5)).sum())
    assert result.beyond == shifted and result.mean_abs == pytest.approx(0.25 * shifted / 3000, rel=1e-5)
    assert result.psnr == pytest.approx(10 * math.log10(4 / (0.25**2 * shifted / 3000)), rel=1e-4)


def test_bounds_in_force(registry):
    def run(**bounds):
        return compare_backends(registry, Exact(offset=-0.01), Exact(), mode=POINTS, points=500, tolerance=Tolerance(**bounds))
    assert not run().passed  # the default: atol 1e-4
    assert run(atol=0.02).passed
    assert run(psnr_min=30).passed and run(psnr_min=30).tolerance.atol is None  # only the PSNR is checked
    failed = run(psnr_min=200)
    assert failed.failures == [f"the PSNR {failed.psnr:.2f} dB is below --psnr-min 200 dB"]
    assert not run(atol=0.0, rtol=0.001).passed and run(atol=0.0, rtol=10.0).passed  # |b| scales the bound
    with pytest.raises(CipsError, match="--atol must be a finite number"):
        Tolerance(atol=-1.0)


def test_styles_each_sides_own_or_shared(registry):
    own = compare_backends(registry, Exact(map_shift=0.1), Exact(), mode=POINTS, points=64)
    assert own.cases[0]["style_max_abs"] == pytest.approx(0.1, abs=1e-6) and own.max_abs > 0.05
    shared = compare_backends(registry, Exact(map_shift=0.1), Exact(), mode=POINTS, points=64, shared_style=True)
    assert shared.cases[0]["style_max_abs"] == 0.0 and shared.max_abs == 0.0


def test_grid_chunks_are_whole_rows(registry):
    a = Exact()
    compare_backends(registry, a, Exact(), topology="flat", height=10, width=30, chunk_points=100)
    sizes = [len(call[0]) for call in a.calls]
    assert sum(sizes) == 300 and all(size % 30 == 0 and size <= 100 for size in sizes)


def test_models_that_differ_or_bad_requests_are_refused(registry):
    other = Exact()
    other.config = type(CONFIG).from_dict({**CONFIG.to_dict(), "coordinate_space": "plane"})
    with pytest.raises(CipsError, match="not the same model"):
        compare_backends(registry, Exact(), other)
    with pytest.raises(CipsError, match="--points must be"):
        compare_backends(registry, Exact(), Exact(), mode=POINTS, points=0)
    with pytest.raises(CipsError, match="Unknown topology"):
        compare_backends(registry, Exact(), Exact(), mode=GRID, topology="nope")
