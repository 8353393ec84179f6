"""One staging module for every atomic write: the Triton repository writer uses it too."""

from __future__ import annotations

import pytest

import cips_deploy
from cips_deploy.runtime.atomic import replace_folder, staging_folder


@pytest.mark.runtime
def test_replace_folder_swaps_a_finished_stage_in_and_leaves_nothing_behind(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    stage = staging_folder(tmp_path, "model")
    (stage / "1").mkdir()
    (stage / "1" / "new.txt").write_text("new")
    replace_folder(stage, destination)
    assert sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*")) == ["1", "1/new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_forced_triton_export_replaces_the_model_folder(tmp_path):
    from cips_deploy.exporters.pipeline import export_checkpoint  # the build extra (torch, onnx)

    checkpoint = tmp_path / "t.safetensors"
    cips_deploy.create("tiny", seed=1).save(checkpoint)
    repo = tmp_path / "repo"
    for overwrite in (False, True):
        export_checkpoint(checkpoint, engine="onnx", triton_repo=repo, triton_model_name="m", validate=False,
                          overwrite=overwrite)
    assert sorted(p.name for p in repo.iterdir()) == ["m", "m_ensemble", "m_mapping"]
    # no stage, no old folder: only the output guard's markers (docs/security.md)
    assert not [p for p in repo.rglob(".*") if p.name != ".cips-deploy-output"]
    assert (repo / "m" / "config.pbtxt").is_file() and (repo / "m" / "1" / "model.onnx").is_file()
