"""Fuzz tests of the checkpoint reader and the config parser (hypothesis, bounded for CI).

The property: any input gives either a generator (a config) or a CipsError, never another
exception; and no single load raises the process's peak resident memory more than
MEMORY_BOUND above where it started. Time is bounded per example by hypothesis's deadline and
per run by max_examples. derandomize=True: CI explores the same inputs on every run.
"""

from __future__ import annotations

import json
import os
import resource
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cips_deploy
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.families.model_size import check_model_size

MEMORY_BOUND = 512 << 20  # bytes one load may add to the process's resident memory
FUZZ = settings(
    # CIPS_FUZZ_EXAMPLES=5000 CIPS_FUZZ_RANDOM=1 explores deeper and differently on a workstation.
    max_examples=int(os.environ.get("CIPS_FUZZ_EXAMPLES", "60")),
    deadline=10_000,  # ms per example: far above the few ms a refusal takes, far below a hang
    derandomize=not os.environ.get("CIPS_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

# Values a hostile JSON config may hold: every JSON type, the special floats, huge integers, nesting.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2, 4, 8, 16, 64, 2**31, 2**40])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["skip", "res", "ne", "creps", "plane", "cylinder"]),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)
FIELDS = ["arch", "size", "hidden", "style_dim", "n_mlp", "widths", "coordinate_space", "lr_mlp", "line_rank"]
configs = st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), json_values, max_size=9)
small_valid_configs = st.fixed_dictionaries(
    {
        "arch": st.sampled_from(["skip", "res", "ne", "creps"]),
        "size": st.sampled_from([4, 8, 16]),
        "hidden": st.sampled_from([4, 8]),
        "style_dim": st.sampled_from([4, 8]),
        "n_mlp": st.integers(0, 3),
        "widths": st.lists(st.sampled_from([4, 8]), min_size=1, max_size=3),
        "coordinate_space": st.sampled_from(["plane", "cylinder"]),
    }
)


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _parse(config: dict) -> None:
    try:
        parsed = GeneratorConfig.from_dict(config)
    except CipsError:
        return
    count = check_model_size(parsed)  # from the meta device: allocates nothing
    if count < 200_000:
        cips_deploy.Generator(parsed)  # small enough to build for real: it must build


@FUZZ
@given(config=configs | small_valid_configs)
def test_config_parser_gives_a_config_or_a_cips_error(config):
    try:
        _parse(config)
    except CipsError:
        pass


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory, official_dir):
    """Valid inputs to mutate: our safetensors format and an official torch zip."""
    folder = tmp_path_factory.mktemp("seeds")
    ours = folder / "ours.safetensors"
    cips_deploy.create("tiny", size=8, seed=0).save(ours)
    official = folder / "official.pt"  # the g_ema alone: a third of the training checkpoint's bytes
    g_ema = torch.load(official_dir / "cipsskip_s8.pt", weights_only=True)["g_ema"]
    torch.save(g_ema, official)
    legacy = folder / "legacy.pt"  # torch's pre-zip stream: storage sizes are declared inline
    torch.save(g_ema, legacy, _use_new_zipfile_serialization=False)
    return {"safetensors": ours.read_bytes(), "official": official.read_bytes(), "legacy": legacy.read_bytes()}


@st.composite
def mutations(draw, seeds):
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "header length", "splice", "config"]))
        if kind == "flip" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "header length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        elif kind == "splice":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(max_size=64))
        elif kind == "config":
            data = bytearray(_with_config(bytes(data), draw(configs)))
    return bytes(data)


def _with_config(data: bytes, config: dict) -> bytes:
    """``data`` with its safetensors metadata config replaced (unchanged if it is no safetensors file)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        header["__metadata__"]["config"] = json.dumps(config, allow_nan=True)
    except Exception:
        return data
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def test_checkpoint_reader_gives_a_generator_or_a_cips_error(seed_files, tmp_path):
    counter = iter(range(10**9))

    @FUZZ
    @given(data=mutations(seed_files))
    def check(data):
        for suffix in (".safetensors", ".pt"):  # the suffix must not change what a file is taken for
            path = tmp_path / f"fuzz-{next(counter)}{suffix}"
            path.write_bytes(data)
            current, peak = _current_rss(), _peak_rss()
            try:
                generator = cips_deploy.load(path)
            except CipsError:
                pass
            else:
                assert isinstance(generator, cips_deploy.Generator)
            finally:
                path.unlink()
            # A new peak more than MEMORY_BOUND above where this load started: this load took it.
            assert _peak_rss() <= max(peak, current + MEMORY_BOUND), f"{data[:16]!r} took too much memory"

    check()
    assert list(tmp_path.iterdir()) == []
