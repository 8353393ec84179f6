"""The chunked renderer: chunk invariance, seeds and styles, chunkers, backends, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cips_deploy
from cips_deploy.contracts.chunking import ChunkRequest
from cips_deploy.errors import CipsError
from cips_deploy.contracts.footprint import render_bytes_per_point
from cips_deploy.plugins.chunkers import MemoryChunker
from cips_deploy.plugins.torch_backend import TorchBackend
from cips_deploy.runtime.render import render, render_detailed, render_pil

from ..helpers.seams import pooled_seam_ratio


# --------------------------------------------------------------- chunk invariance

HEIGHT, WIDTH = 37, 53  # 1961 points: a prime-ish count that almost no chunk size divides


@pytest.mark.parametrize(
    "chunking",
    [
        dict(chunker="fixed", chunk_size=1),
        dict(chunker="fixed", chunk_size=7),
        dict(chunker="fixed", chunk_size=100),
        dict(chunker="fixed", chunk_size=1000),
        dict(chunker="fixed", chunk_size=HEIGHT * WIDTH - 1),
        dict(chunker="fixed", chunk_size=10 * HEIGHT * WIDTH),
        dict(chunker="rows", chunk_size=1),
        dict(chunker="rows", chunk_size=5),
        dict(chunker="memory", memory_budget=0.05),
        dict(chunker="memory", memory_budget=1.0),
    ],
    ids=lambda chunking: "-".join(str(value) for value in chunking.values()),
)
@pytest.mark.parametrize(
    "arch, space, topology, extra",
    [
        ("skip", "plane", "flat", {}),
        ("res", "plane", "rotated", {}),
        ("ne", "cylinder", "cylinder", {}),
        ("skip", "cylinder", "cylinder", {"blend_seed": 9}),  # per-point styles: the unfolded path
        ("skip", "plane", "foveated", {}),  # points that are not a grid
        ("creps", "plane", "flat", {}),  # CREPS's grid fast path: cached rows and columns
        ("creps", "cylinder", "cylinder", {}),
        ("creps", "plane", "rotated", {}),  # no shared rows or columns
        ("creps", "cylinder", "cylinder", {"blend_seed": 9}),  # per-point styles: CREPS's per-point path
    ],
    ids=["skip-flat", "res-rotated", "ne-cylinder", "blend", "foveated", "creps-flat", "creps-cylinder",
         "creps-rotated", "creps-blend"],
)
def test_output_is_bitwise_identical_whatever_the_chunking(arch, space, topology, extra, chunking):
    generator = _generator(arch, space)
    reference = render(generator, topology, HEIGHT, WIDTH, seed=3, chunker="fixed", chunk_size=HEIGHT * WIDTH, **extra)
    chunked = render_detailed(generator, topology, HEIGHT, WIDTH, seed=3, **chunking, **extra)
    assert np.array_equal(chunked.image, reference)
    if chunking.get("chunk_size") == 7:
        assert chunked.chunks == -(-chunked.points_evaluated // 7)


_generators: dict = {}


def _generator(arch, space):
    if (arch, space) not in _generators:
        _generators[arch, space] = cips_deploy.create("tiny", arch=arch, coordinate_space=space, seed=1)
    return _generators[arch, space]


def test_short_batches_take_the_same_path_as_long_ones(tiny):
    """The torch backend pads short batches: a 3-point call equals rows of a 500-point call."""
    backend = TorchBackend(tiny)
    rng = np.random.default_rng(0)
    coords = (rng.random((1, 500, 2), dtype=np.float32) * 2 - 1).astype(np.float32)
    w = backend.map(rng.standard_normal((1, 64)).astype(np.float32))
    assert isinstance(w, np.ndarray) and w.dtype == np.float32 and w.shape == (1, 64)
    whole = backend.run(coords, w)
    for start, stop in [(0, 1), (10, 13), (100, 111), (437, 500)]:
        assert np.array_equal(backend.run(np.ascontiguousarray(coords[:, start:stop]), w), whole[:, start:stop])
    assert isinstance(whole, np.ndarray) and whole.dtype == np.float32 and whole.shape == (1, 500, 3)


def test_the_torch_backend_computes_what_the_generator_does(tiny):
    """numpy in, numpy out: the same bits as the generator's own float32 path on tensors."""
    backend = TorchBackend(tiny)
    z = cips_deploy.seed_latent(3, tiny.config)
    coords = cips_deploy.grid_coords(16, 24)
    with torch.inference_mode():
        w = tiny.map(torch.from_numpy(z), truncation=0.8)
        rgb = tiny.synthesize(torch.from_numpy(coords), w)
    assert np.array_equal(backend.map(z, truncation=0.8), w.numpy())
    assert np.array_equal(backend.run(coords, w.numpy()), rgb.numpy())


