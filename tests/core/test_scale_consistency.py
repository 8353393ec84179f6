"""``cips-deploy scale-consistency`` and the metrics under it (cips_deploy.measure.metrics).

PSNR and SSIM are our own numpy code, so they are checked against what can be computed by
hand (closed forms, a direct loop over windows) and, where scikit-image happens to be
installed, against it. The protocol is checked on real renders: a tiny CIPS, a generator
whose colour ignores the coordinates, and a linear colour ramp that shows the box filter
sits exactly on the small render's pixel centres.
"""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cips_deploy
from cips_deploy.measure import metrics
from cips_deploy.contracts.backend import Backend
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.measure.metrics import box_downsample, pixel_centre_viewport, psnr, scale_consistency, ssim

TINY = ["--preset", "tiny"]
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def random_image(seed: int, shape=(16, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. (2004) straight from the formula: an explicit 11 x 11 Gaussian window at
    every valid position, means and (population) variances from their definitions."""
    offsets = np.arange(-5, 6, dtype=np.float64)
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    a, b = a.astype(np.float64), b.astype(np.float64)
    channel_means = []
    for channel in range(a.shape[2]):
        values = []
        for row in range(a.shape[0] - 10):
            for column in range(a.shape[1] - 10):
                x = a[row : row + 11, column : column + 11, channel]
                y = b[row : row + 11, column : column + 11, channel]
                mx, my = (window * x).sum(), (window * y).sum()
                vx, vy = (window * (x - mx) ** 2).sum(), (window * (y - my) ** 2).sum()
                cxy = (window * (x - mx) * (y - my)).sum()
                values.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2)))
        channel_means.append(np.mean(values))
    return float(np.mean(channel_means))


# --------------------------------------------------------------------------- metrics


def test_psnr_of_identical_images_is_inf_and_of_a_known_mse_the_formula():
    image = random_image(0)
    assert psnr(image, image) == math.inf
    brighter = image.astype(np.float64) + 3.0  # MSE 9 exactly
    assert psnr(image, brighter) == pytest.approx(10 * math.log10(255**2 / 9), abs=1e-12)
    one_off = image.astype(np.float64)
    one_off[0, 0, 0] += 16.0  # MSE 256 / 768
    assert psnr(image, one_off) == pytest.approx(10 * math.log10(255**2 * 768 / 256), abs=1e-12)


def test_ssim_identical_images_give_exactly_one():
    for seed in range(3):
        image = random_image(seed, (20, 17, 3))
        assert ssim(image, image) == 1.0
    constant = np.full((16, 16, 3), 77, np.uint8)
    assert ssim(constant, constant) == 1.0


@pytest.mark.parametrize("level, offset", [(100.0, 20.0), (0.0, 255.0), (200.0, -3.0)])
def test_ssim_of_two_constant_images_is_the_luminance_closed_form(level, offset):
    # No variance and no covariance: only the luminance term is left.
    a, b = np.full((16, 16, 3), level), np.full((16, 16, 3), level + offset)
    expected = (2 * level * (level + offset) + C1) / (level**2 + (level + offset) ** 2 + C1)
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_is_symmetric_and_matches_a_direct_loop():
    a, b = random_image(1), random_image(2)
    smoothed = (a.astype(np.float64) + np.roll(a, 1, axis=0)) / 2  # a correlated partner
    for x, y in ((a, b), (a, smoothed), (smoothed, np.round(smoothed))):
        assert ssim(x, y) == pytest.approx(ssim(y, x), abs=1e-15)
        assert ssim(x, y) == pytest.approx(naive_ssim(x, y), abs=1e-10)
    assert 0.0 < ssim(a, smoothed) < 1.0


def test_ssim_matches_scikit_image_where_it_is_installed():
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed (not a dependency)")
    a, b = random_image(3, (40, 33, 3)), random_image(4, (40, 33, 3))
    b = ((a.astype(np.int16) + b) // 2).astype(np.uint8)
    expected = skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_metrics_refuse_mismatched_or_too_small_images():
    with pytest.raises(CipsError, match="shapes"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(CipsError, match="at least 11"):
        ssim(np.zeros((10, 40, 3)), np.zeros((10, 40, 3)))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_box_downsample_undoes_a_nearest_upsample_exactly(factor):
    image = random_image(factor, (6, 5, 3))
    upsampled = image.repeat(factor, axis=0).repeat(factor, axis=1)
    down = box_downsample(upsampled, factor)
    assert down.dtype == np.float64 and down.shape == image.shape
    assert np.array_equal(down, image.astype(np.float64))


def test_box_downsample_is_the_block_mean():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    assert box_downsample(image, 2)[..., 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


# --------------------------------------------------------------------------- real behaviour


class RampBackend(Backend):
    """Colour linear in the coordinates: rgb = (0.9 u, 0.9 v, 0.45 (u + v)), any style."""

    name = "ramp"

    def __init__(self, config):
        self.config = config

    def map(self, z, truncation=1.0):
        return np.zeros((z.shape[0], self.config.style_dim), dtype=np.float32)

    def run(self, coords, w):
        u, v = coords[..., 0], coords[..., 1]
        return np.stack([0.9 * u, 0.9 * v, 0.45 * (u + v)], axis=-1).astype(np.float32)


def test_the_box_filter_sits_on_the_small_renders_pixel_centres(tiny):
    # A linear ramp is reproduced by any centred average, so the downsampled large render may
    # differ from the small one by rounding alone: at most 1 level (PSNR >= 48.1 dB). The
    # flat topology's default linspace grid is off-centre and visibly worse.
    backend = RampBackend(tiny.config)
    result = scale_consistency(backend, size=16, factor=4, samples=1)
    assert result["mean"]["psnr"] >= 10 * math.log10(255**2)
    small = cips_deploy.render(backend, "flat", 16, 16, **pixel_centre_viewport(16))
    large = cips_deploy.render(backend, "flat", 64, 64, **pixel_centre_viewport(64))
    assert np.abs(box_downsample(large, 4) - small).max() <= 1.0
    linspace = psnr(cips_deploy.render(backend, "flat", 16, 16), box_downsample(cips_deploy.render(backend, "flat", 64, 64), 4))
    assert linspace < result["mean"]["psnr"] - 10


def test_a_tiny_cips_is_measurably_but_not_perfectly_consistent(tiny):
    result = scale_consistency(tiny, size=16, factor=2, samples=2, seed=5)
    assert [entry["seed"] for entry in result["per_sample"]] == [5, 6]
    for entry in result["per_sample"] + [result["mean"]]:
        assert math.isfinite(entry["psnr"]) and 5.0 < entry["psnr"] < 60.0
        assert 0.0 < entry["ssim"] <= 1.0
    assert result["mean"]["psnr"] == pytest.approx(np.mean([entry["psnr"] for entry in result["per_sample"]]))
    assert result["lpips"]["status"] in ("computed", "skipped")


def constant_colour_generator() -> cips_deploy.Generator:
    """A real CIPSskip whose ToRGB projections are zero: its colour is the sum of the ToRGB
    biases at every coordinate, so every resolution draws the same flat image."""
    generator = cips_deploy.create("tiny", seed=0)
    with torch.no_grad():
        for name, parameter in generator.named_parameters():
            if name.endswith("to_rgb.linear.weight"):
                parameter.zero_()
            elif name.endswith("to_rgb.bias"):
                parameter.fill_(0.1)
    return generator


def test_a_resolution_independent_generator_scores_inf_and_json_says_so(tmp_path):
    checkpoint = tmp_path / "flat-colour.safetensors"
    constant_colour_generator().save(checkpoint)
    result = run("scale-consistency", str(checkpoint), "--size", "16", "--factor", "3", "--samples", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [entry["psnr"] for entry in report["per_sample"]] == ["inf", "inf"]
    assert report["mean"]["psnr"] == "inf" and report["mean"]["ssim"] == 1.0
    assert '"inf"' in report["note"]


# --------------------------------------------------------------------------- LPIPS


def test_lpips_is_skipped_with_a_reason_when_it_cannot_load(monkeypatch):
    constructed = []

    class Unloadable:
        def __init__(self, **options):
            constructed.append(options)
            raise RuntimeError("no weights here")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=Unloadable))
    model, reason = metrics.load_lpips()
    assert model is None and reason  # torchvision missing, weights not cached, or the load failed
    monkeypatch.setitem(sys.modules, "lpips", None)  # what Python does for a missing package: ImportError
    assert metrics.load_lpips() == (None, "the lpips package is not installed")


def test_lpips_values_are_reported_when_a_model_is_available(monkeypatch, tiny):
    fake = lambda a, b: (a - b).abs().mean().reshape(1, 1, 1, 1)  # noqa: E731  (stands in for LPIPS)
    monkeypatch.setattr(metrics, "load_lpips", lambda: (fake, ""))
    result = scale_consistency(tiny, size=16, factor=2, samples=2)
    assert result["lpips"]["status"] == "computed"
    assert all(entry["lpips"] > 0 for entry in result["per_sample"]) and result["mean"]["lpips"] > 0


# --------------------------------------------------------------------------- CLI


def test_cli_json_report():
    result = run("scale-consistency", *TINY, "--size", "16", "--factor", "2", "--samples", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["size"] == 16 and report["factor"] == 2 and report["large_size"] == 32
    assert len(report["per_sample"]) == report["samples"] == 2
    assert all(5.0 < entry["psnr"] < 60.0 and 0.0 < entry["ssim"] <= 1.0 for entry in report["per_sample"])
    assert report["mean"]["psnr"] == pytest.approx(np.mean([entry["psnr"] for entry in report["per_sample"]]))
    assert "preset tiny" in report["model"] and report["lpips"]["status"] in ("computed", "skipped")


def test_cli_table_has_a_row_per_seed_and_a_mean_line():
    result = run("scale-consistency", *TINY, "--size", "16", "--samples", "2", "--seed", "7")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()]
    assert [row[0] for row in rows if row and row[0] in ("7", "8", "mean")] == ["7", "8", "mean"]
    mean = next(row for row in rows if row and row[0] == "mean")
    assert 5.0 < float(mean[1]) < 60.0 and 0.0 < float(mean[2]) <= 1.0


def test_cli_output_file_is_written_once_and_replaced_only_with_force(tmp_path):
    destination = tmp_path / "report.json"
    args = ["scale-consistency", *TINY, "--size", "12", "--samples", "1", "-o", str(destination)]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert f"Wrote {destination}." in first.output
    report = json.loads(destination.read_text())
    assert report["size"] == 12 and len(report["per_sample"]) == 1
    before = destination.read_bytes()
    again = run(*args, "--seed", "3")
    assert again.exit_code == 1 and "already exists" in again.output
    assert destination.read_bytes() == before
    forced = run(*args, "--seed", "3", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads(destination.read_text())["per_sample"][0]["seed"] == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "args, message",
    [
        ([*TINY, "--factor", "1"], "factor must be a whole number of at least 2"),
        ([*TINY, "--factor", "1.5"], "--factor takes a whole number"),
        ([*TINY, "--size", "8"], "at least 11"),
        ([*TINY, "--size", "4096", "--factor", "4"], "limit is 8,192"),
        ([*TINY, "--samples", "0"], "from 1 to 10,000"),
        ([*TINY, "--samples", "10001"], "from 1 to 10,000"),
        (["missing.safetensors"], "No such checkpoint"),
        ([], "Give the CHECKPOINT"),
        (["model.pt", *TINY], "not both"),
    ],
)
def test_bad_input_is_one_sentence_without_traceback(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run("scale-consistency", "--size", "16", "--samples", "1", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
