"""``cips-deploy project``: a projection reproduces a render of a known style, its file is what
``render --w`` reads, the target is read through limits, and bad input is one sentence.

Torch-free tests (the target reader, the file format, the command without torch) are marked
``runtime``; the others import torch inside.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.media.projection import read_target, write_projection
from cips_deploy.models import CREPS_DEMO_MODEL, DEMO_ENGINE, DEMO_MODEL


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def one_sentence(text: str) -> bool:
    line = text.strip().splitlines()[-1]
    return line.startswith("Error: ") and "Traceback" not in text and line.count(". ") == 0


@pytest.fixture
def one_thread():
    """One torch thread: on a contended 2-core machine two threads spin-wait each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


# ------------------------------------------------------------------- torch-free: target and file


@pytest.mark.runtime
def test_the_target_is_cropped_or_stretched_to_a_square(tmp_path):
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20] = (255, 0, 0)  # left third red, middle green, right third blue
    wide[:, 20:40] = (0, 255, 0)
    wide[:, 40:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    cropped = read_target(tmp_path / "wide.png", 10, "crop")
    stretched = read_target(tmp_path / "wide.png", 12, "stretch")
    assert cropped.shape == (10, 10, 3) and cropped.dtype == np.float32 and stretched.shape == (12, 12, 3)
    assert np.allclose(cropped[:, 2:8], [-1, 1, -1], atol=0.05)  # the centre square: green
    assert np.allclose(stretched[:, 0], [1, -1, -1], atol=0.05) and np.allclose(stretched[:, -1], [-1, -1, 1], atol=0.05)


@pytest.mark.runtime
def test_a_bad_target_is_one_sentence(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(CipsError, match=r"not an image this install can read"):
        read_target(tmp_path / "text.png", 16)
    Image.new("L", (70_000, 1)).save(tmp_path / "long.png")  # the header is read, nothing decoded
    with pytest.raises(CipsError, match=r"70,000 x 1 pixels; a target may have at most 65,536 on a side"):
        read_target(tmp_path / "long.png", 16)
    with pytest.raises(CipsError, match=r"No such target image"):
        read_target(tmp_path / "missing.png", 16)
    with pytest.raises(CipsError, match=r"is a folder"):
        read_target(tmp_path, 16)


@pytest.mark.runtime
def test_the_projection_file_is_what_render_w_reads(tmp_path):
    from cips_deploy.contracts.config import GeneratorConfig
    from cips_deploy.media.saved_style import read_saved_style

    config = GeneratorConfig(arch="skip", size=16, hidden=8, style_dim=4, n_mlp=1, widths=(8, 8))
    ws = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    path = tmp_path / "proj.npz"
    arguments = dict(styles=ws, trajectory=np.stack([ws * 0, ws]), loss=np.array([2.0, 1.0]), config=config.to_dict(),
                     source_hash="ab" * 32, target_size=(16, 16))
    write_projection(path, overwrite=False, **arguments)
    with np.load(path, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["config", "loss", "source_hash", "target_size", "trajectory", "view", "ws"]
        assert saved["ws"].dtype == np.float32 and saved["trajectory"].shape == (2, 1, 3, 4) and saved["loss"].dtype == np.float32
        assert json.loads(str(saved["config"])) == config.to_dict() and saved["target_size"].tolist() == [16, 16]
    style = read_saved_style(path)
    assert np.array_equal(style.w, ws) and style.source_hash == "ab" * 32 and style.config == config.to_dict()
    with pytest.raises(CipsError, match=r"already exists; pass --force"):
        write_projection(path, overwrite=False, **arguments)


@pytest.mark.runtime
def test_without_torch_the_command_says_it_needs_the_build_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "torch" else real(name, *args))
    Image.new("RGB", (8, 8)).save(tmp_path / "t.png")
    result = invoke("project", tmp_path / "t.png", "-o", tmp_path / "p.npz")
    assert result.exit_code == 1 and "`cips-deploy project` needs PyTorch" in result.output and one_sentence(result.output)
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.runtime
def test_bad_arguments_are_one_sentence_before_any_work(tmp_path):
    """Checked before the build extra is needed: the same sentences in a torch-free install."""
    Image.new("RGB", (8, 8)).save(tmp_path / "t.png")
    (tmp_path / "taken.npz").write_bytes(b"mine")
    cases = [
        (["-o", tmp_path / "p.png"], "must be a .npz file"),
        (["-o", tmp_path / "taken.npz"], "already exists; pass --force"),
        (["-o", tmp_path / "p.npz", "--image", tmp_path / "p.npz"], "must name different files"),
        (["-o", tmp_path / "p.npz", "--video", tmp_path / "p.gif"], "must be a .webp"),
        (["-o", tmp_path / "no" / "p.npz"], "does not exist"),
        (["-o", tmp_path / "p.npz", "--checkpoint", DEMO_ENGINE], "exported engine; projection needs the model's gradients"),
    ]
    for extra, expected in cases:
        result = invoke("project", tmp_path / "t.png", *extra)
        assert result.exit_code == 1 and expected in result.output and one_sentence(result.output), (extra, result.output)
    assert (tmp_path / "taken.npz").read_bytes() == b"mine"
    assert invoke("project", tmp_path / "t.png", "--steps", "0").exit_code == 1  # out of range: one sentence too


# ------------------------------------------------------------------- torch: the loss, the view, projection


def test_ms_ssim_is_one_for_equal_images_and_falls_with_noise():
    import torch

    from cips_deploy.families.projector import ms_ssim

    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 32, 32, generator=g)  # [B, C, H, W] in [0, 1]
    noisy = (image + 0.1 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    noisier = (image + 0.3 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    same = ms_ssim(image, image)
    assert same.shape == (2,) and torch.allclose(same, torch.ones(2), atol=1e-5)
    assert (ms_ssim(image, noisy) < 0.99).all() and (ms_ssim(image, noisier) < ms_ssim(image, noisy)).all()
    assert torch.allclose(ms_ssim(image[:, :, :8, :8], image[:, :, :8, :8]), torch.ones(2), atol=1e-5)  # one scale, a 7-wide window
    with pytest.raises(CipsError, match=r"two \[B, C, H, W\] images of one shape"):
        ms_ssim(image, image[:, :, :16])


def test_a_cylinder_view_is_the_training_crop_at_its_heading():
    from cips_deploy.families.projector import view_coords
    from cips_deploy.runtime.coords import grid_coords

    view = view_coords("cylinder", 16, centre=0.0, fov=90.0)[0]
    assert view.shape == (256, 2) and view[:, 0].min() == pytest.approx(-0.25) and view[:, 0].max() == pytest.approx(0.25)
    assert view[:, 1].min() == -1 and view[:, 1].max() == 1
    turned = view_coords("cylinder", 16, centre=90.0, fov=90.0)[0]
    assert np.allclose(turned[:, 0], view[:, 0] + 0.5, atol=1e-6) and np.array_equal(turned[:, 1], view[:, 1])
    assert np.array_equal(view_coords("plane", 16), grid_coords(16, 16))


def test_auto_heading_finds_where_the_average_style_draws_the_target(one_thread):
    import cips_deploy
    from cips_deploy.families.projector import best_heading, render_view, view_coords

    generator = cips_deploy.load(DEMO_MODEL)
    average = generator.w_avg[None].numpy()
    target = render_view(generator, view_coords("cylinder", 16, centre=93.0, fov=90.0), average, 16, 16)
    assert best_heading(generator, target, 90.0) == 93.0  # on the 3-degree search grid


def test_a_per_layer_projection_saves_one_style_per_layer(tmp_path, one_thread):
    import cips_deploy

    generator = cips_deploy.load(CREPS_DEMO_MODEL)
    layers = generator.config.family.style_layers(generator.config)
    Image.new("RGB", (40, 30), (200, 120, 40)).save(tmp_path / "t.png")
    result = invoke("project", tmp_path / "t.png", "--checkpoint", CREPS_DEMO_MODEL, "--per-layer", "--steps", 3,
                    "--save-every", 2, "--size", 8, "--device", "cpu", "-q", "-o", tmp_path / "p.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "p.npz", allow_pickle=False) as saved:
        assert "w" not in saved.files and saved["ws"].shape == (1, layers, generator.config.style_dim)
        assert saved["trajectory"].shape == (2, 1, layers, generator.config.style_dim)  # steps 2 and 3 (the last)
        assert np.array_equal(saved["trajectory"][-1], saved["ws"]) and saved["loss"].shape == (2,)
        assert saved["target_size"].tolist() == [8, 8]


def test_a_plane_model_is_matched_in_its_training_framing(tmp_path, tiny_checkpoint, one_thread):
    """A random-weight plane model (no tracked w_avg: the mean of mapped styles is the start);
    CIPS per-layer styles run, with the warning that the family was trained with one."""
    Image.new("RGB", (16, 16), (30, 90, 200)).save(tmp_path / "t.png")
    result = invoke("project", tmp_path / "t.png", "--checkpoint", tiny_checkpoint, "--per-layer", "--angle", "auto",
                    "--steps", 12, "--size", 16, "--device", "cpu", "-q", "-o", tmp_path / "p.npz")
    assert result.exit_code == 0, result.output
    assert "trained with one style for all layers" in result.output and "its training framing (u -1 to 1)" in result.output
    with np.load(tmp_path / "p.npz", allow_pickle=False) as saved:
        assert saved["view"].tolist() == [-1, 1, -1, 1] and saved["ws"].shape[1] > 1
        assert saved["loss"][-1] < saved["loss"][0]


@pytest.mark.slow
def test_a_projection_of_a_known_style_reaches_30_db_and_renders_as_a_panorama(tmp_path, one_thread):
    """The issue's test: render a truncated seed's style of the demo model in the view the
    projector matches, project it, and render the saved style again through the public API."""
    import cips_deploy
    from cips_deploy.runtime.hashing import file_sha256

    view = dict(u_min=-0.25, u_max=0.25)  # the demo's 90-degree training view at heading 0
    known = cips_deploy.render(DEMO_MODEL, "flat", 32, 32, seed=3, truncation=0.7, **view)
    Image.fromarray(known).save(tmp_path / "known.png")
    result = invoke("project", tmp_path / "known.png", "--steps", 80, "--device", "cpu", "-q",
                    "-o", tmp_path / "proj.npz", "--image", tmp_path / "proj.png", "--video", tmp_path / "proj.webp")
    assert result.exit_code == 0, result.output
    generator = cips_deploy.load(DEMO_MODEL)
    with np.load(tmp_path / "proj.npz", allow_pickle=False) as saved:
        w = saved["w"]
        assert w.shape == (1, generator.config.style_dim) and w.dtype == np.float32
        assert saved["trajectory"].shape == (80, 1, generator.config.style_dim) and np.array_equal(saved["trajectory"][-1], w)
        assert json.loads(str(saved["config"])) == generator.config.to_dict()
        assert str(saved["source_hash"]) == file_sha256(DEMO_MODEL) and saved["target_size"].tolist() == [32, 32]
        assert saved["loss"][-1] < saved["loss"][0]
    reconstruction = cips_deploy.render(DEMO_MODEL, "flat", 32, 32, style=w, **view)
    assert psnr(reconstruction, known) >= 30.0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "proj.png")), reconstruction)
    with Image.open(tmp_path / "proj.webp") as video:
        # target | projection, 8x; WebP merges equal frames (the converged end) into longer ones
        assert 2 <= video.n_frames <= 80 and video.size == (512, 256)
    panorama = invoke("render", "--w", tmp_path / "proj.npz", "-t", "cylinder", "--height", 32, "-q", "-o", tmp_path / "pano.png")
    assert panorama.exit_code == 0, panorama.output
    pano = np.asarray(Image.open(tmp_path / "pano.png"))
    assert pano.shape == (32, 128, 3)
    # Its middle quarter is the projected view (columns at nearly the same u as the view's).
    assert psnr(pano[:, 48:80], known) >= 25.0
