"""Attack family: engines with external data, and cache entries that are not what they seem (issue 26).

- An engine whose weights live in an external data file (``export --external-data``; every model
  over 2 GB) renders, and is refused once its data file changed.
- A cache entry whose mapping (or grid) engine belongs to another model, an entry name that is a
  file, and an entry that is a link to a folder elsewhere are exported again, never a hard error,
  and nothing is written through the link.
- Concurrent renders into an empty cache share one export: one writes the entry, the others use it.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

import cips_deploy
from cips_deploy.errors import CipsError
from cips_deploy.exporters import integrity
from cips_deploy.exporters.cache import cache_entry, cached_generator_onnx, cached_onnx
from cips_deploy.exporters.metadata import read_onnx_metadata
from cips_deploy.families.checkpoint import file_sha256

from ..helpers.attack_tools import files_under, invoke, refused


def _render(model, **options) -> np.ndarray:
    return cips_deploy.render(model, "flat", 16, 16, seed=3, backend="onnxruntime", **options)


# --------------------------------------------------------------------------- external data


@pytest.fixture(scope="module")
def external_engine(models, tmp_path_factory):
    """``cips-deploy export --external-data`` of model a, and the same model exported inline."""
    a, _ = models
    folder = tmp_path_factory.mktemp("external")
    for label, extra in (("external", ["--external-data"]), ("inline", [])):
        result = invoke(["export", str(a), "--engine", "onnx", "-o", f"{label}.onnx", *extra], folder)
        assert result.exit_code == 0, result.output
    assert (folder / "external.onnx.data").is_file() and not (folder / "inline.onnx.data").exists()
    return folder / "external.onnx", folder / "inline.onnx"


def test_an_external_data_engine_renders_on_the_command_line(external_engine, tmp_path):
    external, inline = external_engine
    result = invoke(["render", "--checkpoint", str(external), "--height", "16", "--width", "16", "--seed", "3",
                      "-o", "external.png", "-q"], tmp_path)
    assert result.exit_code == 0, result.output
    result = invoke(["render", "--checkpoint", str(inline), "--height", "16", "--width", "16", "--seed", "3",
                      "-o", "inline.png", "-q"], tmp_path)
    assert result.exit_code == 0, result.output
    pixels = [np.asarray(Image.open(tmp_path / name).convert("RGB")) for name in ("external.png", "inline.png")]
    assert np.array_equal(pixels[0], pixels[1])  # where the weights are stored changes nothing


def test_external_data_engines_hash_alike_every_way(external_engine, tmp_path):
    """The hash recorded at export, the one recomputed from the file's bytes (no onnx) and the one
    of the parsed model agree; the engine and its inline twin record the same hash."""
    external, inline = external_engine
    recorded, computed = integrity.file_content_sha256(external)
    assert recorded == computed == integrity.content_sha256(onnx.load(str(external)))
    assert recorded == integrity.recorded_hash(inline)
    integrity.verify(external, required=True)
    # A variant: the Python API on the engine, against the inline engine.
    assert np.array_equal(_render(external), _render(inline))
    # Copied elsewhere with its data file, it still verifies (the data is found beside it).
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in (external, external.with_name("external.onnx.data"), external.with_name("external.mapping.onnx")):
        (copy / file.name).write_bytes(file.read_bytes())
    integrity.verify(copy / "external.onnx", required=True)


@pytest.mark.parametrize("change", ["weights changed", "data truncated", "data missing"])
def test_an_external_data_engine_whose_data_file_changed_is_refused(external_engine, tmp_path, change):
    external, _ = external_engine
    for file in (external, external.with_name("external.onnx.data"), external.with_name("external.mapping.onnx")):
        (tmp_path / file.name).write_bytes(file.read_bytes())
    data = tmp_path / "external.onnx.data"
    content = bytearray(data.read_bytes())
    if change == "weights changed":
        content[len(content) // 2 : len(content) // 2 + 64] = bytes(64)
        data.write_bytes(bytes(content))
        message = "was modified after export"
    elif change == "data truncated":
        data.write_bytes(bytes(content[: len(content) // 2]))
        message = "is shorter than the model says"
    else:
        data.unlink()
        message = "cannot read its external data external.onnx.data"
    work = tmp_path / "work"
    work.mkdir()
    refused(["render", "--checkpoint", str(tmp_path / "external.onnx"), "--height", "8", "-o", "out.png"],
            message, cwd=work)


def test_stamping_agrees_with_verifying_whatever_onnx_writes(external_engine, tmp_path):
    """The hash is taken from the written file by the verifier's own function. Rewritten by onnx
    after a reload (loaded tensors carry an explicit data_location, written inline here; or
    external under another data file name), a stamped engine verifies and hashes as before."""
    external, _ = external_engine
    original = integrity.recorded_hash(external)
    for label, options in (("inline", {}), ("renamed", {"save_as_external_data": True, "location": "weights.bin"})):
        model = onnx.load(str(external))  # external data loaded: data_location = DEFAULT, set explicitly
        assert any(tensor.HasField("data_location") for tensor in model.graph.initializer)
        kept = [prop for prop in model.metadata_props if prop.key != integrity.KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        folder = tmp_path / label
        folder.mkdir()
        onnx.save_model(model, str(folder / "model.onnx"), **options)
        assert integrity.stamp_file(folder / "model.onnx") == original, label
        integrity.verify(folder / "model.onnx", required=True)
        onnx.checker.check_model(str(folder / "model.onnx"), full_check=True)  # still a valid model
        with pytest.raises(ValueError, match="already carries a content hash"):
            integrity.stamp_file(folder / "model.onnx")


def test_an_external_data_export_where_the_current_folder_holds_its_data_file(models, tmp_path):
    """onnx.save_model checks the data file's name against the working directory: exporting again
    with --force, or into another folder, from a folder holding model.onnx.data failed."""
    a, _ = models
    for args in (["-o", "model.onnx"], ["-o", "model.onnx", "--force"], ["-o", "sub/model.onnx"]):
        (tmp_path / "sub").mkdir(exist_ok=True)
        result = invoke(["export", str(a), "--engine", "onnx", "--external-data", "--no-validate", *args], tmp_path)
        assert result.exit_code == 0, (args, result.output)
        integrity.verify(tmp_path / args[1], required=True)
    assert (tmp_path / "sub" / "model.onnx.data").is_file()


# --------------------------------------------------------------------------- entries that are not what they seem


def _copy_entry(source: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        (destination / file.name).write_bytes(file.read_bytes())


@pytest.mark.parametrize("engine", ["model.mapping.onnx", "model.onnx"])
def test_an_entry_with_an_engine_of_another_model_is_exported_again(cache, models, engine):
    """Each engine verifies on its own (its hash is its own), but the set is not one model's:
    the entry is rebuilt, not a hard error on every run."""
    a, b = models
    expected = _render(a)
    entry_a, entry_b = cache_entry(file_sha256(a)), cached_onnx(b)
    (entry_a.parent / engine).write_bytes((entry_b.parent / engine).read_bytes())
    assert np.array_equal(_render(a), expected)
    assert np.array_equal(_render(a), expected)  # and again: the rebuilt entry is used as it is
    for file in ("model.onnx", "model.mapping.onnx"):
        assert read_onnx_metadata(entry_a.parent / file).source_sha256 == file_sha256(a)


@pytest.mark.slow  # four CREPS exports, each validated: about a minute on two cores
def test_a_grid_entry_with_a_line_engine_of_another_model_is_exported_again(cache):
    """The same for a line-factored model's grid engines (the ``--preset`` cache, keyed by weights)."""
    first, second = (cips_deploy.create("tiny", arch="creps", seed=seed) for seed in (0, 1))
    path, other = cached_generator_onnx(first), cached_generator_onnx(second)
    original = path.with_name("model.lines.onnx").read_bytes()
    path.with_name("model.lines.onnx").write_bytes(other.with_name("model.lines.onnx").read_bytes())
    assert cached_generator_onnx(first) == path
    assert path.with_name("model.lines.onnx").read_bytes() == original
    path.with_name("model.compose.onnx").unlink()  # a variant: half of the grid pair is gone
    assert cached_generator_onnx(first) == path and path.with_name("model.compose.onnx").is_file()


