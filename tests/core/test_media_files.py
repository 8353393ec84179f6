"""Seed batches (render --outdir) and files that say what they are (PNG provenance, GPano XMP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.families.checkpoint import file_sha256
from cips_deploy.models import DEMO_MODEL
from cips_deploy.cli import cli
from cips_deploy.cli.render import tile
from cips_deploy.media.provenance import gpano_tags, model_identity, parse_gpano, read_png_metadata, xmp_packet


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def invoke(*arguments: str):
    return CliRunner().invoke(cli, ["render", *arguments])


# --------------------------------------------------------------------------- seed batches


def test_outdir_writes_one_file_per_seed_equal_to_single_renders(tmp_path):
    tiny = cips_deploy.create("tiny", seed=0)
    result = invoke("--preset", "tiny", "--seeds", "3-5,12", "--height", "16", "--truncation", "0.7", "--outdir", str(tmp_path / "seeds"))
    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in (tmp_path / "seeds").iterdir())
    assert names == ["seed0003.png", "seed0004.png", "seed0005.png", "seed0012.png"]  # no leftovers, no grid
    assert sorted(path.name for path in tmp_path.iterdir()) == ["seeds"]
    for seed in (3, 4, 5, 12):
        path = tmp_path / "seeds" / f"seed{seed:04d}.png"
        assert np.array_equal(pixels(path), cips_deploy.render(tiny, "flat", 16, 16, seed=seed, truncation=0.7))
        facts = read_png_metadata(path)["provenance"]
        assert facts["seed"] == str(seed) and facts["truncation"] == "0.7" and facts["topology"] == "flat"


def test_outdir_with_an_explicit_output_also_writes_the_grid(tmp_path):
    result = invoke("--preset", "tiny", "--seeds", "0-2", "--height", "8", "--outdir", str(tmp_path / "out"), "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    singles = [pixels(tmp_path / "out" / f"seed{seed:04d}.png") for seed in range(3)]
    assert np.array_equal(pixels(tmp_path / "grid.png"), tile(singles))
    assert read_png_metadata(tmp_path / "grid.png")["provenance"]["seed"] == "0,1,2"


def test_grid_without_outdir_keeps_working(tmp_path):
    result = invoke("--preset", "tiny", "--seeds", "0-3", "--height", "8", "-o", str(tmp_path / "grid.png"))
    assert result.exit_code == 0, result.output
    assert pixels(tmp_path / "grid.png").shape == (16, 16, 3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grid.png"]


def test_bad_outdir_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    for target, message in ((tmp_path / "file", "is a file"), (tmp_path / "missing" / "deeper", "does not exist")):
        result = invoke("--preset", "tiny", "--seeds", "0-1", "--height", "8", "--outdir", str(target))
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]
    # A failure after the folder was made (here: the backend) leaves nothing behind.
    result = invoke("--preset", "tiny", "--seeds", "0-1", "--height", "8", "--outdir", str(tmp_path / "new"), "--backend-option", "nope=1")
    assert result.exit_code == 1 and "no option" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]


def test_a_batch_takes_more_seeds_than_a_grid(tmp_path):
    grid = invoke("--preset", "tiny", "--seeds", "0-299", "--height", "8", "-o", str(tmp_path / "g.png"))
    assert grid.exit_code == 1 and "a grid takes at most 256" in grid.output
    batch = invoke("--preset", "tiny", "--seeds", "0-299", "--height", "4", "--outdir", str(tmp_path / "many"))
    assert batch.exit_code == 0, batch.output
    assert len(list((tmp_path / "many").iterdir())) == 300


# --------------------------------------------------------------------------- provenance


def test_png_says_which_model_seed_and_settings_made_it_and_rerenders_exactly(tmp_path):
    out = tmp_path / "view.png"
    result = invoke("--seed", "7", "--height", "24", "-t", "rotated", "-p", "angle=20", "--truncation", "0.8", "-o", str(out))
    assert result.exit_code == 0, result.output
    meta = read_png_metadata(out)
    facts = meta["provenance"]
    assert meta["software"] == f"cips-deploy {cips_deploy.__version__}"
    assert facts["model"] == DEMO_MODEL.name and facts["model_sha256"] == file_sha256(DEMO_MODEL)
    assert facts["version"] == cips_deploy.__version__ and facts["backend"] == "torch" and facts["size"] == "24x24"
    parameters = json.loads(facts["parameters"])
    assert parameters == {"angle": 20.0, "scale": 1.0, "centre_u": 0.0, "centre_v": 0.0}
    assert meta["gpano"] == {}  # not a panorama
    again = cips_deploy.render(
        cips_deploy.load(DEMO_MODEL), facts["topology"], 24, 24, seed=int(facts["seed"]), truncation=float(facts["truncation"]), **parameters
    )
    assert np.array_equal(pixels(out), again)


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


def test_non_latin_model_names_survive(tmp_path):
    from cips_deploy.media.provenance import save_png

    path = tmp_path / "x.png"
    save_png(np.zeros((2, 2, 3), np.uint8), path, {"model": "modèle-日本.safetensors"})
    assert read_png_metadata(path)["provenance"]["model"] == "modèle-日本.safetensors"
