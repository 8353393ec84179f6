"""The gen_images-style coordinate transform (--translate, --rotate, --scale) and --trunc:
composed with any topology, applied before the backend, chunk-invariant, streamed alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.contracts.topology import TopologyRequest, resolve_parameters
from cips_deploy.errors import CipsError
from cips_deploy.runtime.coords import CoordinateTransform, linspace
from cips_deploy.runtime.gigapixel import render_to_array, render_to_file
from cips_deploy.runtime.images import rgb_to_uint8
from cips_deploy.runtime.render import make_backend, render, render_detailed
from cips_deploy.runtime.render_setup import Controls

tifffile = pytest.importorskip("tifffile")

TRANSFORMS = [
    {"translate": (0.3, -0.2)},
    {"scale": 1.7},
    {"rotate": 30.0},
    {"translate": (-0.4, 0.25), "rotate": -110.0, "scale": 0.6},
]


@pytest.fixture(scope="module")
def creps():
    return cips_deploy.create("tiny", arch="creps", seed=0)


@pytest.fixture(scope="module")
def models(tiny, creps):
    return {"cips": tiny, "creps": creps}


def topology_points(registry, topology: str, height: int, width: int, space: str = "plane", **params) -> np.ndarray:
    entry = registry.get("topology", topology)
    layout = entry.item.layout(TopologyRequest(height, width, space, resolve_parameters(entry.item, params)))
    return np.asarray(layout.points(0, layout.n_points), dtype=np.float32)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------ the convention


def test_the_transform_is_the_documented_camera_move():
    points = np.array([[0.5, 0.0], [0.0, 0.5], [-0.25, 0.75]], dtype=np.float32)
    moved = CoordinateTransform(translate=(0.1, -0.2), rotate=90.0, scale=2.0).apply(points)
    # p' = t + S R p, R(90) = [[0, -1], [1, 0]] in (u, v) with v down
    expected = np.array([[0.1, -0.2 + 1.0], [0.1 - 1.0, -0.2], [0.1 - 1.5, -0.2 - 0.5]], dtype=np.float32)
    np.testing.assert_allclose(moved, expected, atol=1e-6)
    assert CoordinateTransform(translate=(0.5, 0)).separable and not CoordinateTransform(rotate=10).separable


@pytest.mark.parametrize("family", ["cips", "creps"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: "-".join(t))
def test_a_transformed_render_is_the_model_at_the_transformed_coordinates(models, registry, family, transform):
    model = models[family]
    height, width = 12, 20
    image = render(model, "flat", height, width, seed=4, transform=transform, chunk_size=70, registry=registry)
    points = topology_points(registry, "flat", height, width)
    cos, sin = np.cos(np.radians(transform.get("rotate", 0.0))), np.sin(np.radians(transform.get("rotate", 0.0)))
    s = transform.get("scale", 1.0)
    tx, ty = transform.get("translate", (0.0, 0.0))
    u, v = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    moved = np.stack([tx + s * (cos * u - sin * v), ty + s * (sin * u + cos * v)], axis=-1).astype(np.float32)  # float64, independently
    w = model.map(cips_deploy.seed_latent(4, model.config))
    with torch.inference_mode():
        expected = rgb_to_uint8(model.synthesize(moved[None], w)[0].numpy()).reshape(height, width, 3)
    difference = np.abs(image.astype(int) - expected.astype(int))
    assert difference.max() <= 1  # float32 rounding of the coordinates, at most one level
    assert (difference == 0).mean() > 0.97
    assert not np.array_equal(image, render(model, "flat", height, width, seed=4, registry=registry))


@pytest.mark.parametrize("family", ["cips", "creps"])
def test_chunking_does_not_change_a_pixel(models, registry, family):
    transform = {"translate": (0.2, 0.1), "rotate": 17.0, "scale": 1.3}
    images = [
        render(models[family], "flat", 16, 24, seed=2, transform=transform, chunk_size=size, registry=registry)
        for size in (None, 37, 200)
    ]
    for image in images[1:]:
        np.testing.assert_array_equal(image, images[0])


@pytest.mark.parametrize("family", ["cips", "creps"])
def test_a_streamed_render_takes_the_same_transform(models, registry, family, tmp_path):
    transform = {"translate": (0.5, -0.1), "scale": 0.8, "rotate": 5.0}
    expected = render(models[family], "flat", 20, 28, seed=1, transform=transform, registry=registry)
    cells = render_to_array(models[family], topology="flat", height=20, width=28, seed=1, controls=Controls.make(transform), registry=registry)
    np.testing.assert_array_equal(cells, expected)
    output = tmp_path / "out.tif"
    render_to_file(models[family], output, height=20, width=28, seed=1, controls=Controls.make(transform), registry=registry)
    np.testing.assert_array_equal(tifffile.imread(output), expected)


def test_rotate_on_a_square_flat_render_is_the_rotated_topology(tiny, registry):
    transformed = render(tiny, "flat", 16, 16, seed=3, transform={"rotate": 30.0, "scale": 1.5}, registry=registry)
    rotated = render(tiny, "rotated", 16, 16, seed=3, angle=30.0, scale=1.5, registry=registry)
    np.testing.assert_array_equal(transformed, rotated)


def test_translating_by_one_pixel_shifts_the_image_by_one_pixel(tiny, registry):
    width = 24
    pitch = float(linspace(-1, 1, width)[1] - linspace(-1, 1, width)[0])  # the flat grid's column spacing
    original = render(tiny, "flat", 16, width, seed=5, registry=registry)
    shifted = render(tiny, "flat", 16, width, seed=5, transform={"translate": (pitch, 0.0)}, registry=registry)
    difference = np.abs(shifted[:, :-1].astype(int) - original[:, 1:].astype(int))  # the camera moved right: content left
    assert difference.max() <= 1 and (difference == 0).mean() > 0.97
    assert not np.array_equal(shifted, original)


def test_the_transform_composes_with_a_cylinder_panorama(registry):
    model = cips_deploy.create("tiny", seed=1, coordinate_space="cylinder")
    width = 32
    original = render(model, "cylinder", 8, width, seed=0, registry=registry)
    # u is an angle: a quarter turn (0.5 in u) is a quarter of the panorama's columns, exactly (cyclic)
    turned = render(model, "cylinder", 8, width, seed=0, transform={"translate": (0.5, 0.0)}, registry=registry)
    difference = np.abs(turned.astype(int) - np.roll(original, -width // 4, axis=1).astype(int))
    assert difference.max() <= 1


def test_translate_and_scale_keep_creps_grids_on_lines_and_rotation_does_not(creps, registry):
    runner = make_backend(registry, "torch", creps, "cpu", {})
    try:
        render_detailed(runner, "flat", 12, 20, transform={"translate": (0.1, 0.2), "scale": 0.7}, registry=registry)
        axes = runner.lines.axes
        assert (axes["row"].count, axes["column"].count) == (12, 20)  # one line per row and per column
    finally:
        runner.close()
    runner = make_backend(registry, "torch", creps, "cpu", {})
    try:
        render_detailed(runner, "flat", 12, 20, transform={"rotate": 20.0}, registry=registry)
        assert runner.lines.w is None and not runner.lines.axes  # every chunk took the per-point path
    finally:
        runner.close()


def test_the_api_refuses_a_bad_transform_in_one_sentence(tiny, registry):
    with pytest.raises(CipsError, match="scale must be greater than 0"):
        render(tiny, "flat", 8, 8, transform={"scale": 0}, registry=registry)
    with pytest.raises(CipsError, match="takes translate, rotate and scale"):
        render(tiny, "flat", 8, 8, transform={"shear": 1}, registry=registry)


# ------------------------------------------------------------------------------ the CLI


def test_cli_transform_and_trunc(tmp_path, tiny_checkpoint, registry, tiny):
    output = tmp_path / "a.png"
    result = invoke("render", "--checkpoint", str(tiny_checkpoint), "--height", "16", "--translate", "0.25,-0.5", "--rotate", "45",
                    "--scale", "2", "--trunc", "0.6", "-o", str(output))
    assert result.exit_code == 0, result.output
    expected = render(tiny, "flat", 16, 16, seed=0, truncation=0.6,
                      transform={"translate": (0.25, -0.5), "rotate": 45.0, "scale": 2.0}, registry=registry)
    np.testing.assert_array_equal(read_png(output), expected)
    spelled = tmp_path / "b.png"
    invoke("render", "--checkpoint", str(tiny_checkpoint), "--height", "16", "--truncation", "0.6", "-o", str(spelled))
    short = tmp_path / "c.png"
    invoke("render", "--checkpoint", str(tiny_checkpoint), "--height", "16", "--trunc", "0.6", "-o", str(short))
    np.testing.assert_array_equal(read_png(spelled), read_png(short))


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["--translate", "0.5"], 2, "two numbers"),
        (["--translate", "a,b"], 2, "not a number"),
        (["--scale", "0"], 1, "--scale must be greater than 0"),
        (["--rotate", "nan"], 1, "--rotate must be a finite number"),
    ],
)
def test_cli_refuses_a_bad_transform(tmp_path, args, code, text):
    result = CliRunner().invoke(cli, ["render", "--height", "8", "-o", str(tmp_path / "x.png"), *args])
    assert result.exit_code == code
    assert text in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_resume_refuses_another_transform(tmp_path, tiny, registry, monkeypatch):
    from cips_deploy.runtime import gigapixel

    output = tmp_path / "pano.tif"
    calls = {"n": 0}
    original = gigapixel.CellRenderer.render

    def interrupted(self, cell, progress=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, cell, progress)

    monkeypatch.setattr(gigapixel, "CELL_COLUMNS", 256)
    monkeypatch.setattr(gigapixel.CellRenderer, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render_to_file(tiny, output, height=8, width=600, controls=Controls.make({"rotate": 10.0}), registry=registry)
    monkeypatch.setattr(gigapixel.CellRenderer, "render", original)
    with pytest.raises(CipsError, match="another coordinate transform"):
        render_to_file(tiny, output, height=8, width=600, resume=True, controls=Controls.make({"rotate": 20.0}), registry=registry)
    render_to_file(tiny, output, height=8, width=600, resume=True, controls=Controls.make({"rotate": 10.0}), registry=registry)
    np.testing.assert_array_equal(tifffile.imread(output), render(tiny, "flat", 8, 600, transform={"rotate": 10.0}, registry=registry))
