"""Fixtures the attack tests share: an empty engine cache, two tiny models, a few images."""

from __future__ import annotations

import numpy as np
import pytest

import cips_deploy


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty engine cache of this test's own (``CIPS_DEPLOY_CACHE``)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two different tiny checkpoints: (a.safetensors, b.safetensors)."""
    folder = tmp_path_factory.mktemp("models")
    cips_deploy.create("tiny", seed=0).save(folder / "a.safetensors")
    cips_deploy.create("tiny", seed=1).save(folder / "b.safetensors")
    return folder / "a.safetensors", folder / "b.safetensors"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A training folder of three 20 x 20 noise images."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder
