"""``video --grid RxC``: a grid of latent walks as StyleGAN3's gen_video.py makes it, and the
render controls (transform, mixing, --trunc) in videos."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageSequence

from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.media.video import Animation, grid_animations, grid_frames, parse_grid, render_frames
from cips_deploy.runtime.render import make_backend
from cips_deploy.runtime.render_setup import Controls


@pytest.mark.runtime
@pytest.mark.parametrize("text, grid", [("2x3", (2, 3)), ("1X1", (1, 1)), (" 4 x 2 ", (4, 2))])
def test_parse_grid(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.runtime
@pytest.mark.parametrize("text", ["2", "2x", "x3", "0x2", "2x65", "axb", "2x3x4", "9" * 50 + "x1"])
def test_parse_grid_refuses_in_one_sentence(text):
    with pytest.raises(CipsError, match="--grid"):
        parse_grid(text)


@pytest.mark.runtime
def test_seeds_are_dealt_out_in_order_as_gen_video_does():
    cells = grid_animations(Animation(seeds=tuple(range(12)), frames=4), (2, 3))
    assert [cell.seeds for cell in cells] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]
    with pytest.raises(CipsError, match="multiple of 6"):
        grid_animations(Animation(seeds=tuple(range(7)), frames=4), (2, 3))
    with pytest.raises(CipsError, match="at least 2 seeds per cell"):
        grid_animations(Animation(seeds=tuple(range(6)), frames=4), (2, 3))


def test_each_cell_is_its_own_walk(tiny, registry):
    runner = make_backend(registry, "torch", tiny, "cpu", {})
    try:
        animation = Animation(seeds=(0, 1, 2, 3, 4, 5, 6, 7), frames=3)
        controls = Controls.make({"rotate": 15.0}, mix_seed=9, mix_from=5)
        frames = list(grid_frames(runner, animation, 8, 10, (2, 2), truncation=0.7, controls=controls, registry=registry))
        assert [frame.shape for frame in frames] == [(16, 20, 3)] * 3
        for number, seeds in enumerate([(0, 1), (2, 3), (4, 5), (6, 7)]):
            row, column = divmod(number, 2)
            cell = Animation(seeds=seeds, frames=3)
            expected = list(render_frames(runner, cell, 8, 10, truncation=0.7, controls=controls, registry=registry))
            for frame, alone in zip(frames, expected):
                np.testing.assert_array_equal(frame[row * 8 : (row + 1) * 8, column * 10 : (column + 1) * 10], alone)
        assert not np.array_equal(frames[0][:8, :10], frames[0][:8, 10:])
    finally:
        runner.close()


def test_video_grid_from_the_command_line(tmp_path, tiny_checkpoint):
    output = tmp_path / "grid.webp"
    result = CliRunner().invoke(cli, ["video", "--checkpoint", str(tiny_checkpoint), "--grid", "2x3", "--seeds", "0-17",
                                      "--frames", "3", "--height", "8", "--width", "12", "--trunc", "0.5", "--translate", "0.1,0",
                                      "--lossless", "-o", str(output)])
    assert result.exit_code == 0, result.output
    with Image.open(output) as clip:
        assert clip.size == (36, 16)
        assert sum(1 for _ in ImageSequence.Iterator(clip)) == 3  # 3 seeds a cell: 3 different frames (WebP merges equal ones)


def test_video_grid_refuses_bad_seeds_before_writing(tmp_path, tiny_checkpoint):
    output = tmp_path / "grid.webp"
    result = CliRunner().invoke(cli, ["video", "--checkpoint", str(tiny_checkpoint), "--grid", "2x2", "--seeds", "0-6",
                                      "--frames", "3", "--height", "8", "-o", str(output)])
    assert result.exit_code == 1 and "multiple of 4" in result.output and "Traceback" not in result.output
    assert not output.exists()


def test_video_class_on_an_unconditional_model_is_one_sentence(tmp_path, tiny_checkpoint):
    result = CliRunner().invoke(cli, ["video", "--checkpoint", str(tiny_checkpoint), "--seeds", "0-1", "--frames", "2",
                                      "--height", "8", "--class", "1", "-o", str(tmp_path / "c.webp")])
    assert result.exit_code == 1 and "unconditional" in result.output and "Traceback" not in result.output