@pytest.mark.parametrize("shape", ["a file", "a folder for model.onnx", "a dangling link"])
def test_an_entry_name_that_is_no_entry_folder_is_exported_again(cache, models, shape):
    a, _ = models
    expected = _render(a)
    entry = cache_entry(file_sha256(a))
    _remove(entry.parent)
    if shape == "a file":
        entry.parent.write_bytes(b"not a folder")
    elif shape == "a folder for model.onnx":
        (entry / "x").mkdir(parents=True)
    else:
        entry.parent.symlink_to(cache / "nowhere")
    assert np.array_equal(_render(a), expected)
    assert entry.parent.is_dir() and not entry.parent.is_symlink() and entry.is_file()


def test_an_entry_that_links_elsewhere_is_replaced_and_nothing_is_written_there(cache, models, tmp_path):
    """An entry folder that is a link to another folder (here: holding a complete, valid entry)
    is not used: the link itself is removed, a real folder exported, and the folder it pointed
    to is left exactly as it was."""
    a, _ = models
    expected = _render(a)
    entry = cache_entry(file_sha256(a))
    elsewhere = tmp_path / "elsewhere"
    _copy_entry(entry.parent, elsewhere)
    before = {name: (elsewhere / name).read_bytes() for name in files_under(elsewhere)}
    _remove(entry.parent)
    entry.parent.symlink_to(elsewhere, target_is_directory=True)
    assert np.array_equal(_render(a), expected)
    assert entry.parent.is_dir() and not entry.parent.is_symlink()
    assert {name: (elsewhere / name).read_bytes() for name in files_under(elsewhere)} == before
    # A variant: one engine of the entry is a link to a valid engine elsewhere.
    entry.unlink()
    entry.symlink_to(elsewhere / "model.onnx")
    assert np.array_equal(_render(a), expected)
    assert not entry.is_symlink() and {name: (elsewhere / name).read_bytes() for name in files_under(elsewhere)} == before