# -------------------------------------------------------------------- seeds, styles


def test_seed_gives_z_from_numpys_randomstate_as_stylegan_and_creps_do(tiny):
    image = render(tiny, "flat", 24, 24, seed=11, truncation=0.7)
    z = np.random.RandomState(11).randn(1, 64).astype(np.float32)
    with torch.inference_mode():
        w = tiny.map(torch.from_numpy(z), truncation=0.7)
        coords = torch.from_numpy(cips_deploy.grid_coords(24, 24))
        expected = cips_deploy.rgb_to_uint8(tiny.synthesize(coords, w)).reshape(24, 24, 3)
    assert np.array_equal(image, expected)
    assert not np.array_equal(image, render(tiny, "flat", 24, 24, seed=12, truncation=0.7))


def test_truncation_zero_renders_the_average_style_for_every_seed(tiny):
    assert np.array_equal(render(tiny, "flat", 16, 16, seed=1, truncation=0.0), render(tiny, "flat", 16, 16, seed=2, truncation=0.0))


def test_blend_seed_moves_from_one_style_to_the_other_around_the_cylinder():
    generator = _generator("skip", "cylinder")
    width = 128
    first = render(generator, "cylinder", 24, width, seed=1).astype(int)
    second = render(generator, "cylinder", 24, width, seed=2).astype(int)
    blended = render(generator, "cylinder", 24, width, seed=1, blend_seed=2)
    middle, edges = slice(width // 2 - 2, width // 2 + 2), np.r_[0:2, width - 2 : width]  # u near 0, u near +-1
    assert np.abs(blended[:, middle] - first[:, middle]).mean() < 2
    assert np.abs(blended[:, edges] - second[:, edges]).mean() < 2
    assert np.abs(first - second).mean() > 10  # the two styles do differ


def test_blended_panoramas_stay_seamless():
    """The blend weight is periodic in u, so a panorama turned by 180 degrees is still exactly
    the original rolled by half, and the pooled seam statistic stays within 1.5.

    At the size of the plain panoramas' test (32 x 256). At 128 columns the tiny model's
    embedding grid (64 cells around the cylinder) puts every other column pair across a cell
    border: adjacent differences alternate about 0.9 and 1.6 times their median, and the seam
    is one of the crossing pairs, so its ratio sits near 1.6 with or without blending (the
    pair at u = 0 alike), which says nothing about a seam."""
    panoramas = []
    for model_seed in range(3):
        generator = cips_deploy.create("tiny", coordinate_space="cylinder", seed=model_seed)
        for seed in range(4):
            panoramas.append(render(generator, "cylinder", 32, 256, seed=seed, blend_seed=seed + 10))
        turned = render(generator, "cylinder", 32, 256, seed=3, blend_seed=13, heading=180.0)
        assert np.abs(np.roll(panoramas[-1], 128, axis=1).astype(int) - turned.astype(int)).mean() < 0.05
    assert pooled_seam_ratio(panoramas) <= 1.5


def test_blending_a_seed_with_itself_changes_nothing_visible(tiny):
    plain = render(tiny, "flat", 32, 32, seed=4).astype(int)
    self_blended = render(tiny, "flat", 32, 32, seed=4, blend_seed=4).astype(int)
    assert np.abs(plain - self_blended).max() <= 1  # per-point path: same maths, other rounding


# ------------------------------------------------------------------------ chunkers


def test_memory_chunker_takes_the_largest_chunk_within_the_budget(tiny):
    bytes_per_point = render_bytes_per_point(tiny.config)
    request = ChunkRequest(n_points=100_000, memory_budget=2.0, bytes_per_point=bytes_per_point)
    spans = list(MemoryChunker().spans(request))
    size = int(2.0 * 2**20 // bytes_per_point)
    assert spans[0] == (0, size) and spans[-1][1] == 100_000
    assert all(stop - start <= size for start, stop in spans)
    with pytest.raises(CipsError, match="cannot hold one point of this model"):
        list(MemoryChunker().spans(ChunkRequest(n_points=10, memory_budget=1e-6, bytes_per_point=bytes_per_point)))


def test_per_point_styles_cost_more_memory_per_point(tiny):
    assert render_bytes_per_point(tiny.config, per_point_style=True) > render_bytes_per_point(tiny.config)
    paper = cips_deploy.preset_config("paper256")
    assert render_bytes_per_point(paper) > 4 * render_bytes_per_point(tiny.config)


def test_progress_is_reported_after_every_chunk(tiny):
    calls = []
    result = render_detailed(tiny, "flat", 20, 30, chunk_size=250, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 600), (250, 600), (500, 600), (600, 600)]
    assert result.chunks == 3


# ------------------------------------------------------------------------- backends


def test_a_checkpoint_path_renders_like_the_generator(tiny, tmp_path):
    path = tmp_path / "tiny.safetensors"
    tiny.save(path)
    assert np.array_equal(render(str(path), "flat", 16, 16, seed=2), render(tiny, "flat", 16, 16, seed=2))
    with pytest.raises(CipsError, match="No such checkpoint"):
        render(tmp_path / "missing.safetensors", "flat", 16, 16)


class CountingBackend(TorchBackend):
    name = "counting"

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.batches = []
        self.closed = False

    def run(self, coords, w):
        self.batches.append((coords.dtype, tuple(coords.shape), tuple(w.shape)))
        return super().run(coords, w)

    def close(self):
        self.closed = True


def test_a_backend_instance_is_used_as_given_and_not_closed(tiny):
    backend = CountingBackend(tiny)
    image = render(backend, "flat", 10, 10, chunk_size=40, seed=1)
    assert np.array_equal(image, render(tiny, "flat", 10, 10, seed=1))
    assert backend.batches == [(np.float32, (1, 40, 2), (1, 64))] * 2 + [(np.float32, (1, 20, 2), (1, 64))]
    assert not backend.closed
    render(backend, "flat", 4, 4, blend_seed=3)
    assert backend.batches[-1][2] == (1, 16, 64)  # per-point styles arrive as [B, N, S]


def test_render_pil_returns_an_rgb_image(tiny):
    image = render_pil(tiny, "flat", 12, 20)
    assert (image.mode, image.size) == ("RGB", (20, 12))
    assert cips_deploy.render is render


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=0), "height must be a positive whole number of pixels, not 0"),
        (dict(width=-3), "width must be a positive whole number of pixels, not -3"),
        (dict(height=2.5), "height must be a positive whole number of pixels, not 2.5"),
        (dict(width=1 << 21), "exceeds the limit"),
        (dict(height=1 << 20, width=1 << 20), "over the in-memory limit of 268 megapixels; render it to a streaming format"),
        (dict(seed=-1), "seed must be a whole number from 0"),
        (dict(blend_seed="x"), "blend seed must be a whole number"),
        (dict(truncation=float("inf")), "truncation must be a finite number"),
        (dict(topology="sphere"), "Unknown topology 'sphere'; available: cylinder, flat, foveated, rotated"),
        (dict(chunker="random"), "Unknown chunker 'random'; available: fixed, memory, rows"),
        (dict(backend="vulkan"), "Unknown backend 'vulkan'"),
        (dict(chunk_size=0), "chunk size must be a positive whole number, not 0"),
        (dict(chunker="memory", chunk_size=10), "The memory chunker takes no chunk size"),
        (dict(chunker="fixed", memory_budget=10.0), "The fixed chunker takes no memory budget"),
        (dict(memory_budget=float("nan")), "memory budget must be a positive number of MB"),
        (dict(device="tpu"), "Unknown device 'tpu'|runs on cpu or cuda devices"),
        (dict(topology="rotated", angle="steep"), "The rotated topology's parameter angle must be a number, not 'steep'"),
        (dict(u_max=1, zoom=3), "The flat topology has no parameter zoom"),
    ],
)
def test_bad_input_is_one_clear_sentence(tiny, registry, kwargs, message):
    options = dict(topology="flat", height=8, width=8) | kwargs
    with pytest.raises(CipsError, match=message) as caught:
        render(tiny, registry=registry, **options)
    text = str(caught.value)
    assert text.endswith(".") and "\n" not in text
