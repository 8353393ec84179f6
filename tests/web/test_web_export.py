"""`export --engine web` and `serve-web`, without a browser (the torch-free install runs these too).

The page's numerics (page/numerics.js) run under Node.js against numpy and the Python
runtime: the seed rule, torch's linspace, the cylinder's columns, truncation, 8-bit rounding.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cips_deploy.cli import cli
from cips_deploy.exporters.metadata import read_onnx_metadata
from cips_deploy.exporters.web.server import make_server
from cips_deploy.exporters.web.site import PAGE, RUNTIME_CDN, RUNTIME_FILES, SITE_FORMAT
from cips_deploy.models import CREPS_DEMO_ENGINE, DEMO_ENGINE
from cips_deploy.runtime.coords import linspace, panorama_u
from cips_deploy.runtime.images import rgb_to_uint8

pytestmark = pytest.mark.runtime

NODE = shutil.which("node")


def run(*args: str, cwd: Path) -> tuple[int, str]:
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, list(args))
    finally:
        os.chdir(previous)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def one_sentence(code: int, output: str, words: str) -> None:
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], output


def fake_runtime(folder: Path) -> Path:
    """A dist folder with the files the site copies (their contents do not matter here)."""
    folder.mkdir()
    for name in RUNTIME_FILES:
        (folder / name).write_bytes(name.encode())
    (folder.parent / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "9.9.9"}))
    return folder


def test_the_default_site_is_the_demo_made_from_its_shipped_engines(tmp_path):
    code, output = run("export", "--engine", "web", "-o", "site", cwd=tmp_path)
    assert code == 0, output
    assert "serve-web site" in output
    site = tmp_path / "site"
    assert sorted(path.name for path in site.iterdir()) == sorted(["engines", "manifest.json", *os.listdir(PAGE)])
    manifest = json.loads((site / "manifest.json").read_text())
    assert manifest["format"] == SITE_FORMAT
    assert manifest["runtime"]["source"] == "cdn" and manifest["runtime"]["base"] == RUNTIME_CDN
    engine_meta = read_onnx_metadata(DEMO_ENGINE)
    assert manifest["model"]["w_avg"] == [float(value) for value in engine_meta.w_avg]
    assert manifest["model"]["coordinate_space"] == "cylinder" and manifest["render"]["default_topology"] == "cylinder"
    assert manifest["model"]["z_dim"] == engine_meta.style_dim
    assert set(manifest["engines"]) == {"mapping", "synthesis"}
    for role, entry in manifest["engines"].items():
        data = (site / entry["file"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert read_onnx_metadata(site / entry["file"]).role == role
    assert manifest["topologies"]["cylinder"]["parameters"] == {"heading": 0.0, "v_min": -1.0, "v_max": 1.0}


def test_a_line_factored_model_ships_its_grid_engines_and_a_local_runtime(tmp_path):
    runtime = fake_runtime(tmp_path / "dist")
    code, output = run("export", str(CREPS_DEMO_ENGINE), "--engine", "web", "-o", "out", "--web-runtime", str(runtime),
                       cwd=tmp_path)
    assert code == 0, output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(manifest["engines"]) == {"mapping", "synthesis", "lines", "compose"}
    assert manifest["render"]["line_features"] > 0 and manifest["render"]["chunk_points"] % 64 == 0
    assert manifest["runtime"]["source"] == "local" and manifest["runtime"]["version"] == "9.9.9"
    assert sorted(os.listdir(tmp_path / "out" / "ort")) == sorted(RUNTIME_FILES)


def test_existing_folders_are_kept_unless_forced_and_never_the_users(tmp_path):
    assert run("export", "--engine", "web", "-o", "site", cwd=tmp_path)[0] == 0
    one_sentence(*run("export", "--engine", "web", "-o", "site", cwd=tmp_path), "pass --force")
    (tmp_path / "site" / "extra.txt").write_text("mine")
    code, output = run("export", str(CREPS_DEMO_ENGINE), "--engine", "web", "-o", "site", "--force", cwd=tmp_path)
    assert code == 0, output
    assert json.loads((tmp_path / "site" / "manifest.json").read_text())["model"]["name"] == "creps-demo"
    # A folder of the user's own: refused with and without --force, and untouched.
    own = tmp_path / "photos"
    own.mkdir()
    (own / "holiday.jpg").write_bytes(b"jpeg")
    for force in ([], ["--force"]):
        code, output = run("export", "--engine", "web", "-o", "photos", *force, cwd=tmp_path)
        one_sentence(code, output, "photos")
    assert os.listdir(own) == ["holiday.jpg"]
    (tmp_path / "file").write_text("x")
    one_sentence(*run("export", "--engine", "web", "-o", "file", "--force", cwd=tmp_path), "not a folder")
    one_sentence(*run("export", "--engine", "web", "-o", "no/such/site", cwd=tmp_path), "does not exist")
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith(".")]
    assert leftovers == []


def test_bad_sources_and_runtimes_are_refused_in_one_sentence(tmp_path):
    one_sentence(*run("export", "--engine", "web", "--web-runtime", "nowhere", "-o", "s", cwd=tmp_path), "not a folder")
    (tmp_path / "empty").mkdir()
    one_sentence(*run("export", "--engine", "web", "--web-runtime", "empty", "-o", "s", cwd=tmp_path), "npm install")
    # An engine changed after export: its content hash says so.
    for name in ("demo-panorama.onnx", "demo-panorama.mapping.onnx"):
        shutil.copy(DEMO_ENGINE.with_name(name), tmp_path / name)
    data = bytearray((tmp_path / "demo-panorama.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights
    (tmp_path / "demo-panorama.onnx").write_bytes(bytes(data))
    code, output = run("export", "demo-panorama.onnx", "--engine", "web", "-o", "s", cwd=tmp_path)
    assert code == 1 and "Traceback" not in output and "demo-panorama.onnx" in output
    # A mapping engine of other weights beside it.
    shutil.copy(DEMO_ENGINE, tmp_path / "demo-panorama.onnx")
    shutil.copy(CREPS_DEMO_ENGINE.with_name("creps-demo.mapping.onnx"), tmp_path / "demo-panorama.mapping.onnx")
    one_sentence(*run("export", "demo-panorama.onnx", "--engine", "web", "-o", "s", cwd=tmp_path), "different model")
    one_sentence(*run("export", str(DEMO_ENGINE.with_name("demo-panorama.spatial.onnx")), "--engine", "web", "-o", "s",
                      cwd=tmp_path), "per-point styles")
    one_sentence(*run("export", "--engine", "web", "--triton-repo", "repo", "-o", "s", cwd=tmp_path), "--triton-repo")
    if importlib.util.find_spec("torch") is not None:  # without it, the onnx engine asks for the build extra first
        one_sentence(*run("export", "--engine", "onnx", "--web-runtime", "empty", str(DEMO_ENGINE), cwd=tmp_path), "web")
    assert not (tmp_path / "s").exists()


def serve(site: Path):
    server = make_server(site, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_serve_web_sends_what_the_page_needs_and_nothing_outside_the_site(tmp_path):
    runtime = fake_runtime(tmp_path / "dist")
    assert run("export", "--engine", "web", "-o", "site", "--web-runtime", str(runtime), cwd=tmp_path)[0] == 0
    site = tmp_path / "site"
    (tmp_path / "secret.txt").write_text("secret")
    (site / "link.txt").symlink_to(tmp_path / "secret.txt")
    server, url = serve(site)
    try:
        with urllib.request.urlopen(url + "ort/ort-wasm-simd-threaded.wasm") as response:
            assert response.headers["Content-Type"] == "application/wasm"
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(url) as response:
            assert b"cipsDeploy" in response.read() or response.status == 200
        with urllib.request.urlopen(url + "ort/ort.wasm.min.mjs") as response:
            assert response.headers["Content-Type"] == "text/javascript"
        for path in ("link.txt", "engines/", "../secret.txt", "%2e%2e/secret.txt", "nothing.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path)
            assert refused.value.code == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_serve_web_refuses_a_folder_that_is_not_a_site(tmp_path):
    one_sentence(*run("serve-web", "missing", cwd=tmp_path), "export --engine web")
    (tmp_path / "plain").mkdir()
    one_sentence(*run("serve-web", "plain", cwd=tmp_path), "not a site")


def test_serve_web_runs_until_sigterm(tmp_path):
    """The real command: it prints its address, serves, and stops cleanly on SIGTERM."""
    assert run("export", "--engine", "web", "-o", "site", cwd=tmp_path)[0] == 0
    command = [str(Path(sys.executable).parent / "cips-deploy"), "serve-web", "site", "--port", "0"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("Serving site at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "manifest.json") as response:
            assert json.loads(response.read())["format"] == SITE_FORMAT
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0 and "Traceback" not in errors


NUMERICS_SCRIPT = """
import * as n from %s;
const seeds = %s;
const out = {z: seeds.map((s) => Array.from(n.seedLatent(s, 512)))};
out.linspace = %s.map(([a, b, k]) => Array.from(n.linspace(a, b, k)));
out.panorama = %s.map(([w, h]) => Array.from(n.panoramaU(w, h)));
const rgb = Float32Array.from(%s);
const rgba = new Uint8ClampedArray(rgb.length / 3 * 4);
n.toRGBA(rgb, rgba);
out.rgba = Array.from(rgba);
const w = Float32Array.from(%s), wAvg = Float32Array.from(%s);
out.truncated = [0.7, 0.5, 1, 1.3].map((psi) => Array.from(n.truncate(w, wAvg, psi)));
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the page's numerics run under it)")
def test_the_pages_numerics_are_the_python_runtimes_bit_for_bit(tmp_path):
    seeds = [0, 1, 2, 3, 42, 2**31, 2**32 - 1] + [int(s) for s in np.random.RandomState(1).randint(0, 2**32 - 1, 200)]
    spaces = [[-1, 1, 256], [-0.3, 0.77, 1001], [0.1, 0.1000001, 37], [-5.3, 2.1, 1280], [1.5, -0.25, 333], [0.2, 0.4, 1]]
    panoramas = [[256, 0], [1024, 33.3], [777, -179.9], [3, 720.5], [1, 90]]
    rgb = np.concatenate([np.linspace(-1.3, 1.3, 2997, dtype=np.float32), np.float32([-1, 1, 0.0039215])])
    meta = read_onnx_metadata(DEMO_ENGINE)  # the runtime's truncation, with the demo's w_avg
    w, w_avg = np.random.RandomState(2).randn(meta.style_dim).astype(np.float32), meta.w_avg_array()
    script = tmp_path / "check.mjs"
    script.write_text(NUMERICS_SCRIPT % (
        json.dumps((PAGE / "numerics.js").as_uri()), json.dumps(seeds), json.dumps(spaces), json.dumps(panoramas),
        json.dumps(rgb.tolist()), json.dumps(w.tolist()), json.dumps(w_avg.tolist()),
    ))
    result = json.loads(subprocess.run([NODE, str(script)], capture_output=True, text=True, check=True, timeout=60).stdout)
    for seed, z in zip(seeds, result["z"]):
        np.testing.assert_array_equal(np.float32(z), np.random.RandomState(seed).randn(1, 512).astype(np.float32)[0])
    for (start, end, steps), values in zip(spaces, result["linspace"]):
        np.testing.assert_array_equal(np.float32(values), linspace(start, end, steps))
    for (width, heading), values in zip(panoramas, result["panorama"]):
        np.testing.assert_array_equal(np.float32(values), panorama_u(width, heading))
    rgba = np.uint8(result["rgba"]).reshape(-1, 4)
    np.testing.assert_array_equal(rgba[:, :3], rgb_to_uint8(rgb.reshape(-1, 3)))
    assert (rgba[:, 3] == 255).all()
    for psi, values in zip([0.7, 0.5, 1, 1.3], result["truncated"]):
        np.testing.assert_array_equal(np.float32(values), meta.truncate(w[None], psi)[0])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="exporting a checkpoint needs the build extra")
def test_a_checkpoint_is_exported_to_engines_first(tmp_path):
    from cips_deploy.models import DEMO_MODEL

    code, output = run("export", str(DEMO_MODEL), "--engine", "web", "-o", "site", cwd=tmp_path)
    assert code == 0, output
    manifest = json.loads((tmp_path / "site" / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == read_onnx_metadata(DEMO_ENGINE).weights_sha256  # the same weights
    assert manifest["model"]["name"] == "demo-panorama"
    assert [name for name in os.listdir(tmp_path) if name != "site"] == []  # the work folder is gone
