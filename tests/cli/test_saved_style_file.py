"""The reader of ``render --w`` files and the coordinate transform: torch-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cips_deploy.errors import CipsError
from cips_deploy.media.saved_style import read_saved_style
from cips_deploy.runtime.coords import CoordinateTransform, coordinate_transform
from cips_deploy.runtime.transformed import TransformedLayout
from cips_deploy.contracts.topology import GridLayout

pytestmark = pytest.mark.runtime

CONFIG = np.array(json.dumps({"arch": "skip", "style_dim": 4}))


def test_a_projection_file_reads_back(tmp_path):
    ws = np.arange(24, dtype=np.float32).reshape(1, 6, 4)
    np.savez(tmp_path / "p.npz", ws=ws, config=CONFIG, source_hash=np.array("ab"), trajectory=np.zeros((3, 1, 6, 4), np.float32))
    saved = read_saved_style(tmp_path / "p.npz")
    np.testing.assert_array_equal(saved.w, ws)
    assert saved.config == {"arch": "skip", "style_dim": 4} and saved.source_hash == "ab"


@pytest.mark.parametrize(
    "arrays, text",
    [
        ({"w": np.zeros((1, 4), np.float32)}, "and config"),
        ({"w": np.zeros((2, 4), np.float32), "config": CONFIG}, "not float32 [1, S]"),
        ({"ws": np.zeros((1, 4), np.float32), "config": CONFIG}, "not float32 [1, L, S]"),
        ({"w": np.zeros((1, 4), np.int32), "config": CONFIG}, "of type int32"),
        ({"w": np.zeros((1, 4), np.float32), "config": np.array(["{}"])}, "not a 0-d string"),
        ({"w": np.zeros((1, 4), np.float32), "config": np.array("{")}, "is not valid JSON"),
        ({"w": np.zeros((1, 4), np.float32), "config": np.array("[1]")}, "not a JSON object"),
    ],
)
def test_a_bad_file_is_one_sentence(tmp_path, arrays, text):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CipsError, match=text.replace("[", r"\[").replace("]", r"\]")):
        read_saved_style(tmp_path / "bad.npz")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(CipsError, match="No such style file"):
        read_saved_style(tmp_path / "missing.npz")
    with pytest.raises(CipsError, match="folder"):
        read_saved_style(tmp_path)


def test_the_transformed_layout_moves_points_and_nothing_else():
    inner = GridLayout(np.linspace(-1, 1, 5, dtype=np.float32), np.linspace(-1, 1, 3, dtype=np.float32))
    transform = CoordinateTransform(translate=(0.5, 0.0), scale=2.0)
    layout = TransformedLayout(inner, transform)
    assert (layout.height, layout.width, layout.n_points, layout.pixel_grid) == (3, 5, 15, True)
    np.testing.assert_array_equal(layout.points(0, 15), transform.apply(inner.points(0, 15)))
    np.testing.assert_array_equal(layout.rectangle_points(1, 3, 2, 4), transform.apply(inner.rectangle_points(1, 3, 2, 4)))
    np.testing.assert_array_equal(layout.points(3, 9), layout.points(0, 15)[3:9])  # a point does not depend on its chunk
    np.testing.assert_array_equal(layout.row_boundaries(), inner.row_boundaries())


def test_identity_and_bad_transforms():
    assert coordinate_transform({"rotate": 360.0}) is None and coordinate_transform(None) is None
    with pytest.raises(CipsError, match="finite"):
        CoordinateTransform(translate=(np.inf, 0))
    with pytest.raises(CipsError):
        coordinate_transform("rotate 30")


@pytest.mark.runtime
def test_the_closing_sentence_names_what_was_drawn():
    from types import SimpleNamespace

    from cips_deploy.cli.common import summary
    from cips_deploy.runtime.render_setup import Controls

    rendering = SimpleNamespace(seed=0, topology="cylinder", points_evaluated=4096, chunks=1)
    saved = Controls.make(w=np.zeros((1, 64), np.float32), w_source="The style file proj.npz")
    assert "render of the style file proj.npz;" in summary(Path("a.png"), [rendering], 32, 128, saved)
    mixed = Controls.make(mix_seed=3, mix_from=2, class_index=1)
    assert "render of seed 0, class 1, mixed with seed 3 from style input 2;" in summary(Path("a.png"), [rendering], 32, 128, mixed)
    assert "render of seed 0;" in summary(Path("a.png"), [rendering], 32, 128)
