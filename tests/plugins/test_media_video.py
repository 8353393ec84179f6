"""Animations: frames through the normal renderer, looping walks, zooms, pans, writers, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageSequence

import cips_deploy
from cips_deploy.cli import cli
from cips_deploy.errors import CipsError
from cips_deploy.runtime.render import latent, make_backend, render
from cips_deploy.media.video import Animation, check_animation, frame_parameters, read_webp_provenance, render_frames, walk_styles, write_video


@pytest.fixture(scope="module")
def tiny_cylinder() -> cips_deploy.Generator:
    return cips_deploy.create("tiny", coordinate_space="cylinder", seed=0)


@pytest.fixture()
def backend(tiny, registry):
    runner = make_backend(registry, "torch", tiny, "cpu", {})
    yield runner
    runner.close()


def frames_of(runner, animation, registry, **options):
    return list(render_frames(runner, animation, 24, 20, registry=registry, **options))


def test_frames_are_bitwise_the_same_for_any_chunking(backend, registry):
    animation = Animation(mode="zoom", seeds=(3, 5), frames=4, zoom=3.0, centre=(0.2, -0.1), ramps={})
    reference = frames_of(backend, animation, registry)  # the memory chunker: one chunk here
    for options in ({"chunk_size": 7}, {"chunk_size": 64}, {"chunker": "rows", "chunk_size": 1}):
        frames = frames_of(backend, animation, registry, **options)
        assert all(np.array_equal(a, b) for a, b in zip(reference, frames, strict=True)), options
    assert not np.array_equal(reference[0], reference[-1])  # it does move


def test_a_walk_passes_through_each_seed_and_loops_without_a_jump(tiny, backend, registry):
    seeds, frames = (0, 1, 2), 12
    keys = torch.cat([tiny.map(latent(seed, tiny.config)) for seed in seeds])
    styles = torch.cat(list(walk_styles(keys, frames)))  # [frames, S]
    for index, seed in enumerate(seeds):  # frame 4 i sits exactly on seed i
        assert torch.equal(styles[index * frames // len(seeds)], keys[index])
    steps = (styles.roll(-1, dims=0) - styles).norm(dim=1)  # the last step wraps to frame 0
    assert steps[-1] <= 1.5 * steps[:-1].max()  # no jump where the loop closes
    assert steps.min() > 0  # and no standing still at the seeds
    # The frame on a seed is that seed's own render.
    animation = Animation(mode="walk", seeds=seeds, frames=frames)
    video = frames_of(backend, animation, registry)
    assert np.array_equal(video[4], render(tiny, "flat", 24, 20, seed=1))


def test_zoom_and_pan_move_the_viewport(registry):
    zoom = Animation(mode="zoom", seeds=(0,), frames=5, zoom=4.0, centre=(0.5, 0.0))
    first, last = frame_parameters(zoom, 0, registry), frame_parameters(zoom, 4, registry)
    assert (first["u_min"], first["u_max"], first["v_min"], first["v_max"]) == (-1.0, 1.0, -1.0, 1.0)
    assert last["u_min"] == pytest.approx(0.5 - 1.5 / 4) and last["u_max"] == pytest.approx(0.5 + 0.5 / 4)
    assert last["v_max"] - last["v_min"] == pytest.approx(0.5)
    start = Animation(mode="zoom", seeds=(0,), frames=3, zoom=2.0, params={"u_min": "-0.5", "u_max": "0.5"})
    end = frame_parameters(start, 2, registry)  # the given viewport is the first view
    assert (end["u_min"], end["u_max"], end["v_min"], end["v_max"]) == pytest.approx((-0.25, 0.25, -0.5, 0.5))
    pan = Animation(mode="pan", seeds=(0,), frames=8, fov=90.0)
    centres = [(p["u_min"] + p["u_max"]) / 2 for p in (frame_parameters(pan, k, registry) for k in range(8))]
    assert centres == pytest.approx([k * 0.25 for k in range(8)])  # 45 degrees a frame, the 9th would be 360
    ramp = Animation(mode="walk", seeds=(0, 1), frames=3, topology="flat", ramps={"v_min": ("-1", "0")})
    assert [frame_parameters(ramp, k, registry)["v_min"] for k in range(3)] == [-1.0, -0.5, 0.0]


def test_an_animated_parameter_renders_like_the_fixed_one(tiny, backend, registry):
    animation = Animation(mode="walk", seeds=(4, 4), frames=3, ramps={"v_max": ("1", "0.5")})
    frames = frames_of(backend, animation, registry)
    assert np.array_equal(frames[0], render(tiny, "flat", 24, 20, seed=4))
    assert np.array_equal(frames[2], render(tiny, "flat", 24, 20, seed=4, v_max=0.5))


@pytest.mark.parametrize(
    "animation, space, message",
    [
        (Animation(mode="walk", seeds=(0, 1), frames=1), "plane", "at least 2 frames"),
        (Animation(mode="walk", seeds=(0,), frames=4), "plane", "two seeds"),
        (Animation(mode="spin", seeds=(0,), frames=4), "plane", "Unknown animation mode 'spin'"),
        (Animation(mode="pan", seeds=(0,), frames=4), "plane", "pan mode turns around a cylinder-space model"),
        (Animation(mode="walk", seeds=(0, 1), frames=4, ramps={"gaze": ("0", "1")}), "plane", "has no parameter gaze"),
        (Animation(mode="zoom", seeds=(0,), frames=4, ramps={"u_min": ("0", "1")}), "plane", "sets u_min itself"),
        (Animation(mode="pan", seeds=(0,), frames=4, params={"u_max": "0"}), "cylinder", "sets u_max itself"),
        (Animation(mode="zoom", seeds=(0,), frames=4, zoom=1.0), "plane", "other than 1"),
        (Animation(mode="zoom", seeds=(0,), frames=4, topology="cylinder"), "cylinder", "does not have"),
        (Animation(mode="walk", seeds=(0, 1), frames=4, topology="cylinder"), "plane", "needs a cylinder-space model"),
    ],
)
def test_bad_animations_are_one_sentence(animation, space, message, registry):
    with pytest.raises(CipsError, match=message):
        check_animation(animation, space, registry)


def test_lossless_webp_holds_exactly_the_frames_and_says_what_it_is(tmp_path, backend, registry):
    animation = Animation(mode="walk", seeds=(0, 1), frames=4)
    frames = frames_of(backend, animation, registry)
    path = tmp_path / "walk.webp"
    count = write_video(iter(frames), path, height=24, width=20, fps=10, provenance={"seed": "0,1", "model_sha256": "ab"}, lossless=True)
    assert count == 4
    with Image.open(path) as image:
        assert image.n_frames == 4 and image.info["loop"] == 0
        decoded, durations = [], []
        for frame in ImageSequence.Iterator(image):
            decoded.append(np.asarray(frame.convert("RGB")))
            durations.append(frame.info["duration"])
    assert durations == [100] * 4
    assert all(np.array_equal(a, b) for a, b in zip(frames, decoded, strict=True))
    assert read_webp_provenance(path) == {"seed": "0,1", "model_sha256": "ab"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.webp"]


def test_mp4_through_the_video_extra(tmp_path, backend, registry):
    ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra (imageio-ffmpeg) is not installed")
    frames = frames_of(backend, Animation(mode="zoom", seeds=(2,), frames=5), registry)
    path = tmp_path / "zoom.mp4"
    assert write_video(iter(frames), path, height=24, width=20, fps=12, provenance={"seed": "2"}) == 5
    reader = ffmpeg.read_frames(str(path))
    meta = next(reader)
    decoded = [np.frombuffer(frame, np.uint8).reshape(24, 20, 3) for frame in reader]
    assert meta["size"] == (20, 24) and len(decoded) == 5
    # H.264 is lossy, but each decoded frame is nearest to its own source frame.
    for index, frame in enumerate(decoded):
        errors = [np.abs(frame.astype(int) - source).mean() for source in frames]
        assert int(np.argmin(errors)) == index


def test_video_command(tmp_path):
    runner = CliRunner()
    out = tmp_path / "walk.webp"
    result = runner.invoke(cli, ["video", "--preset", "tiny", "--seeds", "0-2", "--frames", "3", "--height", "16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 frames of 16x16" in result.output
    with Image.open(out) as image:
        assert image.n_frames == 3
    provenance = read_webp_provenance(out)
    assert provenance["seed"] == "0,1,2" and provenance["animation"] == "walk" and provenance["frames"] == "3"
    pan = runner.invoke(cli, ["video", "--mode", "pan", "--seeds", "1", "--frames", "4", "--height", "16", "-o", str(tmp_path / "pan.webp")])
    assert pan.exit_code == 0, pan.output  # the demo model is a cylinder model
    assert "16x16 (pan, flat)" in pan.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--frames", "1"], "at least 2 frames"),
        (["--duration", "0"], "duration must be a positive number"),
        (["--fps", "0"], "frame rate must be a positive"),
        (["--fps", "2000"], "under 1 ms"),
        (["-p", "nope=0:1"], "has no parameter nope"),
        (["-p", "v_min=:1"], "NAME=START:END"),
        (["--mode", "pan"], "cylinder-space model"),
        (["--seeds", "3"], "two seeds"),
        (["--fov", "nan"], "field of view"),
        (["--mode", "spin"], "Unknown animation mode 'spin'; choose one of walk, zoom, pan."),
        (["--output-name", "clip.gif"], "must be a .webp"),
    ],
)
def test_video_command_bad_input_is_one_line(tmp_path, arguments, message):
    name = "clip.webp"
    if arguments[0] == "--output-name":
        name, arguments = arguments[1], []
    result = CliRunner().invoke(
        cli, ["video", "--preset", "tiny", "--height", "16", "--frames", "3", "--seeds", "0-1", *arguments, "-o", str(tmp_path / name)]
    )
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_video_is_registered_by_a_builtin_plugin(registry):
    from cips_deploy.runtime.plugin_manager import BUILTIN_PLUGINS

    assert "cips_deploy.plugins.video" in BUILTIN_PLUGINS
    assert "register_commands" in registry.plugins["cips_deploy.plugins.video"].hooks
    import inspect

    import cips_deploy.cli as package

    assert "video" not in inspect.getsource(package)


def test_render_takes_a_ready_style_and_checks_it(tiny):
    from cips_deploy.runtime.render import render_detailed

    w = tiny.map(latent(9, tiny.config))
    assert np.array_equal(render_detailed(tiny, "flat", 8, 8, style=w).image, render(tiny, "flat", 8, 8, seed=9))
    for bad in (torch.zeros(1, 3), torch.zeros(2, tiny.config.style_dim), torch.full((1, tiny.config.style_dim), math.nan)):
        with pytest.raises(CipsError, match="style"):
            render_detailed(tiny, "flat", 8, 8, style=bad)
