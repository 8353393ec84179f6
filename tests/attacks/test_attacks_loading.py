"""Attack family: hostile checkpoints. Every one ends in one sentence and exit 1, writes nothing
and allocates nothing big (limits are checked from the config and the declared sizes)."""

from __future__ import annotations

import json
import os
import zipfile

import pytest
import torch

import cips_deploy
from cips_deploy.errors import CipsError

from ..helpers.attack_tools import refused, rewrite_checkpoint, sparse_safetensors


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_mlp": 10**8}, "n_mlp must be a whole number from 0 to 64, not 100000000"),
        ({"size": float("nan")}, "size must be a whole number from 1 to 65,536, not nan"),
        ({"size": float("inf")}, "not inf"),
        ({"hidden": "big"}, "hidden must be a whole number from 1 to 65,536, not 'big'"),
        ({"style_dim": 64.5}, "not 64.5"),
        ({"style_dim": 64.0}, "not 64.0"),
        ({"size": 2**40}, "not 1099511627776"),
        ({"n_mlp": True}, "not True"),
        ({"widths": [64] * 1000}, "A generator has 1 to 64 blocks, not 1000"),
        ({"widths": [64, -1]}, "Every block width must be a whole number from 1 to 65,536, not -1"),
        ({"widths": 7}, "A generator has 1 to 64 blocks, not 7"),
        ({"lr_mlp": float("nan")}, "lr_mlp must be a finite number"),
        ({"arch": ["skip"]}, "arch must be a string"),
        ({"widths": [65536] * 8, "hidden": 65536}, "more than the limit of"),
    ],
)
def test_hostile_configs_are_refused_before_allocation(checkpoint, tmp_path, changes, message):
    hostile = rewrite_checkpoint(checkpoint, tmp_path / "hostile.safetensors", **changes)
    refused(["info", str(hostile)], message, cwd=tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 32 levels"),
        ('{"size": ' * 40 + "1" + "}" * 40, "nests deeper than 32 levels"),
        ("not json", "is not valid JSON"),
        ('"a string"', "A generator config is a JSON object, not str"),
        (json.dumps({"widths": [64] * 2_000_000}), "is not a JSON text of at most 1,024 KiB"),
    ],
)
def test_malformed_config_json_is_one_sentence(checkpoint, tmp_path, text, message):
    hostile = rewrite_checkpoint(checkpoint, tmp_path / "hostile.safetensors", config_text=text)
    refused(["info", str(hostile)], message, cwd=tmp_path)


def test_a_sparse_terabyte_safetensors_is_refused_from_its_header(checkpoint, tmp_path):
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
    huge = sparse_safetensors(tmp_path / "huge.safetensors", metadata, 2**40)
    refused(["info", str(huge)], "needs about 1,024.0 GiB of memory", cwd=tmp_path)


def test_a_header_pointing_past_the_end_of_the_file_is_refused(checkpoint, tmp_path):
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
    sparse_safetensors(tmp_path / "short.safetensors", metadata, 4096)
    data = (tmp_path / "short.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-100])
    refused(["info", "short.safetensors"], "is corrupt or truncated (its tensors need", cwd=tmp_path)


def test_a_zip_named_safetensors_is_read_as_what_it_is(tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "model.safetensors")
    refused(["info", "model.safetensors"], "is not a CIPS generator", cwd=tmp_path)


def test_a_pt_zip_bomb_is_refused_from_its_declared_sizes(tmp_path):
    torch.save({"w": torch.zeros(4)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as source, zipfile.ZipFile(tmp_path / "bomb.pt", "w") as bomb:
        for info in source.infolist():
            if info.filename.endswith("data/0"):  # 200 MB of zeros deflate to about 200 KB
                bomb.writestr(info.filename, b"\0" * (200 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                bomb.writestr(info, source.read(info))
    (tmp_path / "plain.pt").unlink()
    refused(["info", "bomb.pt"], "a zip bomb, refused", cwd=tmp_path)


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_fifos_devices_and_folders_are_refused_without_opening(tmp_path, kind):
    target = tmp_path / "model.safetensors"
    if kind == "fifo":
        os.mkfifo(target)  # opening it for reading would block forever
        message = "is a FIFO, not a regular checkpoint"
    elif kind == "device":
        target = "/dev/zero"  # endless
        message = "is a device, not a regular checkpoint"
    else:
        target.mkdir()
        message = "is a directory, not a checkpoint"
    refused(["info", str(target)], message, cwd=tmp_path)
    refused(["render", "--checkpoint", str(target), "--height", "8", "-o", "out.png"], message, cwd=tmp_path)


def test_nan_weights_are_refused(checkpoint, tmp_path):
    generator = cips_deploy.load(checkpoint)
    with torch.no_grad():
        generator.blocks[0].layer1.bias[3] = float("nan")
    generator.save(tmp_path / "nan.safetensors")
    refused(["info", "nan.safetensors"], "holds NaN or infinite values; the model is damaged", cwd=tmp_path)
    refused(["render", "--checkpoint", "nan.safetensors", "--height", "8", "-o", "x.png"], "NaN or infinite", cwd=tmp_path)


def test_odd_official_state_dicts_are_one_sentence(official_dir, tmp_path):
    state = torch.load(official_dir / "cipsskip_s8.pt", weights_only=True)["g_ema"]
    flat = dict(state, **{"lff.ffm.conv.weight": state["lff.ffm.conv.weight"].flatten()})
    torch.save(flat, tmp_path / "flat.pt")
    refused(["info", "flat.pt"], "'lff.ffm.conv.weight' has shape [64], not that of an official CIPS weight", cwd=tmp_path)
    integers = {key: value.to(torch.int32) for key, value in state.items()}
    torch.save(integers, tmp_path / "ints.pt")
    refused(["info", "ints.pt"], "is torch.int32, not a floating-point tensor", cwd=tmp_path)
    torch.save({"g_ema": dict(state, extra=5)}, tmp_path / "scalar.pt")
    refused(["info", "scalar.pt"], "the generator's entry 'extra' is not a tensor", cwd=tmp_path)


def test_the_python_api_raises_cips_error_for_the_same_files(checkpoint, tmp_path):
    hostile = rewrite_checkpoint(checkpoint, tmp_path / "h.safetensors", n_mlp=10**8)
    with pytest.raises(CipsError, match="n_mlp"):
        cips_deploy.load(hostile)
    with pytest.raises(CipsError, match="n_mlp"):
        cips_deploy.create("tiny", n_mlp=10**8)
