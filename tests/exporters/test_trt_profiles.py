"""TensorRT optimization profiles from --min/opt/max-shapes, and int8 calibration folders:
parsing, assembling and checking against the engine spec (plain Python: no tensorrt, no torch)."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from cips_deploy.contracts.config import GeneratorConfig
from cips_deploy.errors import CipsError
from cips_deploy.exporters.calibration import MAX_FILE_BYTES, calibration_request, parse_seed_list, read_folder
from cips_deploy.exporters.spec import COMPOSE, LINES, SYNTHESIS, compose_spec, lines_spec, synthesis_spec
from cips_deploy.exporters.trt_profiles import RequestedProfiles, parse_shapes, primary_limits

pytestmark = pytest.mark.runtime

CONFIG = GeneratorConfig(style_dim=512)
SPEC = synthesis_spec(CONFIG)


def profiles(min_shapes=(), opt_shapes=(), max_shapes=()):
    return RequestedProfiles.from_flags(min_shapes, opt_shapes, max_shapes)


def test_trtexec_spelling_parses():
    assert parse_shapes("coords:1x1024x2,w:1x512") == {"coords": (1, 1024, 2), "w": (1, 512)}
    assert parse_shapes("'coords':4x65536x2") == {"coords": (4, 65536, 2)}
    assert parse_shapes("lines.v:1x64") == {"lines.v": (1, 64)}


@pytest.mark.parametrize("text, match", [
    ("coords=1x1024x2", "NAME:DIMS items"),
    ("coords:1x1024x", "NAME:DIMS items"),
    ("coords:1,1024,2", "NAME:DIMS items"),
    (":1x2", "NAME:DIMS items"),
    ("coords:1x-5x2", "NAME:DIMS items"),
    ("coords:1x0x2", "sizes go from 1 to 2"),
    ("coords:1x2147483648x2", "sizes go from 1 to 2"),
    ("coords:1x" + "9" * 400 + "x2", "sizes go from 1"),
    ("coords:1x1x2,coords:1x2x2", "twice"),
    ("", "not an empty value"),
    ("c:" + "1x" * 3000 + "1", "characters long"),
])
def test_wrong_spellings_are_one_sentence(text, match):
    with pytest.raises(CipsError, match=match):
        parse_shapes(text, "--max-shapes")


def test_one_max_shape_is_a_whole_profile():
    (shapes,) = profiles(max_shapes=["coords:4x65536x2"]).resolve(SYNTHESIS, SPEC)
    assert shapes["coords"] == ((1, 1, 2), (4, 65536, 2), (4, 65536, 2))  # min 1, opt = max
    assert shapes["w"] == ((1, 512), (4, 512), (4, 512))  # B from coords, S from the spec
    assert primary_limits([shapes]) == (4, 65536)


def test_min_opt_max_and_several_profiles_in_order():
    requested = profiles(
        min_shapes=["coords:1x1024x2", "coords:8x1x2"],
        opt_shapes=["coords:1x4096x2,w:1x512", "coords:16x256x2"],
        max_shapes=["coords:1x65536x2", "coords:32x4096x2"],
    )
    first, second = requested.resolve(SYNTHESIS, SPEC)
    assert first["coords"] == ((1, 1024, 2), (1, 4096, 2), (1, 65536, 2))
    assert second["coords"] == ((8, 1, 2), (16, 256, 2), (32, 4096, 2))
    assert second["w"] == ((8, 512), (16, 512), (32, 512))
    assert primary_limits([first, second]) == (1, 65536)  # the renderer runs on the first


def test_per_point_style_engine_takes_w_of_rank_three():
    spatial = synthesis_spec(CONFIG, spatial_style=True)
    (shapes,) = profiles(max_shapes=["coords:2x1000x2"]).resolve(SYNTHESIS, spatial)
    assert shapes["w"] == ((1, 1, 512), (2, 1000, 512), (2, 1000, 512))  # N shared with coords
    with pytest.raises(CipsError, match="w 2 sizes .* but it has 3"):
        profiles(max_shapes=["coords:2x1000x2,w:2x512"]).resolve(SYNTHESIS, spatial)
    with pytest.raises(CipsError, match="axis points size 1000 in coords but 999 in w"):
        profiles(max_shapes=["coords:2x1000x2,w:2x999x512"]).resolve(SYNTHESIS, spatial)


@pytest.mark.parametrize("flags, match", [
    (dict(max_shapes=["coord:1x10x2"]), "no input of the synthesis engine .did you mean 'coords'"),
    (dict(max_shapes=["coords:1x10"]), "coords 2 sizes .* but it has 3"),
    (dict(max_shapes=["coords:1x10x3"]), "size 3 on axis 2, but that axis is fixed at 2"),
    (dict(max_shapes=["coords:1x10x2,w:1x256"]), "size 256 on axis 1, but that axis is fixed at 512"),
    (dict(max_shapes=["coords:2x10x2,w:3x512"]), "axis batch size 2 in coords but 3 in w"),
    (dict(max_shapes=["w:4x512"]), "does not fix the points axis of synthesis input coords"),
    (dict(min_shapes=["coords:1x100x2"], max_shapes=["coords:1x10x2"]), "min <= opt <= max"),
    (dict(opt_shapes=["coords:8x10x2"], max_shapes=["coords:4x10x2"]), "min <= opt <= max"),
    (dict(min_shapes=["coords:1x1x2"]), "needs --max-shapes"),
    (dict(min_shapes=["coords:1x1x2"], max_shapes=["coords:1x9x2", "coords:1x8x2"]), "or not at all, not 1"),
    (dict(max_shapes=["lines.v:1x64"]), "no shapes for the synthesis engine"),
    (dict(max_shapes=["line.v:1x64"]), "names no engine .did you mean 'lines'"),
])
def test_shapes_that_do_not_fit_the_engine_are_one_sentence(flags, match):
    with pytest.raises(CipsError, match=match):
        profiles(**flags).resolve(SYNTHESIS, SPEC)


def test_grid_engines_take_their_own_inputs_or_a_derived_profile():
    line_spec, block_spec = lines_spec(CONFIG, 96), compose_spec(CONFIG, 96)
    requested = profiles(max_shapes=["coords:1x4096x2,lines.v:1x32,lines.u:1x48"])
    (synthesis,) = requested.resolve(SYNTHESIS, SPEC)
    (lines,) = requested.resolve(LINES, line_spec, fallback=lambda index: {"derived": index}, min_one=True)
    assert lines["v"] == ((1, 1), (1, 32), (1, 32)) and lines["u"] == ((1, 1), (1, 48), (1, 48))
    assert lines["w"] == ((1, 512), (1, 512), (1, 512))
    # The compose engine was given nothing: the fallback (the exporter's GridProfile) decides.
    assert requested.resolve(COMPOSE, block_spec, fallback=lambda index: {"derived": index}) == [{"derived": 0}]
    assert requested.roles() == {SYNTHESIS, LINES}
    with pytest.raises(CipsError, match="no input of the compose engine"):
        profiles(max_shapes=["coords:1x9x2,compose.rows:1x4x96"]).resolve(COMPOSE, block_spec)
    with pytest.raises(CipsError, match="fixed at 96"):
        profiles(max_shapes=["coords:1x9x2,compose.row_lines:1x4x95,compose.column_lines:1x4x96"]).resolve(COMPOSE, block_spec)
    with pytest.raises(CipsError, match="must start at 1"):  # the grid renderer tiles down to one line
        profiles(min_shapes=["coords:1x1x2,lines.v:1x8"], max_shapes=["coords:1x9x2,lines.v:1x64,lines.u:1x64"]).resolve(
            LINES, line_spec, fallback=None, min_one=True)


def test_profiles_from_python_dicts_and_none_without_flags():
    assert profiles() is None
    (shapes,) = profiles(max_shapes=[{"coords": (2, 8, 2)}]).resolve(SYNTHESIS, SPEC)
    assert shapes["w"][2] == (2, 512)


# ------------------------------------------------------------------ calibration


def test_calibration_seed_lists():
    assert parse_seed_list("0-3,7") == (0, 1, 2, 3, 7)
    for text, match in [("3-1", "end comes before"), ("a", "seeds and ranges"), ("0-4294967296", "2\\*\\*32 - 1"),
                        ("0-100000", "at most 256"), ("", "empty")]:
        with pytest.raises(CipsError, match=match):
            parse_seed_list(text)


def test_calibration_options_need_static_int8(tmp_path):
    assert calibration_request(None) is None and calibration_request("int8") is None
    with pytest.raises(CipsError, match="add --quantize int8-static"):
        calibration_request("int8", seeds="1-2")
    with pytest.raises(CipsError, match="leave out --calibration-seeds"):
        calibration_request("int8-static", seeds="1", folder=tmp_path)
    with pytest.raises(CipsError, match="--calibration-points must be a whole number"):
        calibration_request("int8-static", points=2**70)
    request = calibration_request("int8-static", seeds="5,9", points=128)
    assert request.seeds == (5, 9) and request.points == 128 and request.folder is None


def save_batch(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_a_calibration_folder_is_read_as_the_engine_feed(tmp_path):
    coords = np.random.default_rng(0).uniform(-1, 1, (2, 50, 2))  # float64 is converted
    save_batch(tmp_path / "b.npz", coords=coords, w=np.ones((2, 512), np.float32))
    save_batch(tmp_path / "a.npz", coords=coords[:1, :10], w=np.zeros((1, 512), np.float32))
    (tmp_path / "notes.txt").write_text("ignored: not .npz")
    first, second = read_folder(tmp_path, 512)
    assert first["coords"].shape == (1, 10, 2) and second["w"].shape == (2, 512)  # sorted by name
    assert first["coords"].dtype == np.float32
    spatial = read_folder(tmp_path, 512, spatial_style=True)
    assert spatial[1]["w"].shape == (2, 50, 512)  # one style per point, repeated


def _pickled_npz(path):
    np.savez(path, coords=np.zeros((1, 4, 2)), w=np.array([{"a": 1}], dtype=object))
    return path


@pytest.mark.parametrize("make, match", [
    (lambda p: save_batch(p, coords=np.zeros((1, 4, 2)), w=np.zeros((1, 256))), "w \\[1, 256\\], but this engine takes"),
    (lambda p: save_batch(p, coords=np.zeros((1, 4, 3)), w=np.zeros((1, 512))), "coords \\[1, 4, 3\\], not \\[B, N, 2\\]"),
    (lambda p: save_batch(p, coords=np.zeros((2, 4, 2)), w=np.zeros((1, 512))), "but this engine takes"),
    (lambda p: save_batch(p, coords=np.full((1, 4, 2), np.nan), w=np.zeros((1, 512))), "not finite"),
    (lambda p: save_batch(p, coords=np.zeros((1, 4, 2), np.int64), w=np.zeros((1, 512))), "not floating point"),
    (lambda p: save_batch(p, coords=np.zeros((1, 4, 2))), "exactly the arrays coords and w"),
    (lambda p: save_batch(p, coords=np.zeros((1, 4, 2)), w=np.zeros((1, 512)), extra=np.zeros(1)), "exactly the arrays"),
    (_pickled_npz, "Python objects, which are never unpickled"),
    (lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), "not an .npz file"),
])
def test_hostile_or_mismatched_batches_are_one_sentence(tmp_path, make, match):
    make(tmp_path / "batch.npz")
    with pytest.raises(CipsError, match=match):
        read_folder(tmp_path, 512)


def test_a_zip_bomb_fifo_or_empty_folder_is_refused_without_reading(tmp_path):
    with pytest.raises(CipsError, match="holds no .npz batches"):
        calibration_request("int8-static", folder=tmp_path)
    (tmp_path / "x.npz").write_text("")
    with pytest.raises(CipsError, match="not a folder"):
        calibration_request("int8-static", folder=tmp_path / "x.npz")
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    with zipfile.ZipFile(bomb / "b.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("coords.npy", b"\0" * (MAX_FILE_BYTES // 2 + 1))
        archive.writestr("w.npy", b"\0" * (MAX_FILE_BYTES // 2 + 1))
    with pytest.raises(CipsError, match="inflates to more than"):
        read_folder(bomb, 512)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "f.npz")
    with pytest.raises(CipsError, match="FIFO"):
        read_folder(fifo, 512)
