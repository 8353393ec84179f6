"""Animations: frames through the normal renderer, looping walks, zooms, pans, writers, CLI.

Most tests run twice: on a numpy backend that needs no torch (``runtime``: the torch-free
install runs them) and on the torch backend of a tiny random generator.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageSequence

from cips_deploy.contracts.backend import Backend
from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.media.video import (
    Animation, check_animation, frame_parameters, make_video, read_webp_provenance, render_frames, walk_styles, write_video,
)
from cips_deploy.runtime.render import make_backend, render, render_detailed
from cips_deploy.runtime.seeds import seed_latent


class StyledCoordinates(Backend):
    """A numpy backend whose colours follow each point's coordinates and the style:
    ``rgb = clip(u w0 + w1 / 2, v w2 + w3 / 2, u v)``, with ``w = truncation * z``.

    Elementwise float32 arithmetic only, so every point's colour is the same in any chunk.
    """

    name = "styled-coordinates"

    def __init__(self, model=None, *, device="cpu"):
        self.config = GeneratorConfig(arch="skip", size=32, hidden=8, style_dim=4, widths=(8,), coordinate_space="plane")

    def map(self, z, truncation=1.0):
        return (z * np.float32(truncation)).astype(np.float32)  # z [B, 4] -> w [B, 4]

    def run(self, coords, w):
        u, v = coords[..., 0], coords[..., 1]  # [B, N]
        w = w[:, None, :] if w.ndim == 2 else w  # [B, 1 or N, 4]
        rgb = np.stack([u * w[..., 0] + w[..., 1] * 0.5, v * w[..., 2] + w[..., 3] * 0.5, u * v], axis=-1)
        return np.clip(rgb, -1.0, 1.0).astype(np.float32)  # [B, N, 3]

    def bytes_per_point(self, per_point_style=False):
        return 64


@pytest.fixture(params=[pytest.param("numpy", marks=pytest.mark.runtime), "torch"])
def backend(request, registry):
    """A constructed backend: the numpy one above, or the torch backend of a tiny generator."""
    if request.param == "numpy":
        yield StyledCoordinates()
        return
    import cips_deploy

    runner = make_backend(registry, "torch", cips_deploy.create("tiny", seed=0), "cpu", {})
    yield runner
    runner.close()


@pytest.fixture()
def numpy_backend():
    return StyledCoordinates()


def frames_of(runner, animation, registry, **options):
    return list(render_frames(runner, animation, 24, 20, registry=registry, **options))


def test_frames_are_bitwise_the_same_for_any_chunking(backend, registry):
    animation = Animation(mode="zoom", seeds=(3, 5), frames=4, zoom=3.0, centre=(0.2, -0.1), ramps={})
    reference = frames_of(backend, animation, registry)  # the memory chunker: one chunk here
    for options in ({"chunk_size": 7}, {"chunk_size": 64}, {"chunker": "rows", "chunk_size": 1}):
        frames = frames_of(backend, animation, registry, **options)
        assert all(np.array_equal(a, b) for a, b in zip(reference, frames, strict=True)), options
    assert not np.array_equal(reference[0], reference[-1])  # it does move


def test_a_walk_passes_through_each_seed_and_loops_without_a_jump(backend, registry):
    seeds, frames = (0, 1, 2), 12
    keys = np.concatenate([backend.map(seed_latent(seed, backend.config), 1.0) for seed in seeds])  # [3, S]
    styles = np.concatenate(list(walk_styles(keys, frames)))  # [frames, S]
    assert styles.dtype == np.float32 and styles.shape == (frames, backend.config.style_dim)
    for index, seed in enumerate(seeds):  # frame 4 i sits exactly on seed i
        assert np.array_equal(styles[index * frames // len(seeds)], keys[index])
    steps = np.linalg.norm(np.roll(styles, -1, axis=0) - styles, axis=1)  # the last step wraps to frame 0
    assert steps[-1] <= 1.5 * steps[:-1].max()  # no jump where the loop closes
    assert steps.min() > 0  # and no standing still at the seeds
    # The frame on a seed is that seed's own render.
    animation = Animation(mode="walk", seeds=seeds, frames=frames)
    video = frames_of(backend, animation, registry)
    assert np.array_equal(video[4], render(backend, "flat", 24, 20, seed=1))
    assert not np.array_equal(video[4], video[5])


@pytest.mark.runtime
def test_walk_styles_of_one_key_and_the_seed_rule(numpy_backend):
    key = numpy_backend.map(seed_latent(7, numpy_backend.config))  # [1, S]
    styles = list(walk_styles(key, 3))
    assert all(style.shape == (1, 4) and style.dtype == np.float32 and np.array_equal(style, key) for style in styles)
    # z is RandomState(seed).randn(1, Z) as float32, the one rule for every family.
    assert np.array_equal(seed_latent(7, numpy_backend.config), np.random.RandomState(7).randn(1, 4).astype(np.float32))


@pytest.mark.runtime
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


def test_an_animated_parameter_renders_like_the_fixed_one(backend, registry):
    animation = Animation(mode="walk", seeds=(4, 4), frames=3, ramps={"v_max": ("1", "0.5")})
    frames = frames_of(backend, animation, registry)
    assert np.array_equal(frames[0], render(backend, "flat", 24, 20, seed=4))
    assert np.array_equal(frames[2], render(backend, "flat", 24, 20, seed=4, v_max=0.5))


@pytest.mark.runtime
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


@pytest.mark.runtime
def test_lossless_webp_holds_exactly_the_frames_and_says_what_it_is(tmp_path, numpy_backend, registry):
    animation = Animation(mode="walk", seeds=(0, 1), frames=4)
    frames = frames_of(numpy_backend, animation, registry)
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


@pytest.mark.runtime
def test_mp4_through_the_video_extra(tmp_path, numpy_backend, registry):
    ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="the video extra (imageio-ffmpeg) is not installed")
    frames = frames_of(numpy_backend, Animation(mode="zoom", seeds=(2,), frames=5), registry)
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
    from click.testing import CliRunner

    from cips_deploy.cli import cli

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


@pytest.mark.runtime
def test_video_command_renders_the_demo_engine(tmp_path):
    from click.testing import CliRunner

    from cips_deploy.cli import cli
    from cips_deploy.models import DEMO_ENGINE
    from cips_deploy.runtime.hashing import file_sha256

    out = tmp_path / "walk.webp"
    result = CliRunner().invoke(cli, ["video", "--seeds", "0-1", "--frames", "3", "--height", "8", "--lossless", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 frames of 8x32 (walk, cylinder)" in result.output  # a cylinder model's walk: panoramas 4 heights wide
    facts = read_webp_provenance(out)
    assert facts["model"] == DEMO_ENGINE.name and facts["model_sha256"] == file_sha256(DEMO_ENGINE)
    assert facts["engine_source"] and facts["seed"] == "0,1"
    with Image.open(out) as image:
        first = np.asarray(image.convert("RGB"))  # frame 0 sits on seed 0: that seed's own render
    assert np.array_equal(first, render(DEMO_ENGINE, "cylinder", 8, 32, seed=0, backend=facts["backend"]))


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
        (["--fov", "nan"], "--fov must be a finite number, not nan."),
        (["--mode", "spin"], "Unknown animation mode 'spin'; choose one of walk, zoom, pan."),
        (["--output-name", "clip.gif"], "must be a .webp"),
    ],
)
def test_video_command_bad_input_is_one_line(tmp_path, arguments, message):
    from click.testing import CliRunner

    from cips_deploy.cli import cli

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


@pytest.mark.runtime
def test_video_is_registered_by_a_builtin_plugin(registry):
    import inspect

    import click

    import cips_deploy.cli as package
    import cips_deploy.plugins.video as plugin
    from cips_deploy.runtime.plugin_manager import BUILTIN_PLUGINS, register_commands

    assert "cips_deploy.plugins.video" in BUILTIN_PLUGINS
    assert registry.plugins["cips_deploy.plugins.video"].hooks == ["register_commands"]
    assert "video" not in inspect.getsource(package)
    group = click.Group()
    register_commands(group, registry)
    assert group.commands["video"] is plugin.video_command


@pytest.fixture(scope="module")
def styled_registry():
    """The built-in plugins and the numpy backend above, registered as a plugin would register it."""
    from cips_deploy import hookimpl
    from cips_deploy.runtime.plugin_manager import load_registry

    plugin = SimpleNamespace(register_backends=hookimpl(lambda register: register(StyledCoordinates)))
    return load_registry(entry_points=False, extra_plugins=[("styled", plugin)])


@pytest.mark.runtime
def test_make_video_writes_the_frames_and_their_provenance(tmp_path, styled_registry):
    from cips_deploy.runtime.hashing import file_sha256

    model = tmp_path / "model.bin"  # the fake backend reads nothing; provenance hashes the file
    model.write_bytes(b"weights")
    output = tmp_path / "zoom.webp"
    clip = make_video(
        model, output, mode="zoom", seeds=(2,), frames=3, height=8, width=10, fps=5.0, centre=(0.25, 0.0),
        backend="styled-coordinates", registry=styled_registry, lossless=True,
    )
    assert (clip.path, clip.frames, clip.height, clip.width, clip.topology, clip.mode, clip.fps) == (output, 3, 8, 10, "flat", "zoom", 5.0)
    animation = Animation(mode="zoom", seeds=(2,), frames=3, centre=(0.25, 0.0))
    expected = list(render_frames(StyledCoordinates(), animation, 8, 10, registry=styled_registry))
    with Image.open(output) as image:
        decoded = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
    assert all(np.array_equal(a, b) for a, b in zip(expected, decoded, strict=True))
    facts = read_webp_provenance(output)
    assert facts["model"] == "model.bin" and facts["model_sha256"] == file_sha256(model)
    assert (facts["seed"], facts["animation"], facts["frames"], facts["backend"]) == ("2", "zoom", "3", "styled-coordinates")
    assert json.loads(facts["centre"]) == [0.25, 0.0] and "fov" not in facts
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.bin", "zoom.webp"]


@pytest.mark.runtime
@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "spin"}, "Unknown animation mode 'spin'"),
        ({"frames": 1}, "at least 2 frames"),
        ({"fps": 10.0, "duration": 1.0}, "either --fps or --duration"),
        ({"fov": 0.0}, "field of view"),
        ({"seeds": (1,)}, "two seeds"),
        ({"ramps": {"v_min": ("0", "x")}}, "v_min"),
    ],
)
def test_make_video_refuses_bad_requests_before_writing(tmp_path, styled_registry, options, message):
    arguments = {"seeds": (0, 1), "frames": 3, "height": 8, "backend": "styled-coordinates", "registry": styled_registry, **options}
    with pytest.raises(CipsError, match=message):
        make_video(None, tmp_path / "clip.webp", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_render_takes_a_ready_style_and_checks_it(backend):
    style_dim = backend.config.style_dim
    w = backend.map(seed_latent(9, backend.config), 1.0)  # [1, S]
    assert np.array_equal(render_detailed(backend, "flat", 8, 8, style=w).image, render(backend, "flat", 8, 8, seed=9))
    bad_styles = (np.zeros((1, 3), np.float32), np.zeros((2, style_dim), np.float32), np.full((1, style_dim), math.nan, np.float32))
    for bad in bad_styles:
        with pytest.raises(CipsError, match="style"):
            render_detailed(backend, "flat", 8, 8, style=bad)
