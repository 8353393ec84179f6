"""Attack family: outputs (issue 26). One output guard (cips_deploy/runtime/atomic.py) for every
writer: nothing that exists is touched without --force, and with it a multi-file output's
companions only if cips-deploy wrote them; two writers of one new output end in one success
and one sentence; a streamed render owns its partial folder (a lock, no link followed, small
files read with caps); a full disk and a name too long are one sentence; the cylinder demo
renders as a cylinder by default."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cips_deploy.errors import CipsError
from cips_deploy.models import DEMO_ENGINE
from cips_deploy.runtime import gigapixel
from cips_deploy.runtime.atomic import (
    MARKER, SIGNATURE, lock_folder, ownership_problem, publish, read_small_file, output_policy,
)
from cips_deploy.runtime.gigapixel import partial_path, render_to_file

from ..helpers.attack_tools import CLI, files_under, invoke, refused

tifffile = pytest.importorskip("tifffile")

TINY = ["--preset", "tiny", "--height", "16", "-q"]
DEMO = ["-t", "flat", "--height", "300", "--width", "300", "-q"]  # the bundled engine: two cells




def succeeds(args: list[str], cwd: Path):
    result = invoke(args, cwd)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


class StopAfter:
    """A progress callback that interrupts the render once more than ``points`` points are done."""

    def __init__(self, points: int) -> None:
        self.points = points

    def __call__(self, done: int, total: int) -> None:
        if done > self.points:
            raise KeyboardInterrupt


def interrupted(folder: Path, name: str) -> Path:
    """``folder/name`` (.tif or .dzi), 300 x 300 from the bundled engine as ``render DEMO`` makes
    it, interrupted after its first cell; returns the destination (its partial folder is kept)."""
    destination = folder / name
    with pytest.raises(KeyboardInterrupt):
        render_to_file(DEMO_ENGINE, destination, topology="flat", height=300, width=300, progress=StopAfter(256 * 300))
    assert (partial_path(destination) / "journal").read_text().count("\n") == 1
    return destination


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under ``folder`` with its bytes (files) or link target: to prove nothing changed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        found[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "folder"
    return found


# --------------------------------------------------------------------------- the guard: --force and ownership


def test_a_pyramid_never_deletes_the_users_files_or_page(tmp_path):
    (tmp_path / "photos_files").mkdir()
    (tmp_path / "photos_files" / "holiday.jpg").write_bytes(b"my photo")
    (tmp_path / "photos.html").write_text("my page")
    before = snapshot(tmp_path)
    refused(["render", *TINY, "-o", "photos.dzi"], "photos_files already exists (it belongs to the output photos.dzi); pass --force", cwd=tmp_path)
    refused(["render", *TINY, "-o", "photos.dzi", "--force"], "photos_files was not written by cips-deploy (it holds no .cips-deploy-output file), so --force does not replace it", cwd=tmp_path)
    assert snapshot(tmp_path) == before
    # Variant: only the page is there, the user's own: --force still leaves it alone.
    (tmp_path / "photos_files" / "holiday.jpg").unlink()
    (tmp_path / "photos_files").rmdir()
    refused(["render", *TINY, "-o", "photos.dzi", "--force"], "photos.html was not written by cips-deploy (it has no cips-deploy signature)", cwd=tmp_path)
    assert (tmp_path / "photos.html").read_text() == "my page"


def test_force_replaces_a_pyramid_cips_deploy_wrote_but_not_one_the_user_added_to(tmp_path):
    succeeds(["render", *TINY, "--seed", "1", "-o", "pano.dzi"], tmp_path)
    assert (tmp_path / "pano_files" / MARKER).is_file() and SIGNATURE in (tmp_path / "pano.html").read_bytes()
    refused(["render", *TINY, "--seed", "2", "-o", "pano.dzi"], "pano.dzi already exists; pass --force", cwd=tmp_path)
    first = snapshot(tmp_path)
    succeeds(["render", *TINY, "--seed", "2", "-o", "pano.dzi", "--force"], tmp_path)
    second = snapshot(tmp_path)
    assert second.keys() == first.keys() and second != first  # the same files, new pixels
    assert not [name for name in files_under(tmp_path) if "partial" in name or name.endswith(".tmp")]
    # Variant: the user keeps a note in the pyramid's folder: --force refuses, naming it.
    (tmp_path / "pano_files" / "notes.txt").write_text("mine")
    refused(["render", *TINY, "-o", "pano.dzi", "--force"], "pano_files was not written by cips-deploy (it holds notes.txt)", cwd=tmp_path)
    assert snapshot(tmp_path) == {**second, "pano_files/notes.txt": b"mine"}


def test_ownership_needs_the_marker_the_names_and_no_links(tmp_path):
    import re

    folder = tmp_path / "out_files"
    (folder / "0").mkdir(parents=True)
    (folder / "0" / "0_0.png").write_bytes(b"tile")
    pattern = re.compile(r"\d+(/\d+_\d+\.png)?")
    assert "holds no" in ownership_problem(folder, pattern)
    (folder / MARKER).write_text("someone else's words\n")
    assert "is not cips-deploy's" in ownership_problem(folder, pattern)
    from cips_deploy.runtime.atomic import MARKER_TEXT

    (folder / MARKER).write_text(MARKER_TEXT)
    assert ownership_problem(folder, pattern) is None
    (folder / "0" / "1_0.png").symlink_to(tmp_path / "elsewhere.png")
    assert "link or a special file" in ownership_problem(folder, pattern)
    page = tmp_path / "out.html"
    page.symlink_to(tmp_path / "real.html")
    (tmp_path / "real.html").write_bytes(SIGNATURE)
    assert ownership_problem(page) == "it is a symbolic link"  # a signed page behind a link is still not replaced


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_the_final_move_never_replaces_anything_without_force(tmp_path, kind):
    from cips_deploy.runtime.atomic import Clobbered

    source, target = tmp_path / "new", tmp_path / "out"
    if kind == "file":
        source.write_text("new")
        target.write_text("theirs")
    else:
        source.mkdir()
        (source / "tile.png").write_text("new")
        target.mkdir()  # even an empty folder: it may be someone's
    with output_policy(overwrite=False), pytest.raises(Clobbered, match="another program created it while this command ran"):
        publish(source, target, named=True)
    assert source.exists() and (target.read_text() == "theirs" if kind == "file" else list(target.iterdir()) == [])
    with output_policy(overwrite=True):
        publish(source, target, named=True)
    assert not source.exists() and (target.read_text() if kind == "file" else (target / "tile.png").read_text()) == "new"
    # Variant: a new name is simply taken, without --force too.
    other = tmp_path / "other"
    (tmp_path / "more").write_text("x")
    with output_policy(overwrite=False):
        publish(tmp_path / "more", other, named=True)
    assert other.read_text() == "x" and not (tmp_path / "more").exists()


@pytest.mark.parametrize("suffix", [".webp", ".mp4"])
def test_video_never_replaces_a_file_without_force(tmp_path, suffix):
    name = f"vid{suffix}"
    (tmp_path / name).write_bytes(b"my holiday video")
    video = ["video", "--preset", "tiny", "--seeds", "0-1", "--frames", "2", "--height", "16", "-q", "-o", name]
    refused(video, f"{name} already exists; pass --force to replace it.", cwd=tmp_path)
    assert (tmp_path / name).read_bytes() == b"my holiday video"
    if suffix == ".mp4":
        pytest.importorskip("imageio_ffmpeg")
    succeeds([*video, "--force"], tmp_path)
    assert (tmp_path / name).read_bytes() != b"my holiday video" and files_under(tmp_path) == {name}


# --------------------------------------------------------------------------- the partial folder


@pytest.mark.parametrize("suffix", [".tif", ".dzi"])
@pytest.mark.parametrize(
    "plant, message",
    [
        ("manifest-fifo", "holds a special file (a FIFO, a device or a socket), manifest.json, which cips-deploy never makes"),
        ("journal-fifo", "holds a special file (a FIFO, a device or a socket), journal, which cips-deploy never makes"),
        ("journal-zero", "holds a symbolic link, journal, which cips-deploy never makes"),
        ("deep-manifest", "is not a cips-deploy partial render (no readable manifest.json)"),
    ],
)
def test_a_hostile_journal_or_manifest_is_one_sentence_not_a_hang(tmp_path, suffix, plant, message):
    destination = interrupted(tmp_path, f"out{suffix}")
    partial = partial_path(destination)
    target = partial / ("manifest.json" if "manifest" in plant else "journal")
    target.unlink()
    if plant.endswith("fifo"):
        os.mkfifo(target)
    elif plant == "journal-zero":
        target.symlink_to("/dev/zero")
    else:
        target.write_text("[" * 100_000 + "]" * 100_000)
    # A subprocess: a FIFO read would block this test forever.
    result = subprocess.run([CLI, "render", *DEMO, "-o", destination.name, "--resume"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines() + result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in result.stderr and partial.is_dir() and not destination.exists()


def test_the_bounded_reader_refuses_fifos_devices_links_and_size(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "ok").write_bytes(b"x" * 100)
    for name, message in [("fifo", "is a FIFO"), ("zero", "is a symbolic link"), ("big", "101 bytes, more than the 100")]:
        with pytest.raises(CipsError, match=message):
            read_small_file(tmp_path / name, 100, "journal")
    with pytest.raises(CipsError, match="is a device"):
        read_small_file(Path("/dev/zero"), 100, "journal")
    assert read_small_file(tmp_path / "ok", 100, "journal") == b"x" * 100


@pytest.mark.parametrize("plant", ["level-folder", "png-tmp", "lower-level"])
def test_links_planted_in_a_partial_pyramid_are_refused_and_never_followed(tmp_path, plant):
    destination = interrupted(tmp_path, "out.dzi")
    partial = partial_path(destination)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (victim / "0_0.png.tmp").write_text("also mine")
    base = partial / "out_files" / "9"
    if plant == "level-folder":  # the base level: resume would read and write tiles there
        for tile in base.iterdir():
            (victim / tile.name).write_bytes(tile.read_bytes())
            tile.unlink()
        base.rmdir()
        base.symlink_to(victim, target_is_directory=True)
        planted = base
    elif plant == "png-tmp":  # the temporary name of a tile the finish writes: it would write through
        (partial / "out_files" / "8").mkdir()
        planted = partial / "out_files" / "8" / "0_0.png.tmp"
        planted.symlink_to(victim / "keep.txt")
    else:  # a level the finish builds: its tiles would land in the victim's folder
        planted = partial / "out_files" / "8"
        planted.symlink_to(victim, target_is_directory=True)
    before = snapshot(victim)
    result = invoke(["render", *DEMO, "-o", "out.dzi", "--resume"], tmp_path)
    assert result.exit_code == 1 and "which cips-deploy never makes; delete the folder to start again" in result.output, result.output
    assert snapshot(victim) == before and not destination.exists()
    # Variant: once the link is gone, the same command resumes and writes only the output.
    planted.unlink()
    if plant == "level-folder":
        base.mkdir()
        for name in ("0_0.png", "1_0.png"):  # the finished cell's tiles, back in place
            (base / name).write_bytes((victim / name).read_bytes())
            (victim / name).unlink()
    succeeds(["render", *DEMO, "-o", "out.dzi", "--resume"], tmp_path)
    assert snapshot(victim) == {key: value for key, value in before.items() if not key.endswith("_0.png")}
    assert not [path for path in (tmp_path / "out_files").rglob("*") if path.is_symlink()]


def test_a_tile_never_writes_through_a_planted_temporary_name(tmp_path):
    from cips_deploy.plugins.outputs import save_png

    (tmp_path / "victim.txt").write_text("mine")
    (tmp_path / "0_0.png.tmp").symlink_to(tmp_path / "victim.txt")
    save_png(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "0_0.png")
    assert (tmp_path / "victim.txt").read_text() == "mine"
    assert not (tmp_path / "0_0.png").is_symlink() and Image.open(tmp_path / "0_0.png").size == (4, 4)


def test_a_partial_being_rendered_is_refused_while_locked_then_resumes(tmp_path):
    destination = interrupted(tmp_path, "out.tif")
    lock = lock_folder(partial_path(destination), "busy")  # another command holds it
    try:
        for extra in (["--resume"], []):  # also without --resume: the lock is named first
            result = invoke(["render", *DEMO, "-o", "out.tif", *extra], tmp_path)
            assert result.exit_code == 1 and "Another command is rendering out.tif right now (out.tif.partial is locked)" in result.output, result.output
    finally:
        os.close(lock)
    succeeds(["render", *DEMO, "-o", "out.tif", "--resume"], tmp_path)
    assert not partial_path(destination).exists()


def _started_together(tmp_path: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    processes = [
        subprocess.Popen([CLI, *command], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        for command in commands
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def _one_success_one_sentence(results: list[subprocess.CompletedProcess]) -> None:
    assert sorted(result.returncode for result in results) == [0, 1], results
    failed = next(result for result in results if result.returncode)
    lines = (failed.stdout + failed.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in failed.stderr, lines


def test_two_resumes_of_one_partial_end_in_one_success_and_one_sentence(tmp_path):
    destination = interrupted(tmp_path, "out.tif")
    resume = ["render", *DEMO, "-o", "out.tif", "--resume"]
    _one_success_one_sentence(_started_together(tmp_path, resume, resume))
    assert destination.is_file() and not partial_path(destination).exists()


def test_two_renders_of_one_new_png_end_in_one_success_and_one_sentence(tmp_path):
    command = ["render", "-t", "cylinder", "--height", "256", "-q", "-o", "same.png"]
    _one_success_one_sentence(_started_together(tmp_path, command, command))
    assert files_under(tmp_path) == {"same.png"}


@pytest.mark.parametrize("name", ["same.png", "same.tif"])
def test_an_output_that_appears_during_the_render_is_kept(tmp_path, monkeypatch, name):
    """The deterministic form of the race: another program writes the output while this
    render runs. Without --force this one refuses at its final rename; the other file stays."""
    from cips_deploy.media import provenance

    if name.endswith(".png"):
        real = provenance.png_info

        def meanwhile(*args, **kwargs):  # while this command writes its temporary file
            (tmp_path / name).write_bytes(b"the other command's image")
            return real(*args, **kwargs)

        monkeypatch.setattr(provenance, "png_info", meanwhile)
        args = ["render", *TINY, "-o", name]
    else:
        real_cells = gigapixel.render_cells

        def meanwhile(*args, **kwargs):
            yield from real_cells(*args, **kwargs)
            (tmp_path / name).write_bytes(b"the other command's image")

        monkeypatch.setattr(gigapixel, "render_cells", meanwhile)
        args = ["render", *DEMO, "-o", name]
    result = invoke(args, tmp_path)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert (tmp_path / name).read_bytes() == b"the other command's image"
    if name.endswith(".png"):  # refused by the final rename itself (a no-clobber link)
        assert "Cannot write same.png: another program created it while this command ran; pass --force to replace it." in result.output
        assert files_under(tmp_path) == {name}
        return
    # refused by the guard's second look, before the move; the finished cells stay
    assert "same.tif already exists; pass --force to replace it; the finished render is kept in same.tif.partial for --resume." in result.output
    monkeypatch.setattr(gigapixel, "render_cells", real_cells)
    done = succeeds([*args, "--resume", "--force"], tmp_path)  # nothing rendered again: every cell is kept
    assert "2 of them finished before --resume; evaluated 0 points" in done.output
    assert tifffile.imread(tmp_path / name).shape == (300, 300, 3) and files_under(tmp_path) == {name}


# --------------------------------------------------------------------------- a full disk, long names, folders


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("suffix", [".tif", ".dzi"])
def test_a_full_disk_during_a_streamed_render_is_one_sentence(tmp_path, monkeypatch, suffix):
    if suffix == ".tif":
        monkeypatch.setattr(os, "pwrite", _no_space)
    else:
        monkeypatch.setattr(Image.Image, "save", _no_space)
    refused(["render", *DEMO, "-o", f"out{suffix}"], f"Cannot write out{suffix}: the disk is full.", cwd=tmp_path)


def test_a_full_disk_after_some_cells_keeps_them_for_resume(tmp_path, monkeypatch):
    real, calls = os.pwrite, []

    def second_fails(*args):
        calls.append(1)
        return real(*args) if len(calls) == 1 else _no_space()

    monkeypatch.setattr(os, "pwrite", second_fails)
    line = refused(["render", *DEMO, "-o", "out.tif"], "Cannot write out.tif: the disk is full; the 1 finished cells are kept in out.tif.partial",
                   cwd=tmp_path, expect_written={"out.tif.partial", *(f"out.tif.partial/{name}" for name in ("lock", "manifest.json", "journal", "image.tif"))})
    assert line.endswith("the same command with --resume continues.")
    monkeypatch.setattr(os, "pwrite", real)
    assert "1 of them finished before --resume" in succeeds(["render", *DEMO, "-o", "out.tif", "--resume"], tmp_path).output


@pytest.mark.parametrize("how", ["SafetensorError naming ENOSPC", "RuntimeError on a full file system"])
def test_a_full_disk_during_import_official_is_one_sentence(official_dir, tmp_path, monkeypatch, how):
    from cips_deploy.families import weights

    if how.startswith("Safetensor"):
        from safetensors import SafetensorError

        def fails(*args, **kwargs):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    else:
        def fails(*args, **kwargs):
            raise RuntimeError("unexpected end of write")

        real = os.statvfs

        class Full:
            def __init__(self, path):
                self.f_frsize, self.f_bavail = real(path).f_frsize, 0

        monkeypatch.setattr(os, "statvfs", Full)
    monkeypatch.setattr(weights, "save_file", fails)
    refused(["import-official", str(official_dir / "cipsskip_s8.pt"), "-o", "out.safetensors"],
            "Cannot write out.safetensors: the disk is full.", cwd=tmp_path)


def _long_commands(name: str, official: Path) -> dict[str, list[str]]:
    return {
        "render": ["render", *TINY, "-o", f"{name}.png"],
        "render-dzi": ["render", *TINY, "-o", f"{name}.dzi"],
        "video": ["video", "--preset", "tiny", "--frames", "2", "--height", "16", "-q", "-o", f"{name}.webp"],
        "import-official": ["import-official", str(official / "cipsskip_s8.pt"), "-o", f"{name}.safetensors"],
    }


@pytest.mark.parametrize("command", ["render", "render-dzi", "video", "import-official"])
@pytest.mark.parametrize("length", ["name", "path"])
def test_a_name_too_long_for_the_file_system_is_one_sentence(official_dir, tmp_path, command, length):
    if length == "name":
        name, message = "n" * 256, "bytes long, more than the 255 bytes a file name may have."
    else:
        name, message = "/".join(["d" * 200] * 25), "its path is 5,0"
    refused(_long_commands(name, official_dir)[command], message, cwd=tmp_path)


def test_long_names_that_fit_are_written_and_their_partial_folder_is_checked_too(tmp_path):
    name = "n" * 245  # fits, but .<name>.<pid>.<random>.partial would not: temporary names are shortened
    succeeds(["render", *TINY, "-o", f"{name}.png"], tmp_path)
    assert files_under(tmp_path) == {f"{name}.png"}
    # A .tif of 249 characters fits; its partial folder out.tif.partial (257) would not.
    refused(["render", *TINY, "-o", f"{'t' * 245}.tif"], ".tif.partial: the name", cwd=tmp_path)


@pytest.mark.parametrize("command", ["render", "render-dzi", "video", "import-official"])
@pytest.mark.parametrize("where", ["afile/x", "afile/sub/x"])
def test_a_file_in_the_folders_place_is_named(official_dir, tmp_path, command, where):
    (tmp_path / "afile").write_text("not a folder")
    refused(_long_commands(where, official_dir)[command], "afile is not a folder.", cwd=tmp_path)


def test_a_missing_folder_is_still_called_missing(tmp_path):
    refused(["render", *TINY, "-o", "missing/deeper/x.png"], "the folder missing/deeper does not exist.", cwd=tmp_path)


def test_a_deep_zoom_pyramid_larger_than_the_free_disk_is_refused_before_rendering(tmp_path, monkeypatch):
    import shutil

    from cips_deploy.plugins.outputs import DziFormat

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=100 * 2**20))
    refused(["render", *TINY, "--height", "8192", "--width", "8192", "-o", "big.dzi"],
            "A 8,192 x 8,192 Deep Zoom pyramid may need 0.3 GiB of disk (its tiles uncompressed), more than the 0.1 GiB free", cwd=tmp_path)
    DziFormat().check(tmp_path / "small.dzi", 4096, 4096)  # 64 MiB at most: fits in 100 MiB


# --------------------------------------------------------------------------- the default topology


def test_the_cylinder_demo_renders_as_a_cylinder_by_default_and_a_plane_model_flat(tmp_path):
    import cips_deploy

    succeeds(["render", "--height", "16", "-q", "-o", "demo.png"], tmp_path)
    with Image.open(tmp_path / "demo.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (16, 64, 3)
    np.testing.assert_array_equal(pixels, cips_deploy.render(DEMO_ENGINE, "cylinder", 16, 64))
    succeeds(["render", *TINY, "-o", "plane.png"], tmp_path)  # a plane-space preset: flat, square
    with Image.open(tmp_path / "plane.png") as image:
        assert image.size == (16, 16)
    help_text = invoke(["render", "--help"], tmp_path).output
    assert "default: cylinder for a cylinder-space model" in " ".join(help_text.split())


def test_the_default_topology_also_streams_the_cylinder(tmp_path):
    succeeds(["render", "--height", "16", "-q", "-o", "demo.tif"], tmp_path)
    settings = json.loads(tifffile.TiffFile(tmp_path / "demo.tif").pages[0].description)["cips_deploy"]
    assert settings["topology"] == "cylinder" and settings["width"] == 64
