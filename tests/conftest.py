"""Shared test fixtures: the official reference files and small generators."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import cips_deploy
from cips_deploy.runtime.plugin_manager import load_registry

# The base install (no torch) runs only the tests marked ``runtime`` (.ci/run): a module with
# none of them is not even imported there, since its torch imports would be collection errors.
# A module with runtime tests must import without torch (torch-only tests import it inside).
HAS_TORCH = importlib.util.find_spec("torch") is not None


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return "pytest.mark.runtime" not in collection_path.read_text() or None


OFFICIAL_FIXTURES = Path(
    os.environ.get("CIPS_OFFICIAL_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-cips")
)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """../shared/fixtures/official-cips: outputs of the official implementation.

    Parity is not optional: in CI (CI set) a missing folder fails; elsewhere it skips.
    """
    return _required_dir(OFFICIAL_FIXTURES, "official CIPS fixtures", "CIPS_OFFICIAL_FIXTURES")


def _required_dir(path: Path, what: str, variable: str) -> Path:
    """``path`` if it is a folder; else a failure in CI and a skip elsewhere."""
    if not path.is_dir():
        message = f"{what} not found at {path} (set {variable})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_skip() -> cips_deploy.Generator:
    return cips_deploy.create("tiny", arch="skip", seed=0)


@pytest.fixture(scope="module")
def registry():
    """The built-in plugins only: what the renderer uses when no third party is installed."""
    return load_registry(entry_points=False)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny CIPS model saved as our safetensors checkpoint (seed 0)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    cips_deploy.create("tiny", seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def tiny() -> cips_deploy.Generator:
    return cips_deploy.create("tiny", seed=0)


OFFICIAL_CREPS_FIXTURES = Path(
    os.environ.get("CREPS_OFFICIAL_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-creps")
)


@pytest.fixture(scope="session")
def official_creps_dir() -> Path:
    """../shared/fixtures/official-creps: snapshots and outputs of the official CREPS code (as official_dir)."""
    return _required_dir(OFFICIAL_CREPS_FIXTURES, "official CREPS fixtures", "CREPS_OFFICIAL_FIXTURES")
