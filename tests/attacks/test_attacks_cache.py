"""Attack family: the onnxruntime export cache and supplied engines. Entries and ``engine=`` files
are verified by content hash, not metadata: a swapped graph, overwritten weights or garbage are
rebuilt (cache) or refused (``engine=``), never rendered."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import cips_deploy
from cips_deploy.families.checkpoint import file_sha256
from cips_deploy.errors import CipsError
from cips_deploy.exporters.cache import cache_entry, cached_generator_onnx, cached_onnx
from cips_deploy.exporters.metadata import weights_sha256
from cips_deploy.exporters.onnx_export import export_onnx

from ..helpers.attack_tools import files_under, refused


def _render(model) -> np.ndarray:
    return cips_deploy.render(model, "flat", 16, 16, seed=3, backend="onnxruntime")


def _swap_graph(entry, other_model_file):
    """Put another model's graph at ``entry`` under the entry's own metadata (content hash included)."""
    own = onnx.load(str(entry))
    other = onnx.load(str(other_model_file))
    del other.metadata_props[:]
    other.metadata_props.extend(own.metadata_props)
    onnx.save(other, str(entry))


def _overwrite_weights(entry, count=4096):
    """Overwrite ``count`` bytes in the middle of the largest initializer, in place."""
    model = onnx.load(str(entry))
    largest = max(model.graph.initializer, key=lambda tensor: len(tensor.raw_data)).raw_data
    data = bytearray(entry.read_bytes())
    start = data.find(largest) + len(largest) // 2
    data[start : start + count] = np.random.default_rng(0).bytes(count)
    entry.write_bytes(bytes(data))


@pytest.mark.parametrize("attack", ["swapped graph", "overwritten weights", "garbage", "missing mapping"])
def test_a_tampered_cache_entry_is_rebuilt_not_used(cache, models, tmp_path, attack):
    a, b = models
    expected = _render(a)
    entry = cache_entry(file_sha256(a))
    original = entry.read_bytes()
    if attack == "swapped graph":
        other = tmp_path / "other.onnx"
        export_onnx(cips_deploy.load(b), other, validate_export=False)
        _swap_graph(entry, other)
    elif attack == "overwritten weights":
        _overwrite_weights(entry)
    elif attack == "garbage":
        entry.write_bytes(b"\x08garbage" * 10)
    else:
        entry.with_name("model.mapping.onnx").unlink()
    assert entry.read_bytes() != original or attack == "missing mapping"
    assert np.array_equal(_render(a), expected)  # rebuilt: the same pixels as before the attack
    assert entry.read_bytes() == original
    assert not [name for name in files_under(cache) if name.endswith((".partial", ".probe"))]


def test_a_preset_models_cache_entry_is_verified_too(cache, tmp_path):
    generator = cips_deploy.create("tiny", seed=5)
    path = cached_generator_onnx(generator)
    original = path.read_bytes()
    _overwrite_weights(path)
    assert cached_generator_onnx(generator) == path and path.read_bytes() == original
    other = cips_deploy.create("tiny", seed=6)
    assert cache_entry("w" + weights_sha256(other)) != path  # keyed by the weights


def test_an_entry_of_another_checkpoint_is_never_used(cache, models):
    a, b = models
    entry_b = cached_onnx(b)
    entry_a = cache_entry(file_sha256(a))
    entry_a.parent.mkdir(parents=True)
    for file in entry_b.parent.iterdir():  # B's complete, self-consistent entry under A's key
        (entry_a.parent / file.name).write_bytes(file.read_bytes())
    cached_onnx(a)
    assert onnx.load(str(entry_a)).metadata_props != onnx.load(str(entry_b)).metadata_props


@pytest.mark.parametrize("attack", ["swapped graph", "overwritten weights", "no content hash"])
def test_a_tampered_engine_option_is_refused(models, tmp_path, attack):
    a, b = models
    engine = tmp_path / "a.onnx"
    export_onnx(cips_deploy.load(a), engine, source_sha256=file_sha256(a), validate_export=False)
    if attack == "swapped graph":
        export_onnx(cips_deploy.load(b), tmp_path / "b.onnx", validate_export=False)
        _swap_graph(engine, tmp_path / "b.onnx")
        message = "was modified after export"
    elif attack == "overwritten weights":
        _overwrite_weights(engine)
        message = "was modified after export"
    else:
        model = onnx.load(str(engine))
        kept = [prop for prop in model.metadata_props if prop.key != "cips_deploy.content_sha256"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, str(engine))
        message = "carries no content hash"
    refused(
        ["render", "--checkpoint", str(a), "--backend", "onnxruntime", "--backend-option", f"engine={engine}",
         "--height", "8", "-o", "out.png"],
        message, cwd=tmp_path,
    )
    with pytest.raises(CipsError, match=message):
        cips_deploy.render(a, "flat", 8, 8, backend="onnxruntime", backend_options={"engine": engine})


def test_an_engine_given_as_the_model_is_verified_when_it_carries_a_hash(models, tmp_path):
    a, _ = models
    engine = tmp_path / "a.onnx"
    export_onnx(cips_deploy.load(a), engine, validate_export=False)
    _overwrite_weights(engine)
    refused(["render", "--checkpoint", str(engine), "--backend", "onnxruntime", "--height", "8", "-o", "o.png"],
            "was modified after export", cwd=tmp_path)


def test_the_onnxruntime_backend_is_chunk_invariant_down_to_one_point(cache, models):
    from cips_deploy.exporters.backends import OnnxRuntimeBackend

    a, _ = models
    backend = OnnxRuntimeBackend(a)
    coords = np.random.default_rng(0).uniform(-1, 1, (1, 200, 2)).astype(np.float32)
    w = backend.map(np.random.default_rng(1).standard_normal((1, backend.config.style_dim)).astype(np.float32))
    whole = backend.run(coords, w)
    one_by_one = np.concatenate([backend.run(coords[:, i : i + 1], w) for i in range(200)], axis=1)
    assert np.array_equal(whole, one_by_one)  # unpadded, single points differed by up to 5e-6
    whole = cips_deploy.render(a, "flat", 12, 12, seed=1, backend="onnxruntime")
    for chunk_size in (1, 7, 65):
        chunked = cips_deploy.render(a, "flat", 12, 12, seed=1, backend="onnxruntime", chunk_size=chunk_size)
        assert np.array_equal(chunked, whole), chunk_size


def test_deeply_nested_engine_metadata_is_one_sentence(models, tmp_path):
    from cips_deploy.exporters.metadata import read_onnx_metadata

    a, _ = models
    engine = tmp_path / "a.onnx"
    export_onnx(cips_deploy.load(a), engine, validate_export=False)
    model = onnx.load(str(engine))
    for prop in model.metadata_props:
        if prop.key == "cips_deploy.config":
            prop.value = "[" * 100_000 + "]" * 100_000
    onnx.save(model, str(engine))
    with pytest.raises(CipsError, match="nests deeper than 32 levels"):
        read_onnx_metadata(engine)
