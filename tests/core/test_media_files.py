"""Seed batches (render --outdir) and files that say what they are (PNG provenance, GPano XMP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.media.provenance import gpano_tags, model_identity, parse_gpano, read_png_metadata, render_provenance, xmp_packet
from cips_deploy.models import DEMO_ENGINE, DEMO_MODEL
from cips_deploy.runtime.hashing import file_sha256


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def invoke(*arguments: str):
    from cips_deploy.cli import cli

    return CliRunner().invoke(cli, ["render", *arguments])


# --------------------------------------------------------------------------- seed batches


# The command's default model is the bundled demo engine: these run without torch.


@pytest.mark.runtime
def test_outdir_writes_one_file_per_seed_equal_to_single_renders(tmp_path):
    result = invoke("-t", "flat", "--seeds", "3-5,12", "--height", "16", "--truncation", "0.7", "--outdir", str(tmp_path / "seeds"))
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in (tmp_path / "seeds").iterdir())
    assert names == ["seed0003.png", "seed0004.png", "seed0005.png", "seed0012.png"]  # no leftovers, no grid
    assert sorted(path.name for path in tmp_path.iterdir()) == ["seeds"]
    for seed in (3, 4, 5, 12):
        path = tmp_path / "seeds" / f"seed{seed:04d}.png"
        facts = read_png_metadata(path)["provenance"]
        assert facts["seed"] == str(seed) and facts["truncation"] == "0.7" and facts["topology"] == "flat"
        assert facts["model"] == DEMO_ENGINE.name
        single = cips_deploy.render(DEMO_ENGINE, "flat", 16, 16, seed=seed, truncation=0.7, backend=facts["backend"])
        assert np.array_equal(pixels(path), single)


@pytest.mark.runtime
def test_outdir_with_an_explicit_output_also_writes_the_grid(tmp_path):
    from cips_deploy.cli.common import tile

    result = invoke("--seeds", "0-2", "--height", "8", "--outdir", str(tmp_path / "out"), "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    singles = [pixels(tmp_path / "out" / f"seed{seed:04d}.png") for seed in range(3)]
    assert np.array_equal(pixels(tmp_path / "grid.png"), tile(singles))
    assert read_png_metadata(tmp_path / "grid.png")["provenance"]["seed"] == "0,1,2"


@pytest.mark.runtime
def test_grid_without_outdir_keeps_working(tmp_path):
    result = invoke("-t", "flat", "--seeds", "0-3", "--height", "8", "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    assert pixels(tmp_path / "grid.png").shape == (16, 16, 3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grid.png"]


@pytest.mark.runtime
def test_bad_outdir_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    for target, message in ((tmp_path / "file", "is a file"), (tmp_path / "missing" / "deeper", "does not exist")):
        result = invoke("--seeds", "0-1", "--height", "8", "--outdir", str(target))
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]
    # A failure after the folder was made (here: the backend) leaves nothing behind.
    result = invoke("--seeds", "0-1", "--height", "8", "--outdir", str(tmp_path / "new"), "--backend-option", "nope=1")
    assert result.exit_code == 1 and "no option" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


@pytest.mark.runtime
def test_a_batch_takes_more_seeds_than_a_grid(tmp_path):
    grid = invoke("--seeds", "0-299", "--height", "8", "-o", str(tmp_path / "g.png"))
    assert grid.exit_code == 1 and "a grid takes at most 256" in grid.output
    batch = invoke("--seeds", "0-299", "--height", "4", "--outdir", str(tmp_path / "many"))
    assert batch.exit_code == 0, batch.output
    assert len(list((tmp_path / "many").iterdir())) == 300


def test_a_seed_batch_of_a_preset_model(tmp_path):
    """--preset: a random-weight PyTorch model, each seed file equal to its own render."""
    tiny = cips_deploy.create("tiny", seed=0)
    result = invoke("--preset", "tiny", "--seeds", "3,12", "--height", "16", "--truncation", "0.7", "--outdir", str(tmp_path / "seeds"))
    assert result.exit_code == 0, result.output
    for seed in (3, 12):
        path = tmp_path / "seeds" / f"seed{seed:04d}.png"
        assert np.array_equal(pixels(path), cips_deploy.render(tiny, "flat", 16, 16, seed=seed, truncation=0.7))
        assert read_png_metadata(path)["provenance"]["model"] == "random tiny skip (model seed 0)"


# --------------------------------------------------------------------------- provenance


@pytest.mark.parametrize(
    "backend_flags, model, backend",
    [
        pytest.param((), DEMO_ENGINE, "onnxruntime", marks=pytest.mark.runtime, id="engine"),  # the default demo
        pytest.param(("--backend", "torch"), DEMO_MODEL, "torch", id="checkpoint"),
    ],
)
def test_png_says_which_model_seed_and_settings_made_it_and_rerenders_exactly(tmp_path, backend_flags, model, backend):
    out = tmp_path / "view.png"
    result = invoke("--seed", "7", "--height", "24", "-t", "rotated", "-p", "angle=20", "--truncation", "0.8", *backend_flags, "-o", str(out))
    assert result.exit_code == 0, result.output
    meta = read_png_metadata(out)
    facts = meta["provenance"]
    assert meta["software"] == f"cips-deploy {cips_deploy.__version__}"
    assert facts["model"] == model.name and facts["model_sha256"] == file_sha256(model)
    assert facts["version"] == cips_deploy.__version__ and facts["backend"] == backend and facts["size"] == "24x24"
    if model == DEMO_ENGINE:  # an engine also names the checkpoint it was exported from
        assert facts["engine_source"] == DEMO_MODEL.name and facts["engine_source_sha256"] == file_sha256(DEMO_MODEL)
    else:
        assert not any(key.startswith("engine_") for key in facts)
    parameters = json.loads(facts["parameters"])
    assert parameters == {"angle": 20.0, "scale": 1.0, "centre_u": 0.0, "centre_v": 0.0}
    assert meta["gpano"] == {}  # not a panorama
    again = cips_deploy.render(
        model, facts["topology"], 24, 24, seed=int(facts["seed"]), truncation=float(facts["truncation"]),
        backend=facts["backend"], **parameters,
    )
    assert np.array_equal(pixels(out), again)


@pytest.mark.runtime
def test_cylinder_panorama_carries_gpano_tags(tmp_path):
    out = tmp_path / "pano.png"
    result = invoke("-t", "cylinder", "--height", "20", "--width", "100", "-p", "heading=-30", "-o", str(out))
    assert result.exit_code == 0, result.output
    gpano = read_png_metadata(out)["gpano"]
    assert gpano["ProjectionType"] == "cylindrical" and gpano["UsePanoramaViewer"] == "True"
    assert int(gpano["FullPanoWidthPixels"]) == 100 == int(gpano["CroppedAreaImageWidthPixels"])
    assert int(gpano["CroppedAreaImageHeightPixels"]) == 20 and int(gpano["FullPanoHeightPixels"]) == 50
    assert int(gpano["CroppedAreaLeftPixels"]) == 0 and int(gpano["CroppedAreaTopPixels"]) == 15  # horizon mid-image
    assert float(gpano["PoseHeadingDegrees"]) == 330.0
    # The XMP packet is where photo viewers look: an iTXt chunk with Adobe's key.
    with Image.open(out) as image:
        image.load()
        assert "XML:com.adobe.xmp" in image.text and "GPano:ProjectionType" in image.text["XML:com.adobe.xmp"]


@pytest.mark.runtime
def test_gpano_round_trip_and_tall_strips():
    tags = gpano_tags(300, 400, heading_degrees=720.5)
    assert tags["CroppedAreaTopPixels"] == -50  # taller than the 2:1 sphere: above the horizon
    parsed = parse_gpano(xmp_packet(tags))
    assert parsed["PoseHeadingDegrees"] == "0.5" and parsed["FullPanoHeightPixels"] == "200"


def test_model_identity_of_generators_follows_the_weights():
    a, b = cips_deploy.create("tiny", seed=0), cips_deploy.create("tiny", seed=0)
    c = cips_deploy.create("tiny", seed=1)
    assert model_identity(a) == model_identity(b)
    assert model_identity(a)["model_sha256"] != model_identity(c)["model_sha256"]
    assert model_identity(a)["model"] == "random tiny skip (model seed 0)"


@pytest.mark.runtime
def test_non_latin_model_names_survive(tmp_path):
    from cips_deploy.media.provenance import save_png

    path = tmp_path / "x.png"
    save_png(np.zeros((2, 2, 3), np.uint8), path, {"model": "modèle-日本.safetensors"})
    assert read_png_metadata(path)["provenance"]["model"] == "modèle-日本.safetensors"


@pytest.mark.runtime
def test_model_identity_of_a_file_is_its_name_and_hash(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"any bytes at all")
    assert model_identity(path) == {"model": "weights.safetensors", "model_sha256": file_sha256(path)}
    assert model_identity(str(path)) == model_identity(path)
    # An .onnx file without cips-deploy metadata (another tool's engine) is named by its hash alone.
    foreign = tmp_path / "other.onnx"
    foreign.write_bytes(b"not an engine of ours")
    assert model_identity(foreign) == {"model": "other.onnx", "model_sha256": file_sha256(foreign)}


@pytest.mark.runtime
def test_model_identity_of_things_that_are_not_models():
    assert model_identity(object()) == {"model": "object", "model_sha256": "unknown"}


def test_model_identity_of_an_engine_names_its_checkpoint(tmp_path, tiny_checkpoint):
    from cips_deploy.exporters.metadata import weights_sha256
    from cips_deploy.exporters.onnx_export import export_onnx

    generator = cips_deploy.load(tiny_checkpoint)
    engine = tmp_path / "tiny.onnx"
    export_onnx(generator, engine, source_file=tiny_checkpoint.name, source_sha256=file_sha256(tiny_checkpoint), validate_export=False)
    identity = model_identity(engine)
    assert identity["model"] == "tiny.onnx" and identity["model_sha256"] == file_sha256(engine)
    assert identity["engine_source"] == tiny_checkpoint.name
    assert identity["engine_source_sha256"] == file_sha256(tiny_checkpoint)
    assert identity["engine_weights_sha256"] == weights_sha256(generator)
    assert identity["engine_version"] == cips_deploy.__version__


def test_model_identity_of_a_backend_is_its_generator(registry, tiny):
    from cips_deploy.runtime.render import make_backend

    runner = make_backend(registry, "torch", tiny, "cpu", {})
    try:
        assert model_identity(runner) == model_identity(tiny)
    finally:
        runner.close()


@pytest.mark.runtime
def test_provenance_values_are_plain_json():
    facts = render_provenance(
        {"model": "m", "model_sha256": "ab"}, seed=[np.int64(1), 2], truncation=np.float32(0.5), topology="flat",
        parameters={"angle": np.float32(0.25), "pair": (1, np.int32(2)), "array": np.arange(2)}, height=4, width=6,
        blend_seed=None, frames=np.int64(3),
    )
    assert facts["seed"] == "1,2" and facts["truncation"] == "0.5" and facts["size"] == "4x6"
    assert json.loads(facts["parameters"]) == {"angle": 0.25, "pair": [1, 2], "array": [0, 1]}
    assert facts["frames"] == "3" and "blend_seed" not in facts
    assert all(isinstance(value, str) for value in facts.values())