def _remove(path: Path) -> None:
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# --------------------------------------------------------------------------- concurrent renders


RENDER = ("from cips_deploy.cli import main; main()",)


def _render_process(checkpoint: Path, output: Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-c", *RENDER, "render", "--checkpoint", str(checkpoint), "--backend", "onnxruntime",
               "--height", "16", "--width", "16", "--seed", "3", "-o", str(output), "-q"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_three_concurrent_renders_into_an_empty_cache_share_one_export(models, tmp_path):
    a, _ = models
    cache = tmp_path / "cache"
    env = {**os.environ, "CIPS_DEPLOY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    processes = [_render_process(a, tmp_path / f"{index}.png", env) for index in range(3)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    pixels = [np.asarray(Image.open(tmp_path / f"{index}.png")) for index in range(3)]
    assert all(np.array_equal(pixels[0], each) for each in pixels[1:])
    # One entry, complete; no staging folder or partial file left; only the entry's lock beside it.
    entries = sorted(name for name in os.listdir(cache / "onnx"))
    key = cache_entry(file_sha256(a)).parent.name
    assert entries == sorted([key, f".{key}.lock"]), entries
    assert sorted(os.listdir(cache / "onnx" / key)) == ["model.mapping.onnx", "model.onnx"]


@pytest.mark.slow
def test_a_render_waiting_for_a_concurrent_export_uses_its_entry(models, tmp_path):
    """While another process holds the entry's lock (exporting), a render waits, then takes the
    entry that process put in place instead of exporting its own."""
    a, _ = models
    cache = tmp_path / "cache"
    env = {**os.environ, "CIPS_DEPLOY_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # A complete entry made elsewhere, to be "published" by the lock holder.
    source_cache = tmp_path / "source"
    previous = os.environ.get("CIPS_DEPLOY_CACHE")
    os.environ["CIPS_DEPLOY_CACHE"] = str(source_cache)
    try:
        made = cached_onnx(a)
    finally:
        if previous is None:
            del os.environ["CIPS_DEPLOY_CACHE"]
        else:
            os.environ["CIPS_DEPLOY_CACHE"] = previous
    key = made.parent.name
    (cache / "onnx").mkdir(parents=True)
    lock = os.open(cache / "onnx" / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = _render_process(a, tmp_path / "out.png", env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None and not _waits_for_a_lock(process.pid):
            time.sleep(0.2)
        assert _waits_for_a_lock(process.pid), process.communicate()[0] if process.poll() is not None else "no wait"
        staged = list((cache / "onnx").glob(f".{key}.*.partial"))
        assert not staged and not (cache / "onnx" / key).exists()  # it waits; it exports nothing meanwhile
        _copy_entry(made.parent, cache / "onnx" / key)
        stamp = os.stat(cache / "onnx" / key / "model.onnx").st_ino
    finally:
        os.close(lock)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert os.stat(cache / "onnx" / key / "model.onnx").st_ino == stamp  # used as it was, not exported again
    assert (tmp_path / "out.png").is_file()


def _waits_for_a_lock(pid: int) -> bool:
    """Whether process ``pid`` is blocked on a file lock (a "->" line of /proc/locks)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        pytest.skip("no /proc/locks here")
    return any("->" in line and f" {pid} " in line for line in lines)


def test_a_cache_that_cannot_be_made_is_one_sentence(models, tmp_path, monkeypatch):
    """The cache's own folder (not an entry) being a file is the user's to fix: one sentence."""
    a, _ = models
    (tmp_path / "cache").write_bytes(b"a file")
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CipsError, match="is not a folder|Cannot create the export cache"):
        cached_onnx(a)
