"""Per-layer styles: the family fact style_layers, Generator.synthesize_layers, style mixing
(--mix-seed / --mix-from) through the torch backend, engines that refuse it, and render --w."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.runtime.gigapixel import render_to_array
from cips_deploy.runtime.images import rgb_to_uint8
from cips_deploy.runtime.render import render
from cips_deploy.runtime.render_setup import Controls
from cips_deploy.runtime.coords import grid_coords


@pytest.fixture(scope="module")
def creps():
    return cips_deploy.create("tiny", arch="creps", seed=0)


@pytest.fixture(scope="module")
def res():
    return cips_deploy.create("tiny", arch="res", seed=0)


@pytest.fixture(scope="module")
def models(tiny, res, creps):
    return {"skip": tiny, "res": res, "creps": creps}


def style(model, seed: int, truncation: float = 1.0) -> torch.Tensor:
    with torch.inference_mode():
        return model.map(cips_deploy.seed_latent(seed, model.config), truncation=truncation)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_style_layers_count_every_style_input(models):
    skip, res, creps = models["skip"].config, models["res"].config, models["creps"].config
    assert skip.family.style_layers(skip) == 1 + 3 * len(skip.widths)  # first, then two layers and a ToRGB per block
    assert res.family.style_layers(res) == 1 + 2 * len(res.widths) + 1  # first, two per block, one ToRGB
    assert creps.family.style_layers(creps) == models["creps"].num_ws  # the official num_ws
    assert creps.family.trained_with_layer_styles and not skip.family.trained_with_layer_styles


@pytest.mark.parametrize("arch", ["skip", "res", "creps"])
def test_equal_layer_styles_are_the_one_style_bitwise(models, arch):
    model = models[arch]
    coords = torch.from_numpy(grid_coords(6, 7))
    w = style(model, 3)
    layers = model.config.family.style_layers(model.config)
    with torch.inference_mode():
        np.testing.assert_array_equal(
            model.synthesize_layers(coords, w[:, None].expand(1, layers, -1).contiguous()).numpy(), model.synthesize(coords, w).numpy()
        )


@pytest.mark.parametrize("arch", ["skip", "res"])
def test_each_cips_style_input_drives_its_own_layer(models, arch):
    """Changing only the last style input (the final ToRGB) changes the colours; a style list of
    the wrong length is refused."""
    model = models[arch]
    coords = torch.from_numpy(grid_coords(5, 5))
    layers = model.config.family.style_layers(model.config)
    ws = style(model, 1)[:, None].expand(1, layers, -1).clone()
    with torch.inference_mode():
        base = model.synthesize_layers(coords, ws)
        ws_last = ws.clone()
        ws_last[:, -1] = style(model, 2)
        changed = model.synthesize_layers(coords, ws_last)
        assert not torch.equal(base, changed)
        with pytest.raises(CipsError, match="Per-layer styles must have shape"):
            model.synthesize_layers(coords, ws[:, :-1])


@pytest.mark.parametrize("arch", ["skip", "creps"])
def test_a_mixed_render_is_the_model_with_those_layer_styles(models, registry, arch):
    model = models[arch]
    layers = model.config.family.style_layers(model.config)
    mix_from = layers // 2
    image = render(model, "flat", 10, 14, seed=1, truncation=0.8, mix_seed=7, mix_from=mix_from, registry=registry)
    ws = style(model, 1, 0.8)[:, None].expand(1, layers, -1).clone()
    ws[:, mix_from:] = style(model, 7, 0.8)
    with torch.inference_mode():
        expected = rgb_to_uint8(model.synthesize_layers(torch.from_numpy(grid_coords(10, 14)), ws)[0].numpy()).reshape(10, 14, 3)
    difference = np.abs(image.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.97
    assert not np.array_equal(image, render(model, "flat", 10, 14, seed=1, truncation=0.8, registry=registry))
    # mixing from the first input is rendering the mix seed
    np.testing.assert_array_equal(
        render(model, "flat", 10, 14, seed=1, truncation=0.8, mix_seed=7, mix_from=0, registry=registry),
        render(model, "flat", 10, 14, seed=7, truncation=0.8, registry=registry),
    )


@pytest.mark.parametrize("arch", ["skip", "creps"])
def test_mixed_renders_are_chunk_invariant_and_stream_alike(models, registry, arch):
    model = models[arch]
    options = dict(seed=2, mix_seed=5, mix_from=3, registry=registry)
    images = [render(model, "flat", 12, 18, chunk_size=size, **options) for size in (None, 29)]
    np.testing.assert_array_equal(images[0], images[1])
    cells = render_to_array(model, topology="flat", height=12, width=18, seed=2, controls=Controls.make(mix_seed=5, mix_from=3), registry=registry)
    np.testing.assert_array_equal(cells, images[0])


def test_mixing_is_refused_in_one_sentence(tiny, registry):
    with pytest.raises(CipsError, match="must be from 0 to 15"):
        render(tiny, "flat", 8, 8, mix_seed=1, mix_from=16, registry=registry)
    with pytest.raises(CipsError, match="give --mix-from K"):
        render(tiny, "flat", 8, 8, mix_seed=1, registry=registry)
    with pytest.raises(CipsError, match="give --mix-seed too"):
        render(tiny, "flat", 8, 8, mix_from=1, registry=registry)
    with pytest.raises(CipsError, match="does not combine with per-layer styles"):
        render(tiny, "flat", 8, 8, mix_seed=1, mix_from=2, blend_seed=3, registry=registry)


def test_an_engine_refuses_mixing_and_says_what_to_do(tmp_path):
    result = CliRunner().invoke(cli, ["render", "--height", "8", "--mix-seed", "1", "--mix-from", "2", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "takes one style for all layers" in result.output and "--backend torch" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.png").exists()


def test_the_cli_says_when_a_family_was_trained_with_one_style(tmp_path, tiny_checkpoint, creps):
    runner = CliRunner()  # click 8.2+: result.stderr apart from result.output
    result = runner.invoke(cli, ["render", "--checkpoint", str(tiny_checkpoint), "--height", "8", "--mix-seed", "1", "--mix-from", "4",
                                 "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert "trained with one style for all layers" in result.stderr
    path = tmp_path / "creps.safetensors"
    creps.save(path)
    result = runner.invoke(cli, ["render", "--checkpoint", str(path), "--height", "8", "--mix-seed", "1", "--mix-from", "4",
                                 "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 0, result.output
    assert "trained with one style" not in result.stderr


# ------------------------------------------------------------------------------ render --w


def save_style(path: Path, model, key: str, value: np.ndarray, **extra) -> Path:
    np.savez(path, **{key: value}, config=np.array(json.dumps(model.config.to_dict())), **extra)
    return path


def test_render_w_of_a_seed_style_is_that_seed_render(tmp_path, tiny_checkpoint, tiny):
    proj = save_style(tmp_path / "proj.npz", tiny, "w", style(tiny, 9, 0.7).numpy(), source_hash=np.array("x"))
    by_w, by_seed = tmp_path / "w.png", tmp_path / "seed.png"
    common = ["render", "--checkpoint", str(tiny_checkpoint), "--height", "12", "--width", "20"]
    assert CliRunner().invoke(cli, [*common, "--w", str(proj), "-o", str(by_w)]).exit_code == 0
    assert CliRunner().invoke(cli, [*common, "--seed", "9", "--trunc", "0.7", "-o", str(by_seed)]).exit_code == 0
    np.testing.assert_array_equal(read_png(by_w), read_png(by_seed))


def test_render_w_takes_per_layer_styles_with_any_topology(tmp_path, creps, registry):
    checkpoint = tmp_path / "creps.safetensors"
    creps.save(checkpoint)
    layers = creps.num_ws
    ws = np.stack([style(creps, seed)[0].numpy() for seed in range(layers)])[None]  # [1, L, S], all different
    proj = save_style(tmp_path / "proj.npz", creps, "ws", ws)
    output = tmp_path / "p.png"
    result = CliRunner().invoke(cli, ["render", "--checkpoint", str(checkpoint), "--w", str(proj), "-t", "rotated", "-p", "angle=20",
                                      "--height", "10", "--width", "16", "-o", str(output)])
    assert result.exit_code == 0, result.output
    expected = render(creps, "rotated", 10, 16, style=ws, angle=20.0, registry=registry)
    np.testing.assert_array_equal(read_png(output), expected)


@pytest.mark.parametrize(
    "arrays, text",
    [
        ({"w": np.zeros((1, 7), np.float32)}, "holds a style of shape [1, 7], but this skip model takes"),
        ({"ws": np.zeros((1, 3, 64), np.float32)}, "holds a style of shape [1, 3, 64]"),
        ({"w": np.zeros((1, 64), np.float32), "ws": np.zeros((1, 16, 64), np.float32)}, "exactly one of w"),
        ({"w": np.array([None], dtype=object)}, "never unpickled"),
        ({"w": np.full((1, 64), np.nan, np.float32)}, "NaN or infinite"),
    ],
)
def test_render_w_refuses_a_bad_file_in_one_sentence(tmp_path, tiny_checkpoint, tiny, arrays, text):
    proj = tmp_path / "bad.npz"
    np.savez(proj, **arrays, config=np.array(json.dumps(tiny.config.to_dict())))
    result = CliRunner().invoke(cli, ["render", "--checkpoint", str(tiny_checkpoint), "--w", str(proj), "--height", "8", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1, result.output
    assert text in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_render_w_refuses_a_file_without_config_and_a_non_npz(tmp_path, tiny_checkpoint):
    np.savez(tmp_path / "noconfig.npz", w=np.zeros((1, 64), np.float32))
    (tmp_path / "text.npz").write_text("not a zip")
    for name, text in (("noconfig.npz", "and config"), ("text.npz", "not an .npz file")):
        result = CliRunner().invoke(cli, ["render", "--checkpoint", str(tiny_checkpoint), "--w", str(tmp_path / name), "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 1 and text in result.output, result.output


# ---------------------------------------------------------------- engines: export --layer-styles


@pytest.mark.slow  # an export and its validation per family
@pytest.mark.parametrize("arch", ["skip", "creps"])
def test_a_layer_styles_engine_renders_mixing_as_torch_does(models, registry, tmp_path, arch):
    from cips_deploy.exporters.onnx_export import export_onnx
    from cips_deploy.exporters.ort_runtime import OnnxEngine

    model = models[arch]
    path = tmp_path / f"{arch}.onnx"
    export = export_onnx(model, path, layer_styles=True)
    # Validated against synthesize_layers; a line-factored model's grid engines take ws too.
    assert export.report.ok and bool(export.grid) == model.config.family.line_factored
    engine = OnnxEngine(path)
    layers = model.config.family.style_layers(model.config)
    assert engine.metadata.layer_styles and engine.spec.inputs[1].shape == ("batch", layers, model.config.style_dim)
    options = dict(seed=1, mix_seed=4, mix_from=2, registry=registry)
    mixed = render(path, "flat", 10, 12, **options)
    difference = np.abs(mixed.astype(int) - render(model, "flat", 10, 12, **options).astype(int))
    assert difference.max() <= 1
    # one style for every layer runs on the same engine
    plain = np.abs(render(path, "flat", 10, 12, seed=3, registry=registry).astype(int) - render(model, "flat", 10, 12, seed=3, registry=registry).astype(int))
    assert plain.max() <= 1


def test_layer_styles_export_refuses_what_it_cannot_make(tmp_path, tiny_checkpoint):
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--layer-styles", "--spatial-style", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "--layer-styles makes an fp32 ONNX engine" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_a_per_layer_style_engine_is_refused_by_the_web_page(tmp_path, tiny_checkpoint):
    engine = tmp_path / "layered.onnx"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "--layer-styles", "--no-validate", "-o", str(engine)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export", str(engine), "--engine", "web", "-o", str(tmp_path / "site")])
    assert result.exit_code == 1 and "takes per-layer styles; the page needs an engine of one style per image" in result.output
    assert not (tmp_path / "site").exists()


# ------------------------------------------------------------------------------ --class


def test_class_reaches_every_kind_of_render(tmp_path, registry):
    model = cips_deploy.create("tiny", arch="creps", seed=0, c_dim=3)
    checkpoint = tmp_path / "cond.safetensors"
    model.save(checkpoint)
    first, second = (render(model, "flat", 8, 8, seed=1, class_index=label, registry=registry) for label in (0, 1))
    assert not np.array_equal(first, second)
    cells = render_to_array(model, topology="flat", height=8, width=8, seed=1, controls=Controls.make(class_index=1), registry=registry)
    np.testing.assert_array_equal(cells, second)
    outdir = tmp_path / "seeds"
    result = CliRunner().invoke(cli, ["render", "--checkpoint", str(checkpoint), "--seeds", "1-2", "--class", "1", "--height", "8",
                                      "--outdir", str(outdir)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_png(outdir / "seed0001.png"), second)
    result = CliRunner().invoke(cli, ["render", "--checkpoint", str(checkpoint), "--class", "3", "--height", "8", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "from 0 to 2" in result.output and not (tmp_path / "x.png").exists()
