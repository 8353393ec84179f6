"""The low-precision input stage computed per row and column (cips_deploy.families.separable_inputs).

It must give every point the same bits whichever chunk (grid block, partial rows, scattered
points) it is computed in, stay within bfloat16 rounding of the float32 input stage, and
never be used by float32 synthesis.
"""

from __future__ import annotations

import pytest
import torch

import cips_deploy
from cips_deploy.runtime import coords
from cips_deploy.families.separable_inputs import input_features


def grid_coords(height: int, width: int) -> torch.Tensor:
    """The runtime's grid (numpy) as the tensor the torch modules under test take: [1, H*W, 2]."""
    return torch.from_numpy(coords.grid_coords(height, width))


def float32_features(generator, points: torch.Tensor) -> torch.Tensor:
    """The float32 input stage, as float32 synthesis computes it: points [N, 2] -> [N, F (+ F)]."""
    x = generator.fourier(points[None])
    if generator.embedding is not None:
        x = torch.cat([x, generator.embedding(points[None])], dim=-1)
    return x[0]


@pytest.fixture(
    params=[("skip", "plane"), ("skip", "cylinder"), ("ne", "plane")], ids=["plane", "cylinder", "no-embedding"]
)
def generator(request):
    arch, space = request.param
    return cips_deploy.create("tiny", arch=arch, coordinate_space=space, seed=3)


@pytest.mark.parametrize("height, width", [(24, 37), (64, 64)])
@torch.inference_mode()
def test_every_point_gets_the_same_bits_in_any_chunk(generator, height, width):
    # 24 x 37 pixels on the 64-texel grid: bilinear weights strictly between 0 and 1;
    # 64 x 64: pixels on texel centres, consecutive texel rows.
    points = grid_coords(height, width)[0]
    whole = input_features(generator.fourier, generator.embedding, points, torch.bfloat16)
    for size in (width, 64, 100, 333):  # whole rows, then partial rows at both ends
        parts = [input_features(generator.fourier, generator.embedding, points[i : i + size], torch.bfloat16)
                 for i in range(0, points.shape[0], size)]
        assert torch.equal(torch.cat(parts), whole)
    scattered = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:200]
    assert torch.equal(input_features(generator.fourier, generator.embedding, points[scattered], torch.bfloat16),
                       whole[scattered])


@torch.inference_mode()
def test_features_are_the_float32_ones_to_bfloat16_rounding(generator):
    points = torch.cat([grid_coords(24, 37)[0], torch.rand(100, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1])
    reference = float32_features(generator, points)
    features = input_features(generator.fourier, generator.embedding, points, torch.bfloat16)
    assert features.dtype == torch.bfloat16 and features.shape == reference.shape
    # bfloat16 keeps 8 significant bits: rounding moves a value by at most 2**-8 of it
    # (the float32 sums here differ from float32 synthesis by a few ulps more).
    assert ((features.float() - reference).abs() <= reference.abs() * 2**-8 + 1e-5).all()


@torch.inference_mode()
def test_float32_synthesis_keeps_its_own_input_stage_and_bf16_takes_the_separable_one(generator):
    points = grid_coords(12, 10)
    w = generator.map(torch.randn(1, generator.config.style_dim, generator=torch.Generator().manual_seed(2)))
    seen = []
    hook = generator.first.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        generator.synthesize(points, w)
        generator.synthesize(points, w, dtype=torch.bfloat16)
    finally:
        hook.remove()
    assert torch.equal(seen[0], float32_features(generator, points[0])[None])
    assert torch.equal(seen[1], input_features(generator.fourier, generator.embedding, points[0], torch.bfloat16)[None])


def test_scratch_buffers_are_per_thread_and_per_mode(generator):
    """The block path's reused scratch buffers: threads never share them, and buffers made
    under inference mode are not written outside it (nor the other way round)."""
    from concurrent.futures import ThreadPoolExecutor

    points = grid_coords(32, 40)[0]
    chunks = [points[i : i + 160] for i in range(0, points.shape[0], 160)]
    with torch.inference_mode():
        expected = [input_features(generator.fourier, generator.embedding, chunk, torch.bfloat16) for chunk in chunks]

    def compute(chunk):
        with torch.inference_mode():
            return [input_features(generator.fourier, generator.embedding, chunk, torch.bfloat16) for _ in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for want, got in zip(expected, pool.map(compute, chunks)):
            assert all(torch.equal(result, want) for result in got)
    with torch.no_grad():  # after inference mode: ordinary tensors, the same bits
        again = input_features(generator.fourier, generator.embedding, chunks[0], torch.bfloat16)
    assert torch.equal(again, expected[0])
