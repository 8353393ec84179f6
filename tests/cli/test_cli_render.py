"""``cips-deploy render``, ``plugins`` and ``topologies`` from the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.cli.common import ChunkProgress, parse_seeds
from cips_deploy.errors import CipsError

from ..helpers.plugin_install import EXAMPLE_PLUGIN, FAULTY_PLUGIN, pip_install

TINY = ["--preset", "tiny"]


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize(
    "args, shape",
    [
        (["-t", "flat", "--height", "24", "--width", "40"], (24, 40, 3)),
        (["-t", "rotated", "-p", "angle=45", "-p", "scale=1.5", "--height", "32", "--width", "32"], (32, 32, 3)),
        (["-t", "foveated", "-p", "gaze_x=0.2", "--height", "64", "--width", "64"], (64, 64, 3)),
        (["-t", "cylinder", "--coordinate-space", "cylinder", "--height", "16", "--width", "96", "--blend-seed", "4"], (16, 96, 3)),
    ],
    ids=["flat", "rotated", "foveated", "cylinder-blend"],
)
def test_render_writes_the_png(tmp_path, args, shape):
    output = tmp_path / "out.png"
    result = invoke("render", *TINY, *args, "--seed", "2", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert read_png(output).shape == shape
    assert result.output.startswith(f"Wrote {output}: {shape[0]}x{shape[1]} ")
    assert [path.name for path in tmp_path.iterdir()] == ["out.png"]  # no temporary left behind


def test_render_matches_the_python_api(tmp_path):
    output = tmp_path / "cli.png"
    invoke("render", *TINY, "--model-seed", "3", "--seed", "5", "--truncation", "0.8", "--height", "20", "--width", "28",
           "--chunk-size", "97", "-o", str(output))
    expected = cips_deploy.render(cips_deploy.create("tiny", seed=3), "flat", 20, 28, seed=5, truncation=0.8)
    assert np.array_equal(read_png(output), expected)


def test_foveated_reports_how_many_points_it_evaluated(tmp_path):
    result = invoke("render", *TINY, "-t", "foveated", "--height", "128", "--width", "128", "-o", str(tmp_path / "f.png"))
    assert "% of 16,384 pixels)" in result.output
    evaluated = int(result.output.split("evaluated ")[1].split(" points")[0].replace(",", ""))
    assert evaluated < 0.5 * 128 * 128


def test_seeds_make_a_grid_of_single_renders(tmp_path):
    output = tmp_path / "grid.png"
    result = invoke("render", *TINY, "--seeds", "1,5-6", "--height", "12", "--width", "16", "-o", str(output))
    assert "seeds 1, 5, 6" in result.output
    grid = read_png(output)
    assert grid.shape == (24, 32, 3)  # 2 x 2 cells, the last one empty
    generator = cips_deploy.create("tiny", seed=0)
    for index, seed in enumerate([1, 5, 6]):
        row, column = divmod(index, 2)
        cell = grid[row * 12 : (row + 1) * 12, column * 16 : (column + 1) * 16]
        assert np.array_equal(cell, cips_deploy.render(generator, "flat", 12, 16, seed=seed))
    assert not grid[12:, 16:].any()


@pytest.mark.runtime
def test_seed_lists():
    assert parse_seeds(None, None) == [0]
    assert parse_seeds(7, None) == [7]
    assert parse_seeds(None, "0-3,9") == [0, 1, 2, 3, 9]
    for bad in ["3-1", "a", "1,,2", "0-100000"]:
        with pytest.raises(CipsError):
            parse_seeds(None, bad)
    with pytest.raises(CipsError, match="either --seed or --seeds"):
        parse_seeds(1, "2")


@pytest.mark.runtime
def test_progress_bar_goes_to_stderr(capsys):
    progress = ChunkProgress("rendering")
    for done in (0, 50, 100):
        progress(done, 100)
    progress.close()
    captured = capsys.readouterr()
    assert "rendering" in captured.err and captured.out == ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["-t", "cylinder", "--height", "0"], "--height must be at least 1, not 0."),
        (["--checkpoint", "missing.safetensors"], "No such checkpoint: missing.safetensors."),
        (["--checkpoint", "x.pt", "--preset", "tiny"], "either --checkpoint or --preset"),
        (TINY + ["-t", "sphere"], "Unknown topology 'sphere'"),
        (TINY + ["--chunker", "random"], "Unknown chunker 'random'"),
        (TINY + ["--backend", "vulkan"], "Unknown backend 'vulkan'"),
        (TINY + ["--height", "0"], "--height must be at least 1, not 0."),
        (TINY + ["--width", "-4"], "--width must be at least 1, not -4."),
        (TINY + ["--seed", str(2**70)], "--seed must be at most 4,294,967,295"),
        (TINY + ["--blend-seed", "-1"], "--blend-seed must be at least 0, not -1."),
        (TINY + ["--height", "1000000", "--width", "1000000"], "over the in-memory limit of 268 megapixels; render it to a streaming format instead, a tiled BigTIFF (-o out.tif) or a Deep Zoom pyramid (-o out.dzi)."),
        (TINY + ["-t", "cylinder"], "use --topology flat"),
        (TINY + ["-t", "rotated", "-p", "angle=steep"], "parameter angle must be a number, not 'steep'."),
        (TINY + ["-p", "zoom"], "A topology parameter is written NAME=VALUE, not 'zoom'."),
        (TINY + ["-t", "foveated", "-p", "max_stride=5"], "max_stride must be a power of two"),
        (TINY + ["--chunk-size", "0"], "--chunk-size must be at least 1, not 0"),
        (TINY + ["--memory-budget", "0.00001"], "cannot hold one point"),
        (TINY + ["--chunker", "memory", "--chunk-size", "9"], "The memory chunker takes no chunk size"),
        (TINY + ["--device", "cuda:7"], "cuda"),
        (TINY + ["--backend-option", "fast=1"], "The torch backend has no option 'fast' (its options: precision)."),
        (TINY + ["--backend-option", "device=cpu"], "The device is not a backend option"),
        (TINY + ["--backend", "onnxruntime", "--precision", "bf16"], "The onnxruntime backend has no option 'precision'"),
        (TINY + ["--precision", "bf16", "--backend-option", "precision=fp32"], "--precision bf16 contradicts --backend-option precision=fp32."),
        (TINY + ["--precision", "int4"], "precision must be one of fp32, bf16, fp16"),
        (TINY + ["--seeds", "5-2"], "--seeds takes seeds and ranges"),
        (TINY + ["-o", "{tmp}/missing-folder/out.png"], "the folder"),
        (TINY + ["-o", "{tmp}"], "it is a directory"),
        (TINY + ["-o", "{tmp}/out.jpg"], "has no known extension; use one of .dzi, .png, .tif, .tiff"),
        (TINY + ["-o", "{tmp}/no\nsuch\x1b[2J/x.png"], "no\\nsuch\\x1b[2J"),  # a name's controls, escaped
    ],
)
def test_bad_input_ends_in_one_sentence_and_no_file(tmp_path, args, message):
    (tmp_path / "keep.png").write_bytes(b"previous")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "keep.png"), "--force"]  # --force: the bad input, not the rule, must refuse
    result = CliRunner().invoke(cli, ["render", *args])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"previous"


def test_a_file_name_with_a_newline_is_reported_on_one_line(tmp_path):
    output = tmp_path / "a\nb.png"
    result = CliRunner().invoke(cli, ["render", *TINY, "--height", "8", "--width", "8", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert output.is_file() and result.output.count("\n") == 1
    assert result.output.startswith(f"Wrote {tmp_path}/a\\nb.png: 8x8 ")


def test_the_bundled_demo_model_is_the_default_and_renders_a_seamless_panorama(tmp_path):
    from cips_deploy.models import DEMO_MODEL

    output = tmp_path / "pano.png"
    result = CliRunner().invoke(cli, ["render", "--topology", "cylinder", "--height", "32", "-o", str(output)])
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(output)).astype(np.float64)
    assert image.shape == (32, 128, 3)  # a whole turn is four 90-degree views
    assert np.array_equal(image, cips_deploy.render(cips_deploy.load(DEMO_MODEL), "cylinder", 32, 128))
    adjacent = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))
    seam = np.abs(image[:, -1] - image[:, 0]).mean()
    assert seam <= 1.5 * np.median(adjacent)
    assert cips_deploy.load(DEMO_MODEL).config.coordinate_space == "cylinder"


@pytest.mark.runtime
def test_topologies_lists_descriptions_parameters_and_spaces():
    result = invoke("topologies")
    for name in ("flat", "cylinder", "foveated", "rotated"):
        assert f"\n{name}: " in "\n" + result.output
    assert "coordinate spaces: cylinder " in result.output
    assert "-p gaze_x (float, default 0.5)" in result.output
    listed = {entry["name"]: entry for entry in json.loads(invoke("topologies", "--json").output)}
    assert listed["cylinder"]["coordinate_spaces"] == ["cylinder"]
    assert {"name": "angle", "type": "float", "default": 30.0} .items() <= listed["rotated"]["parameters"][0].items()


def test_plugins_lists_name_distribution_version_and_hooks():
    listed = {entry["name"]: entry for entry in json.loads(invoke("plugins", "--json").output)}
    flat = listed["cips_deploy.plugins.flat"]
    assert (flat["distribution"], flat["version"], flat["hooks"]) == ("cips-deploy", cips_deploy.__version__, ["register_topologies"])
    assert "cips_deploy.plugins.flat  [built-in]  cips-deploy" in invoke("plugins").output


@pytest.fixture(scope="module")
def console_script():
    script = shutil.which("cips-deploy", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cips-deploy console script is not installed next to this Python")
    return script


def test_installed_plugins_work_from_the_console_script(tmp_path, console_script):
    target = pip_install(tmp_path / "site", EXAMPLE_PLUGIN, FAULTY_PLUGIN)
    environment = dict(os.environ, PYTHONPATH=str(target))

    def run(*args):
        return subprocess.run([console_script, *args], capture_output=True, text=True, env=environment, cwd=tmp_path)

    listing = run("topologies")
    assert listing.returncode == 0 and "tiles: The training image as a wallpaper" in listing.stdout
    assert "Warning: Plugin 'faulty-import' failed to import (ModuleNotFoundError" in listing.stderr
    assert "Traceback" not in listing.stderr

    plugins = run("plugins")
    assert "tiles  [ok]  cips-deploy-tiles 0.1.0" in plugins.stdout
    assert "faulty-hook  [BROKEN]  cips-deploy-faulty 0.0.1" in plugins.stdout

    rendered = run("render", "--preset", "tiny", "-t", "tiles", "-p", "columns=4", "--width", "64", "--height", "32", "-o", "t.png")
    assert rendered.returncode == 0, rendered.stderr
    assert read_png(tmp_path / "t.png").shape == (32, 64, 3)

    broken = run("render", "--preset", "tiny", "-t", "nan-points", "-o", "n.png")
    assert broken.returncode == 1
    assert broken.stderr.strip().splitlines()[-1] == (
        "Error: Topology 'nan-points' (plugin 'faulty-points') returned 1 point(s) with NaN or infinite coordinates."
    )
    assert not (tmp_path / "n.png").exists()
