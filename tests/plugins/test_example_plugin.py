"""examples/cips-deploy-example, pip-installed: a third party adds an engine, a backend with
its own option and a command exactly as the built-ins do, used through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cips_deploy

from ..helpers.plugin_install import ENGINE_BACKEND_COMMAND_PLUGIN, pip_install

pytestmark = pytest.mark.slow  # a pip build and several fresh interpreters


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    script = shutil.which("cips-deploy", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the cips-deploy console script is not installed next to this Python")
    target = pip_install(tmp_path_factory.mktemp("example") / "site", ENGINE_BACKEND_COMMAND_PLUGIN)
    environment = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")

    def run(*args, cwd):
        return subprocess.run([script, *map(str, args)], capture_output=True, text=True, env=environment, cwd=cwd)

    return run


def test_plugins_lists_what_the_example_provides(run, tmp_path):
    listed = run("plugins", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    row = {entry["name"]: entry for entry in json.loads(listed.stdout)}["example"]
    assert (row["distribution"], row["builtin"], row["problems"]) == ("cips-deploy-example", False, [])
    provides = {kind: names for kind, names in row["provides"].items() if names}
    assert provides == {"command": ["colours"], "engine": ["npz"], "backend": ["posterize"]}


def test_the_backend_option_is_a_render_flag_and_posterizes(run, tmp_path):
    help_text = " ".join(run("render", "--help", cwd=tmp_path).stdout.split())  # unwrapped
    assert "--levels" in help_text and "posterize: levels per colour channel" in help_text
    rendered = run("render", "--preset", "tiny", "--backend", "posterize", "--levels", "3",
                   "--width", "48", "--height", "32", "-o", "poster.png", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    with Image.open(tmp_path / "poster.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (32, 48, 3)
    assert set(np.unique(pixels)) <= {0, 127, 128, 255}  # three levels per channel (0, the middle, 255)
    distinct = len(np.unique(pixels.reshape(-1, 3), axis=0))
    counted = run("colours", "poster.png", cwd=tmp_path)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.strip() == f"poster.png: 48 x 32 pixels, {distinct} distinct colours."
    refused = run("render", "--preset", "tiny", "--backend", "posterize", "--levels", "1", "-o", "x.png", cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert not (tmp_path / "x.png").exists()


def test_the_engine_exports_through_export_and_obeys_force(run, tmp_path):
    generator = cips_deploy.create("tiny", seed=3)
    generator.save(tmp_path / "model.safetensors")
    exported = run("export", "model.safetensors", "--engine", "npz", "-o", "model.npz", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == "Wrote model.npz"
    with np.load(tmp_path / "model.npz") as archive:
        state = generator.state_dict()
        assert sorted(archive.files) == sorted(state)
        for name, tensor in state.items():
            np.testing.assert_array_equal(archive[name], tensor.numpy())
    again = run("export", "model.safetensors", "--engine", "npz", "-o", "model.npz", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == "Error: model.npz already exists; pass --force to replace it."
    bf16 = run("export", "model.safetensors", "--engine", "npz", "--precision", "bf16", "-o", "b.npz", cwd=tmp_path)
    assert bf16.stderr.strip().splitlines()[-1] == "Error: The npz engine is built in fp32, fp16, not bf16."
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.npz", "model.safetensors"]
