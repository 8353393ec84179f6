"""The torch backend's autotuned default chunk (plugins/chunk_autotune.py): the choice is cached
and reused, a damaged or hostile cache entry is ignored and replaced, and the pixels of a
tuned render equal those of a fixed chunk size (no timing is asserted)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import cips_deploy
from cips_deploy.plugins import chunk_autotune as tune

def key(**extra):
    return tune.tune_key({"arch": "skip", "size": 64, **extra}, "fp32", 2, "test-torch")


def fake_run(best: int, calls: list[int]):
    """A backend call whose time per point is least at ``best`` points."""
    def run(points: int) -> float:
        calls.append(points)
        return 1e-6 * points * (1.0 + abs(points - best) / 1000)
    return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CIPS_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(tune.ENV_SWITCH, raising=False)
    return tmp_path / "cache"


def tuned(run, k=None, budget=60.0):
    return tune.tuned_points(key=k or key(), row=64, bytes_per_point=4096, flops_per_point=1e7, run=run, budget=budget)


@pytest.mark.runtime
def test_the_choice_is_cached_and_reused(cache):
    sizes = tune.candidates(64, 4096)
    assert sizes and all(size % 64 == 0 and size >= tune.MIN_POINTS for size in sizes)
    assert max(sizes) * 4096 <= tune.MAX_CHUNK_MB * 2**20
    best = sizes[len(sizes) // 2]
    calls: list[int] = []
    assert tuned(fake_run(best, calls)) == best
    assert set(calls) == set(sizes)  # every candidate timed once
    entry = tune.entry_path(key())
    assert entry.is_file() and entry.parent == cache / "chunks"
    assert json.loads(entry.read_text())["points"] == best

    def must_not_run(points):
        raise AssertionError("the cached choice should have been used")

    assert tuned(must_not_run) == best
    # Another key (another precision, machine, model shape) is tuned on its own.
    other: list[int] = []
    assert tuned(fake_run(sizes[0], other), key(size=128)) == sizes[0] and other


@pytest.mark.runtime
@pytest.mark.parametrize("damage", ["garbage", "huge", "points outside", "bool points", "other key", "deep json", "symlink", "fifo", "folder"])
def test_a_corrupt_or_hostile_entry_is_ignored_and_replaced(cache, tmp_path, damage):
    sizes = tune.candidates(64, 4096)
    entry = tune.entry_path(key())
    entry.parent.mkdir(parents=True)
    outside = tmp_path / "victim.txt"
    outside.write_text("keep me")
    good = {"key": json.loads(json.dumps(key())), "points": sizes[0]}
    if damage == "garbage":
        entry.write_bytes(b"\x00\xff{not json")
    elif damage == "huge":
        entry.write_text(json.dumps({**good, "pad": "x" * (tune.MAX_ENTRY_BYTES + 10)}))
    elif damage == "points outside":
        entry.write_text(json.dumps({**good, "points": 10**12}))
    elif damage == "bool points":
        entry.write_text(json.dumps({**good, "points": True}))
    elif damage == "other key":
        entry.write_text(json.dumps({**good, "key": {"cpu": "elsewhere"}}))
    elif damage == "deep json":
        entry.write_text("[" * 100000 + "]" * 100000)
    elif damage == "symlink":
        entry.symlink_to(outside)
    elif damage == "fifo":
        os.mkfifo(entry)
    elif damage == "folder":
        entry.mkdir()
    best = sizes[-1]
    calls: list[int] = []
    result = tuned(fake_run(best, calls))
    assert result == best and calls  # tuned again, never the damaged entry's value
    assert outside.read_text() == "keep me"  # a link is replaced, never written through
    if damage != "folder":  # a folder in the way cannot be replaced by a file: the choice is just not cached
        assert entry.is_file() and not entry.is_symlink()
        assert json.loads(entry.read_text())["points"] == best


@pytest.mark.runtime
def test_a_machine_too_slow_to_tune_keeps_the_heuristic_without_timing_again(cache):
    calls: list[int] = []

    def slow(points):
        calls.append(points)
        return 100.0  # one call takes longer than the whole budget

    assert tuned(slow, budget=1.0) is None
    assert calls == [tune.candidates(64, 4096)[0]]  # one warm-up call, then it stopped
    assert tuned(slow, budget=1.0) is None and len(calls) == 1  # the entry says so: no second try


@pytest.mark.runtime
def test_tuning_is_off_for_small_models_and_on_request(cache, monkeypatch):
    calls: list[int] = []
    assert tune.tuned_points(key=key(), row=64, bytes_per_point=4096, flops_per_point=1e3, run=fake_run(512, calls)) is None
    monkeypatch.setenv(tune.ENV_SWITCH, "0")
    assert tuned(fake_run(512, calls)) is None
    assert calls == [] and not (cache / "chunks").exists()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_tuned_render_has_the_pixels_of_a_fixed_chunk_size(cache, monkeypatch, precision):
    from cips_deploy.plugins.torch_backend import TorchBackend

    monkeypatch.setattr(tune, "MIN_FLOPS_PER_POINT", 0.0)  # tune even the tiny model
    monkeypatch.setattr(tune, "MAX_CHUNK_MB", 0.5)
    generator = cips_deploy.create("tiny", seed=0)
    options = {"precision": precision}
    tuned_image = cips_deploy.render(generator, "flat", height=48, width=40, seed=3, backend_options=options)
    entries = list((cache / "chunks").glob("*.json"))
    assert len(entries) == 1
    points = json.loads(entries[0].read_text())["points"]
    assert points in tune.candidates(generator.config.size, TorchBackend(generator, **options).bytes_per_point())
    fixed = cips_deploy.render(generator, "flat", height=48, width=40, seed=3, backend_options=options, chunk_size=100)
    assert np.array_equal(tuned_image, fixed)
    # The memory chunker cuts exactly the tuned size from the backend's preferred budget.
    from cips_deploy.contracts.chunking import ChunkRequest
    from cips_deploy.plugins.chunkers import MemoryChunker

    backend = TorchBackend(generator, **options)
    request = ChunkRequest(n_points=10 * points, bytes_per_point=backend.bytes_per_point(),
                           preferred_memory_budget=backend.preferred_memory_budget())
    assert {stop - start for start, stop in MemoryChunker().spans(request)} == {points}


@pytest.mark.runtime
def test_a_tune_cut_short_by_its_budget_is_not_trusted(cache):
    sizes = tune.candidates(64, 4096)
    calls: list[int] = []

    def slowing(points):  # fast at first, then slower than the remaining budget allows
        calls.append(points)
        return 0.01 if len(calls) <= 3 else 10.0

    assert tuned(slowing, budget=5.0) is None  # the first size alone was measured: not a choice
    assert len(set(calls)) < len(sizes)
    assert json.loads(tune.entry_path(key()).read_text())["points"] is None
