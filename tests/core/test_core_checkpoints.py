"""Checkpoints: our safetensors format, official files, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cips_deploy
from cips_deploy import CipsError
from cips_deploy.families.checkpoint import read_metadata


def outputs(generator: cips_deploy.Generator) -> torch.Tensor:
    coords = cips_deploy.grid_coords(16, 16)
    with torch.no_grad():
        return generator.synthesize(coords, generator.map(torch.ones(1, generator.config.style_dim)))


@pytest.mark.parametrize("arch, space", [("skip", "plane"), ("res", "cylinder"), ("ne", "plane")])
def test_save_and_load_round_trip_exactly(tmp_path, arch, space):
    generator = cips_deploy.create("tiny", arch=arch, coordinate_space=space, seed=3)
    path = tmp_path / "model.safetensors"
    generator.save(path)
    loaded = cips_deploy.load(path)
    assert loaded.config == generator.config
    assert loaded.provenance == {"source": "random initialisation", "preset": "tiny", "seed": 3}
    assert torch.equal(loaded.w_avg, generator.w_avg)
    assert torch.equal(outputs(loaded), outputs(generator))
    metadata = read_metadata(path)
    assert metadata["package_version"] == cips_deploy.__version__
    assert not list(tmp_path.glob("*.partial"))


def test_official_import_round_trips_through_our_format(official_dir, tmp_path):
    official = cips_deploy.load(official_dir / "cipsskip_s8.pt")
    official.save(tmp_path / "skip.safetensors")
    ours = cips_deploy.load(tmp_path / "skip.safetensors")
    assert torch.equal(outputs(ours), outputs(official))
    assert ours.provenance["source_file"] == "cipsskip_s8.pt"
    assert len(ours.provenance["source_sha256"]) == 64


def test_official_training_checkpoint_bare_state_dict_and_ddp_prefix_agree(official_dir, tmp_path):
    training = torch.load(official_dir / "cipsskip_s8.pt", weights_only=True)
    torch.save(training["g_ema"], tmp_path / "bare.pt")
    torch.save({f"module.{key}": value for key, value in training["g_ema"].items()}, tmp_path / "ddp.pt")
    reference = outputs(cips_deploy.load(official_dir / "cipsskip_s8.pt"))
    for name in ("bare.pt", "ddp.pt"):
        assert torch.equal(outputs(cips_deploy.load(tmp_path / name)), reference)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    payload = {"g_ema": {"lff.ffm.conv.weight": torch.zeros(1)}, "extra": _RunsCode(marker)}
    path = tmp_path / "malicious.pt"
    if container == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # The payload works: plain pickle would run it (proved in a throw-away process).
    if container == "raw-pickle":
        probe = tmp_path / "probe.pt"
        probe.write_bytes(pickle.dumps(_RunsCode(tmp_path / "probe-ran"), protocol=2))
        subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(probe)!r}, 'rb'))"], check=True)
        assert (tmp_path / "probe-ran").exists()
    with pytest.raises(CipsError, match="Refusing to load .*could run code"):
        cips_deploy.load(path)
    assert not marker.exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(source: Path, path: Path) -> Path:
    return _write(path, source.read_bytes()[: source.stat().st_size // 2])


def _foreign_safetensors(path: Path) -> Path:
    save_file({"weight": torch.zeros(3)}, str(path))
    return path


def _mismatched_shapes(path: Path) -> Path:
    generator = cips_deploy.create("tiny")
    generator.save(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    tensors["first.bias"] = torch.zeros(7)
    save_file(tensors, str(path), metadata=metadata)
    return path


BAD_FILES = {
    "missing": (lambda tmp, good, official: tmp / "nope.safetensors", "No such checkpoint"),
    "directory": (lambda tmp, good, official: tmp, "is a directory"),
    "empty": (lambda tmp, good, official: _write(tmp / "empty.pt", b""), "not a checkpoint"),
    "text": (lambda tmp, good, official: _write(tmp / "notes.txt", b"hello, world\n" * 10), "not a checkpoint"),
    "truncated safetensors": (lambda tmp, good, official: _truncated(good, tmp / "cut.safetensors"), "corrupt or truncated"),
    "truncated official": (lambda tmp, good, official: _truncated(official, tmp / "cut.pt"), "corrupt or truncated"),
    "foreign safetensors": (lambda tmp, good, official: _foreign_safetensors(tmp / "f.safetensors"), "not a cips-deploy generator"),
    "mismatched shapes": (lambda tmp, good, official: _mismatched_shapes(tmp / "m.safetensors"), "has shape \\[7\\]"),
    "unknown architecture": (
        lambda tmp, good, official: (torch.save({"lff.ffm.conv.weight": torch.zeros(4, 2, 1, 1)}, tmp / "u.pt"), tmp / "u.pt")[1],
        "unknown CIPS architecture",
    ),
    "not a generator": (
        lambda tmp, good, official: (torch.save({"model": {"fc.weight": torch.zeros(2)}}, tmp / "o.pt"), tmp / "o.pt")[1],
        "holds no generator state dict",
    ),
    "foreign state dict": (
        lambda tmp, good, official: (torch.save({"fc.weight": torch.zeros(2)}, tmp / "r.pt"), tmp / "r.pt")[1],
        "not a CIPS generator",
    ),
}


@pytest.fixture
def good_checkpoint(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    cips_deploy.create("tiny").save(path)
    return path


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_fail_with_one_clear_sentence(tmp_path, good_checkpoint, official_dir, case):
    make, message = BAD_FILES[case]
    bad = tmp_path / "bad"
    bad.mkdir()
    path = make(bad, good_checkpoint, official_dir / "cipsres_s8_g_ema.pt")
    with pytest.raises(CipsError, match=message) as raised:
        cips_deploy.load(path)
    text = str(raised.value)
    assert "\n" not in text and text.endswith(".")


def test_official_missing_tensor_is_named(official_dir, tmp_path):
    state = torch.load(official_dir / "cipsres_s8_g_ema.pt", weights_only=True)
    del state["linears.1.conv2.activate.bias"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CipsError, match="'linears.1.conv2.activate.bias' is missing"):
        cips_deploy.load(tmp_path / "partial.pt")


def test_official_extra_tensor_is_named(official_dir, tmp_path):
    state = torch.load(official_dir / "cipsres_s8_g_ema.pt", weights_only=True)
    state["linears.9.conv1.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CipsError, match="linears.9.conv1.extra"):
        cips_deploy.load(tmp_path / "extra.pt")


def test_save_never_leaves_a_partial_file_and_keeps_the_old_one(tmp_path):
    generator = cips_deploy.create("tiny")
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(CipsError, match="already exists"):
        generator.save(path, overwrite=False)
    assert path.read_bytes() == b"precious"
    with pytest.raises(CipsError, match="does not exist"):
        generator.save(tmp_path / "no-such-folder" / "model.safetensors")
    generator.save(path)
    assert cips_deploy.load(path).config == generator.config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_safetensors_header_is_sniffed_not_the_extension(tmp_path, good_checkpoint):
    renamed = tmp_path / "model.pt"
    shutil.copy(good_checkpoint, renamed)
    assert cips_deploy.load(renamed).config.arch == "skip"
    (header_length,) = struct.unpack("<Q", good_checkpoint.read_bytes()[:8])
    assert header_length > 0


@pytest.mark.parametrize("first_byte", [0x80, 0x50, 0x78])
def test_every_checkpoint_we_write_loads_again_whatever_its_first_byte(tmp_path, tiny_skip, first_byte):
    """safetensors opens with its header length (little-endian): its low byte can be 0x80,
    a pickle's first byte (the header is padded to a multiple of 8, so the low byte is too).
    Pad the provenance until the file starts with ``first_byte``."""
    import copy

    generator = copy.deepcopy(tiny_skip)
    path = tmp_path / "model.safetensors"
    for padding in range(512):
        generator.provenance = {"note": "x" * padding}
        generator.save(path)
        if path.read_bytes()[0] == first_byte:
            break
    else:
        pytest.fail(f"no padding gave first byte {first_byte:#x}")
    from cips_deploy.families.checkpoint import sniff_format

    assert sniff_format(path) == "safetensors"
    loaded = cips_deploy.load(path)
    assert loaded.provenance == generator.provenance
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), generator.state_dict().values()))


def test_sniffing_tells_pickles_zips_and_foreign_bytes_apart(tmp_path):
    import pickle

    from cips_deploy.families.checkpoint import sniff_format

    cases = {
        "plain.pkl": pickle.dumps({"a": 1}, protocol=4),
        "junk.bin": b"\x80\x09not a pickle protocol",
        "text.txt": b"hello world, not a checkpoint",
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"x": torch.ones(2)}, tmp_path / "zip.pt")
    torch.save({"x": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "plain.pkl") == "pickle"
    assert sniff_format(tmp_path / "zip.pt") == "torch-zip"
    assert sniff_format(tmp_path / "legacy.pt") == "torch-legacy"
    for name in ("junk.bin", "text.txt", "empty"):
        assert sniff_format(tmp_path / name) is None


@pytest.mark.parametrize("arch", ["skip", "res", "creps"])
def test_loading_a_checkpoint_builds_its_size_check_without_torchs_symbolic_machinery(tmp_path, arch):
    # The size check builds the model on the meta device; a weight initialiser that computes
    # there pulls in sympy and dynamo, a second of every process's start (CLI and workers).
    path = tmp_path / f"{arch}.safetensors"
    cips_deploy.create("tiny", arch=arch, coordinate_space="cylinder", seed=2).save(path)
    program = (
        "import sys, cips_deploy.families.checkpoint as c; c.load(sys.argv[1]); "
        "print(sorted(m for m in ('sympy', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", program, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
