"""Attack family: resource bombs. Sizes are checked against the memory a request really needs
(the topology's working memory, every seed of a grid) before anything is allocated; training
data is read member by member with a cap; FIFOs are refused."""

from __future__ import annotations

import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

import cips_deploy.contracts.limits as limits
import cips_deploy.train.data as data
from cips_deploy.errors import CipsError
from cips_deploy.train.data import load_images

from ..helpers.attack_tools import refused


@pytest.fixture()
def one_gib(monkeypatch):
    """This machine has 1 GiB available (so the tests do not depend on the machine's memory)."""
    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 30)


@pytest.mark.parametrize(
    "args, message",
    [
        (["-t", "foveated", "--height", "9000", "--width", "9000"], "A 9,000 x 9,000 foveated render needs about 8.7 GiB"),
        (["--height", "12000", "--width", "12000"], "A 12,000 x 12,000 flat render needs about 3.6 GiB"),
        # Past the in-memory limit the streaming formats are named instead.
        (["--height", "20000", "--width", "20000"], "is over the in-memory limit of 268 megapixels; render it to a streaming format"),
        (["--seeds", "0-255", "--height", "20000", "--width", "20000"], "256 20,000 x 20,000 renders and their grid needs about 572.2 GiB"),
        (["--height", "80000", "--width", "80000"], "A 80,000 x 80,000 image (6,400 megapixels) is over the in-memory limit"),
    ],
)
def test_renders_are_refused_by_their_real_working_memory(one_gib, tmp_path, args, message):
    refused(["render", "--preset", "tiny", "-q", *args, "-o", "big.png"], message, cwd=tmp_path)


def test_a_seed_grid_beyond_the_machine_is_refused_without_the_monkeypatch(tmp_path):
    refused(["render", "--preset", "tiny", "--seeds", "0-255", "--height", "20000", "--width", "20000", "-o", "g.png"],
            "this machine has available", cwd=tmp_path)


def _zip_with_bomb(path, good_png: bytes, bomb_bytes: int):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a-good.png", good_png)
        archive.writestr("b-bomb.png", b"\0" * bomb_bytes, compress_type=zipfile.ZIP_DEFLATED)


def _png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_training_zip_bomb_is_read_with_a_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_BYTES", 1 << 20)
    good = _png(np.full((16, 16, 3), 128, dtype=np.uint8))
    _zip_with_bomb(tmp_path / "images.zip", good, 64 << 20)  # 64 MiB of zeros deflate to 64 KiB
    tracemalloc.start()
    try:
        dataset = load_images(tmp_path / "images.zip", 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == 1 and dataset.skipped == ["b-bomb.png"]
    assert peak < 8 << 20  # the bomb was never inflated past the cap


def test_a_fifo_as_training_data_is_refused(tmp_path):
    os.mkfifo(tmp_path / "images.zip")
    with pytest.raises(CipsError, match="is a FIFO, not a regular data set"):
        load_images(tmp_path / "images.zip", 16)
    refused(["train", str(tmp_path / "images.zip"), "--out", "run", "--steps", "1"], "is a FIFO", cwd=tmp_path)


def test_sixteen_bit_training_images_are_scaled_not_saturated(tmp_path):
    ramp8 = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))
    Image.fromarray(ramp8.astype(np.uint16) * 257).save(tmp_path / "ramp16.png")  # 16-bit grey, same picture
    Image.fromarray(ramp8).save(tmp_path / "ramp8.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    images = load_images(tmp_path, 32).images
    eight, sixteen = images[1], images[0]  # sorted: ramp16.png, ramp8.png
    assert float((eight - sixteen).abs().max()) <= 1 / 127.5 + 1e-6
    assert float(sixteen.mean()) < 0.1  # saturated, it would be +1 (white) almost everywhere
