"""Streamed gigapixel renders: BigTIFF and Deep Zoom equal to the in-memory render, resume,
corrupt and foreign partial renders, workers, bounded memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cips_deploy
from cips_deploy.runtime import gigapixel
from cips_deploy.errors import CipsError
from cips_deploy.runtime.gigapixel import partial_path, render_to_file
from cips_deploy.plugins.outputs import TILE, halve, pyramid_levels
from cips_deploy.runtime.render import render

tifffile = pytest.importorskip("tifffile")

COMMAND = [sys.executable, "-c", "from cips_deploy.cli import main; main()"]


@pytest.fixture
def small_cells(monkeypatch):
    """Cells of 256 x 512, so that small images have several, edge cells included."""
    monkeypatch.setattr(gigapixel, "CELL_COLUMNS", 2 * TILE)


def read_dzi(path: Path, level: int | None = None) -> np.ndarray:
    """The image of one level of a Deep Zoom pyramid (default: the full-size one), from its tiles."""
    text = path.read_text()
    width = int(text.split('Width="')[1].split('"')[0])
    height = int(text.split('Height="')[1].split('"')[0])
    top = pyramid_levels(height, width)
    level = top if level is None else level
    scale = 1 << (top - level)
    height, width = -(-height // scale), -(-width // scale)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    folder = path.with_name(f"{path.stem}_files") / str(level)
    count = 0
    for tile_path in folder.glob("*.png"):
        column, row = (int(part) for part in tile_path.stem.split("_"))
        with Image.open(tile_path) as tile:
            pixels = np.asarray(tile.convert("RGB"))
        image[row * TILE : row * TILE + pixels.shape[0], column * TILE : column * TILE + pixels.shape[1]] = pixels
        count += 1
    assert count == -(-height // TILE) * -(-width // TILE)
    return image


def read_output(path: Path) -> np.ndarray:
    return tifffile.imread(path) if path.suffix == ".tif" else read_dzi(path)


@pytest.mark.parametrize("suffix", [".tif", ".dzi"])
@pytest.mark.parametrize(
    "topology, params", [("flat", {}), ("rotated", {"angle": 30.0, "scale": 1.3})], ids=["flat", "rotated"]
)
def test_streamed_output_equals_the_in_memory_render(tmp_path, tiny, registry, small_cells, suffix, topology, params):
    height, width = 300, 700  # edge cells on both axes (300 = 256 + 44, 700 = 512 + 188)
    expected = render(tiny, topology, height, width, seed=3, registry=registry, **params)
    output = tmp_path / f"out{suffix}"
    result = render_to_file(tiny, output, topology=topology, height=height, width=width, seed=3, chunk_size=1000, registry=registry, **params)
    assert result.cells == 4 and result.cells_resumed == 0 and result.points_evaluated == height * width
    np.testing.assert_array_equal(read_output(output), expected)
    assert not partial_path(output).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in result.paths)


def test_bigtiff_is_tiled_and_its_tiles_lie_where_the_sink_writes_them(tmp_path, tiny, registry, small_cells):
    output = tmp_path / "out.tif"
    render_to_file(tiny, output, height=260, width=600, seed=1, registry=registry)
    with tifffile.TiffFile(output) as tiff:
        page = tiff.pages[0]
        assert tiff.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (TILE, TILE)
        offsets = np.asarray(page.dataoffsets)
        settings = json.loads(page.description)["cips_deploy"]
    # The sink's arithmetic: tiles back to back at the end of the file, row-major.
    tile_bytes = TILE * TILE * 3
    assert list(offsets) == [output.stat().st_size - len(offsets) * tile_bytes + i * tile_bytes for i in range(len(offsets))]
    assert settings["seed"] == 1 and settings["height"] == 260 and settings["width"] == 600


def test_deep_zoom_levels_halve_down_to_one_pixel(tmp_path, tiny, registry, small_cells):
    output = tmp_path / "pano.dzi"
    render_to_file(tiny, output, height=300, width=700, seed=2, registry=registry)
    top = pyramid_levels(300, 700)
    assert top == 10
    image = read_dzi(output)
    for level in range(top - 1, -1, -1):
        image = halve(image)
        np.testing.assert_array_equal(read_dzi(output, level), image)
    assert image.shape == (1, 1, 3)
    page = (tmp_path / "pano.html").read_text()
    assert '"files": "pano_files"' in page and "http" not in page.replace("http://schemas", "")


@pytest.mark.runtime
def test_halve_rounds_and_repeats_odd_edges():
    pixels = np.array([[[0], [1], [9]], [[2], [4], [200]], [[255], [255], [7]]], dtype=np.uint8).repeat(3, axis=2)
    half = halve(pixels)[..., 0]
    assert half.tolist() == [[2, 105], [255, 7]]  # (0+1+2+4+2)//4, (9+9+200+200+2)//4, (255*4+2)//4, (7*4+2)//4


def test_cells_into_memory_give_the_render(tiny, registry, small_cells):
    from cips_deploy.runtime.gigapixel import render_to_array

    expected = render(tiny, "rotated", 300, 600, seed=2, angle=10.0, registry=registry)
    np.testing.assert_array_equal(render_to_array(tiny, topology="rotated", height=300, width=600, seed=2, angle=10.0, registry=registry), expected)
    with pytest.raises(CipsError, match="over the in-memory limit"):
        render_to_array(tiny, height=30000, width=30000, registry=registry)


def test_foveated_cannot_stream_and_says_so(tmp_path, tiny, registry):
    with pytest.raises(CipsError, match="The foveated topology cannot stream its output.*render it in memory"):
        render_to_file(tiny, tmp_path / "f.tif", topology="foveated", height=64, width=64, registry=registry)
    assert list(tmp_path.iterdir()) == []


def test_third_party_point_layout_streams(tmp_path, tiny, registry, small_cells):
    """A plugin's PointLayout (no assemble) streams through the same API as the built-ins."""
    from cips_deploy.contracts.topology import PointLayout, Topology

    class Checker(Topology):
        name = "checker"
        description = "u and v swapped on every other row."

        def layout(self, request):
            v, u = np.meshgrid(np.linspace(-1, 1, request.height), np.linspace(-1, 1, request.width), indexing="ij")
            points = np.stack([u, v], axis=-1).reshape(-1, 2)
            points[1::2] = points[1::2, ::-1]
            return PointLayout(points.astype(np.float64), request.height, request.width)

    registry.items["topology"]["checker"] = cips_deploy.runtime.plugin_manager.Registered("topology", "checker", Checker(), "test")
    try:
        expected = render(tiny, "checker", 270, 530, registry=registry)
        render_to_file(tiny, tmp_path / "c.tif", topology="checker", height=270, width=530, registry=registry)
    finally:
        del registry.items["topology"]["checker"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "c.tif"), expected)


class StopAfter:
    """A progress callback that interrupts the render once more than ``points`` points are done."""

    def __init__(self, points: int) -> None:
        self.points = points

    def __call__(self, done: int, total: int) -> None:
        if done > self.points:  # during the next cell's first chunk: exactly the cells before are stored
            raise KeyboardInterrupt


def test_interrupted_render_resumes_without_rewriting_finished_tiles(tmp_path, tiny, registry, small_cells):
    options = dict(height=520, width=1024, seed=4, registry=registry)
    reference = tmp_path / "ref" / "out.dzi"
    reference.parent.mkdir()
    render_to_file(tiny, reference, **options)

    output = tmp_path / "out.dzi"
    with pytest.raises(KeyboardInterrupt):  # after two cells of 256 x 512 (journal order: cells 0, 1)
        render_to_file(tiny, output, progress=StopAfter(2 * 256 * 512), **options)
    partial = partial_path(output)
    assert (partial / "journal").read_text().count("\n") == 2 and not output.exists()
    base = partial / "out_files" / str(pyramid_levels(520, 1024))
    before = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in base.glob("*.png")}
    assert len(before) == 4  # two cells of two tiles

    with pytest.raises(CipsError, match="holds an interrupted render of out.dzi; pass --resume"):
        render_to_file(tiny, output, **options)
    result = render_to_file(tiny, output, resume=True, **options)
    assert result.cells_resumed == 2 and result.points_evaluated == 520 * 1024 - 2 * 256 * 512
    after = {name: ((output.parent / "out_files" / base.name / name).stat().st_ino, (output.parent / "out_files" / base.name / name).stat().st_mtime_ns) for name in before}
    assert after == before  # finished tiles were neither rendered nor written again
    for path in sorted(reference.parent.rglob("*")):
        twin = output.parent / path.relative_to(reference.parent)
        assert twin.exists(), twin
        if path.is_file():
            assert path.read_bytes() == twin.read_bytes(), path
    assert not partial.exists()


def interrupted(tmp_path, tiny, registry, **changes):
    """A TIFF render interrupted after one cell; returns its destination."""
    output = tmp_path / "out.tif"
    with pytest.raises(KeyboardInterrupt):
        render_to_file(tiny, output, height=300, width=300, seed=5, progress=StopAfter(256 * 300), registry=registry, **changes)
    return output


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(seed=6), "is a partial render of another seed \\(5 there, 6 now\\), so it is not reused"),
        (dict(truncation=0.5), "of another truncation \\(1.0 there, 0.5 now\\)"),
        (dict(topology="rotated"), "of another topology \\(\"flat\" there, \"rotated\" now\\)"),
        (dict(u_max=0.5), "of another topology parameters"),
        (dict(width=301), "of another width \\(300 there, 301 now\\)"),
        (dict(model="other"), "of another model \\(SHA-256 of its weights\\)"),
    ],
    ids=["seed", "truncation", "topology", "params", "size", "model"],
)
def test_a_foreign_partial_render_is_named_and_not_reused(tmp_path, tiny, registry, changes, message):
    output = interrupted(tmp_path, tiny, registry)
    journal = (partial_path(output) / "journal").read_bytes()
    model = cips_deploy.create("tiny", seed=1) if changes.pop("model", None) else tiny
    options = dict(height=300, width=300, seed=5, registry=registry) | changes
    with pytest.raises(CipsError, match=message):
        render_to_file(model, output, resume=True, **options)
    assert (partial_path(output) / "journal").read_bytes() == journal  # left as it was


@pytest.mark.parametrize("damage", ["pixels", "journal", "manifest", "header", "missing-image"])
def test_a_corrupt_partial_render_is_named_and_not_reused(tmp_path, tiny, registry, damage):
    output = interrupted(tmp_path, tiny, registry)
    partial = partial_path(output)
    image = partial / "image.tif"
    if damage == "pixels":
        with open(image, "r+b") as handle:  # one byte of the finished first tile
            handle.seek(image.stat().st_size - 4 * TILE * TILE * 3 + 1000)  # 2 x 2 tiles
            value = handle.read(1)[0]
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([value ^ 0x40]))
        message = "is corrupt: the finished tile at row 0, column 0 no longer matches its checksum"
    elif damage == "journal":
        (partial / "journal").write_text("0 1234abcd\nthis is not a tile\n1 00000000\n")
        message = "is corrupt: line 2 of its journal is not a finished tile"
    elif damage == "manifest":
        (partial / "manifest.json").write_text("{not json")
        message = "is not a cips-deploy partial render \\(no readable manifest.json\\)"
    elif damage == "header":
        with open(image, "r+b") as handle:
            handle.seek(20)
            handle.write(b"\xff\xff")
        message = "is corrupt \\(its image.tif is not the file this render started\\)"
    else:
        image.unlink()
        message = "has no readable image.tif"
    with pytest.raises(CipsError, match=message):
        render_to_file(tiny, output, height=300, width=300, seed=5, resume=True, registry=registry)
    assert partial.is_dir() and not output.exists()


def test_a_torn_journal_line_only_costs_its_cell(tmp_path, tiny, registry):
    output = interrupted(tmp_path, tiny, registry)
    journal = partial_path(output) / "journal"
    journal.write_bytes(journal.read_bytes() + b"1 12")  # a SIGKILL while appending cell 1's line
    result = render_to_file(tiny, output, height=300, width=300, seed=5, resume=True, registry=registry)
    assert result.cells_resumed == 1
    np.testing.assert_array_equal(tifffile.imread(output), render(tiny, "flat", 300, 300, seed=5, registry=registry))


def test_resume_without_a_partial_render_starts_afresh(tmp_path, tiny, registry):
    result = render_to_file(tiny, tmp_path / "a.tif", height=40, width=50, resume=True, registry=registry)
    assert result.cells_resumed == 0 and (tmp_path / "a.tif").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(workers=0), "number of workers must be a whole number from 1 to 256, not 0"),
        (dict(threads=True), "number of threads must be a whole number"),
        (dict(output_format="webm"), "Unknown output format 'webm'; available: dzi, png, tiff"),
        (dict(output_format="dzi"), "The dzi format writes .dzi files, not out.tif"),
        (dict(destination="out.png"), "The png format is written from memory, not streamed; stream to dzi \\(.dzi\\), tiff \\(.tif, .tiff\\)"),
        (dict(destination="out.jpeg"), "has no known extension"),
        (dict(topology="sphere"), "Unknown topology 'sphere'"),
        (dict(height=0), "height must be a positive whole number"),
        (dict(chunker="memory", chunk_size=3), "The memory chunker takes no chunk size"),
        (dict(seed=-1), "seed must be a whole number"),
        (dict(destination="missing/out.tif"), "the folder .*missing does not exist"),
    ],
)
def test_bad_streaming_input_is_one_sentence_and_leaves_nothing(tmp_path, tiny, registry, kwargs, message):
    kwargs = dict(kwargs)
    destination = tmp_path / kwargs.pop("destination", "out.tif")
    options = dict(height=16, width=16, registry=registry) | kwargs
    with pytest.raises(CipsError, match=message) as caught:
        render_to_file(tiny, destination, **options)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")
    assert list(tmp_path.iterdir()) == []


def test_the_bigtiff_refuses_more_than_the_free_disk(tmp_path, tiny, registry, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(CipsError, match="BigTIFF needs 0.1 GiB of disk, more than the 0.0 GiB free"):
        render_to_file(tiny, tmp_path / "big.tif", height=5000, width=5000, registry=registry)
    assert list(tmp_path.iterdir()) == []


def test_in_memory_limit_counts_the_topologys_working_memory(tiny, registry, monkeypatch):
    import cips_deploy.contracts.limits as limits

    monkeypatch.setattr(limits, "available_memory", lambda: 1 << 30)
    render(tiny, "flat", 8, 8, registry=registry)  # fine
    with pytest.raises(CipsError, match=r"^A 4,096 x 4,096 foveated render needs about 1.8 GiB of memory, more than the 1.0 GiB "
                                        r"this machine has available; render it to a streaming format"):
        render(tiny, "foveated", 4096, 4096, registry=registry)
    with pytest.raises(CipsError, match="over the in-memory limit"):
        render(tiny, "flat", 20000, 20000, registry=registry)


# ----------------------------------------------------------------------- the command line


def cli(*args: str, timeout: float = 240, **popen) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env=environment, **popen
    )


def reference_then_started(tmp_path: Path, args: list[str], *extra: str, **popen) -> tuple[Path, Path, subprocess.Popen]:
    """``args`` rendered to ref.tif, then the same render started into out.tif (to be interrupted)."""
    reference, output = tmp_path / "ref.tif", tmp_path / "out.tif"
    assert cli(*args, "-o", str(reference)).returncode == 0
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return reference, output, subprocess.Popen([*COMMAND, *args, "-o", str(output), *extra], env=environment, **popen)


def test_cli_writes_each_streaming_format_and_refuses_a_huge_png(tmp_path):
    from click.testing import CliRunner

    from cips_deploy.cli import cli as group

    runner = CliRunner()
    for name in ("a.tif", "a.dzi"):
        result = runner.invoke(group, ["render", "--preset", "tiny", "--height", "40", "--width", "70", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "as tiff" in result.output or "as dzi" in result.output
    result = runner.invoke(group, ["render", "--preset", "tiny", "--height", "40", "-o", str(tmp_path / "a.png"), "--format", "tiff"])
    assert result.exit_code == 1 and "The tiff format writes .tif or .tiff files, not a.png." in result.output
    result = runner.invoke(group, ["render", "--preset", "tiny", "--height", "30000", "--width", "30000", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 1 and "render it to a streaming format instead" in result.output
    result = runner.invoke(group, ["render", "--preset", "tiny", "--height", "40", "-o", str(tmp_path / "c.png"), "--resume"])
    assert result.exit_code == 1 and "--resume continues a streamed render (.tif, .dzi); a png file is written from memory" in result.output
    result = runner.invoke(group, ["render", "--preset", "tiny", "--height", "40", "--seeds", "1-2", "-o", str(tmp_path / "c.tif")])
    assert result.exit_code == 1 and "takes one --seed, not a grid of --seeds" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.dzi", "a.html", "a.tif", "a_files"]


@pytest.mark.slow
def test_sigkill_half_way_then_resume_gives_the_identical_file(tmp_path):
    """A real SIGKILL of the command line, then ``--resume``: bitwise the uninterrupted file."""
    args = ["render", "-t", "cylinder", "--height", "1280", "--width", "1024", "--seed", "9"]
    reference, output, process = reference_then_started(tmp_path, args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = partial_path(output) / "journal"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    finished = journal.read_bytes().count(b"\n")
    assert process.returncode == -signal.SIGKILL and 2 <= finished < 5 and not output.exists()
    refused = cli(*args, "-o", str(output))
    assert refused.returncode == 1 and "pass --resume to continue it" in refused.stderr
    resumed = cli(*args, "-o", str(output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished} of them finished before --resume" in resumed.stdout
    assert output.read_bytes() == reference.read_bytes()
    assert not partial_path(output).exists()


@pytest.mark.slow
def test_two_workers_give_the_serial_file(tmp_path):
    args = ["render", "-t", "cylinder", "--height", "768", "--width", "1024", "--seed", "2", "--blend-seed", "7"]
    serial, parallel = tmp_path / "serial.tif", tmp_path / "parallel.tif"
    assert cli(*args, "-o", str(serial)).returncode == 0
    result = cli(*args, "-o", str(parallel), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "in 2 workers" in result.stdout
    assert parallel.read_bytes() == serial.read_bytes()
    png = tmp_path / "serial.png"
    assert cli(*args, "-o", str(png)).returncode == 0
    with Image.open(png) as image:
        np.testing.assert_array_equal(tifffile.imread(parallel), np.asarray(image))
    parallel_png = tmp_path / "parallel.png"  # in memory, cells from two workers: the same file
    result = cli(*args, "-o", str(parallel_png), "--workers", "2")
    assert result.returncode == 0 and "in 2 workers" in result.stdout, result.stderr
    with Image.open(parallel_png) as a, Image.open(png) as b:  # the same pixels (provenance chunks aside)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def spawned_workers(parent: int) -> list[int]:
    """The pids of ``parent``'s worker processes (multiprocessing's spawned children)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_worker_ends_the_render_with_a_sentence_and_resume_finishes_it(tmp_path):
    """SIGKILL of one worker process (as the OOM killer would): no hang, one sentence, the finished cells kept."""
    args = ["render", "-t", "cylinder", "--height", "2560", "--width", "1024", "--seed", "6"]
    reference, output, process = reference_then_started(
        tmp_path, args, "--workers", "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    journal = partial_path(output) / "journal"
    try:
        deadline, killed = time.monotonic() + 240, []
        while time.monotonic() < deadline and process.poll() is None and not killed:
            workers = spawned_workers(process.pid)
            if workers and journal.exists() and journal.read_bytes().count(b"\n") >= 1:
                os.kill(workers[0], signal.SIGKILL)
                killed.append(workers[0])
            time.sleep(0.01)
        stdout, stderr = process.communicate(timeout=240)  # a hang fails here
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert killed, "the render finished before a worker could be killed"
    assert process.returncode == 1, stderr
    assert stderr.count("\n") == 1 and "A worker process ended before finishing its cell" in stderr, stderr
    assert f"finished cells are kept in {partial_path(output)}, and the same command with --resume continues" in stderr
    assert journal.read_bytes().count(b"\n") >= 1 and not output.exists()
    resumed = cli(*args, "-o", str(output), "--workers", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert output.read_bytes() == reference.read_bytes()


RSS_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[4])  # tests/helpers/, for the coordinates backend
import coordinates_backend
from cips_deploy.runtime.gigapixel import render_to_file
from cips_deploy.runtime.plugin_manager import load_registry


def status(field):
    """A /proc/self/status memory field in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status")


registry = load_registry(entry_points=False, extra_plugins=[("rss-test", coordinates_backend)])
height, width = int(sys.argv[2]), int(sys.argv[3])
options = dict(backend="coordinates", memory_budget=16.0, registry=registry)
# A warm-up render of full-width cells loads every code path and allocator pool, whose size
# depends on the machine (libraries mapped, CPU kernels chosen), not on the image.
render_to_file(__file__, sys.argv[1] + ".warm.tif", height=512, width=width, **options)
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak (VmHWM) to the current resident size (Linux >= 4.0)
before = status("VmRSS")
render_to_file(__file__, sys.argv[1], height=height, width=width, **options)
print(before, status("VmHWM"))
'''


@pytest.mark.slow
@pytest.mark.runtime  # the numpy coordinates backend: the output pipeline alone, no torch
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak through Linux's /proc/self/clear_refs")
def test_a_streamed_render_many_times_larger_than_its_peak_memory(tmp_path):
    height, width = 32768, 32768  # 3 GiB of pixels as an in-memory image; a minute or two
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    output = tmp_path / "big.tif"
    try:
        check_big_render(script, output, height, width)
    finally:
        output.unlink(missing_ok=True)  # 3 GB: not left for pytest's kept temporary folders
        output.with_name(output.name + ".warm.tif").unlink(missing_ok=True)


def check_big_render(script: Path, output: Path, height: int, width: int) -> None:
    result = subprocess.run(
        [sys.executable, str(script), str(output), str(height), str(width), str(Path(__file__).parents[1] / "helpers")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr
    before, peak = (int(value) for value in result.stdout.split()[-2:])
    image_bytes = height * width * 3
    grown = peak - before  # what the render itself holds at its peak, beyond the warmed-up process
    assert 8 * grown < image_bytes, (
        f"the render grew the process by {grown / 2**20:.0f} MiB (from {before / 2**20:.0f} MiB) "
        f"for a {image_bytes / 2**20:.0f} MiB image"
    )
    with tifffile.TiffFile(output) as tiff:  # the file holds the whole image; spot-check three pixels
        page = tiff.pages[0]
        assert page.shape == (height, width, 3)
        offsets, columns = page.dataoffsets, -(-width // TILE)
    u = np.linspace(-1, 1, width, dtype=np.float32)
    v = np.linspace(-1, 1, height, dtype=np.float32)
    with open(output, "rb") as handle:
        for row, column in ((0, 0), (height - 1, width - 1), (4000, 20000)):
            handle.seek(offsets[(row // TILE) * columns + column // TILE] + ((row % TILE) * TILE + column % TILE) * 3)
            rgb = np.array([u[column], v[row], u[column] * v[row]], dtype=np.float32)
            expected = np.clip((rgb + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
            assert list(handle.read(3)) == list(expected)


def test_a_third_party_output_format_streams_through_the_same_hook(tmp_path, tiny):
    """A plugin's format (raw RGB bytes, ``.rgb``) registered with register_outputs gets cells,
    resume and verification exactly like the built-ins."""
    from cips_deploy import hookimpl
    from cips_deploy.runtime.plugin_manager import load_registry
    from cips_deploy.contracts.sinks import OutputFormat, Sink

    class RawSink(Sink):
        def __init__(self, partial, destination, height, width):
            self.path, self.destination, self.width = partial / "raw", destination, width
            if not self.path.exists():
                self.path.write_bytes(bytes(height * width * 3))

        def write(self, top, left, pixels):
            with open(self.path, "r+b") as handle:
                for row in range(pixels.shape[0]):
                    handle.seek(((top + row) * self.width + left) * 3)
                    handle.write(pixels[row].tobytes())

        def read(self, top, left, height, width):
            data = np.fromfile(self.path, dtype=np.uint8).reshape(-1, self.width, 3)
            return data[top : top + height, left : left + width]

        def finish(self):
            os.replace(self.path, self.destination)
            return [self.destination]

    class Raw(OutputFormat):
        name, description, extensions = "raw", "Headerless RGB bytes.", (".rgb",)

        def create(self, partial, destination, height, width, description):
            return RawSink(partial, destination, height, width)

        reopen = create

    class Plugin:
        @hookimpl
        def register_outputs(self, register):
            register(Raw())

    registry = load_registry(entry_points=False, extra_plugins=[("raw-format", Plugin())])
    assert registry.outputs["raw"].plugin == "raw-format" and registry.problems == []
    output = tmp_path / "image.rgb"
    result = render_to_file(tiny, output, height=300, width=200, seed=8, registry=registry)
    assert result.format == "raw"
    expected = render(tiny, "flat", 300, 200, seed=8, registry=registry)
    np.testing.assert_array_equal(np.fromfile(output, dtype=np.uint8).reshape(300, 200, 3), expected)


@pytest.mark.runtime
def test_a_malformed_output_format_is_refused_at_registration():
    from cips_deploy import hookimpl
    from cips_deploy.runtime.plugin_manager import PluginWarning, load_registry

    class NoDot:
        name, description, extensions, streaming = "nodot", "Extensions without a dot.", ("tif",), True

    class NoSink:
        name, description, extensions, streaming = "nosink", "Streams but cannot create a sink.", (".xyz",), True

    class Plugin:
        @hookimpl
        def register_outputs(self, register):
            register(NoDot())
            register(NoSink())

    with pytest.warns(PluginWarning) as caught:
        registry = load_registry(entry_points=False, extra_plugins=[("bad-formats", Plugin())])
    assert "nodot" not in registry.outputs and "nosink" not in registry.outputs
    messages = " ".join(str(warning.message) for warning in caught)
    assert "declares extensions ('tif',), not lower-case suffixes" in messages
    assert "streams but has no create() and reopen() methods" in messages


def test_a_third_party_in_memory_format_is_written_by_the_render_command(tmp_path, tiny, monkeypatch):
    from click.testing import CliRunner

    from cips_deploy import hookimpl

    from cips_deploy.runtime import plugin_manager
    from cips_deploy.cli import cli as group
    from cips_deploy.contracts.sinks import OutputFormat

    class Npy(OutputFormat):
        name, description, extensions, streaming = "npy", "A NumPy array file.", (".npy",), False

        def create(self, *args):
            raise AssertionError("never called: the format does not stream")

        reopen = create

        def save(self, image, path):
            with open(path, "wb") as handle:  # np.save would append .npy to the temporary name
                np.save(handle, image)

    class Plugin:
        @hookimpl
        def register_outputs(self, register):
            register(Npy())

    monkeypatch.setattr(plugin_manager, "_default_registry", plugin_manager.load_registry(entry_points=False, extra_plugins=[("npy-format", Plugin())]))
    output = tmp_path / "image.npy"
    result = CliRunner().invoke(group, ["render", "--preset", "tiny", "--height", "24", "--width", "40", "--seed", "3", "-o", str(output)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(output), render(tiny, "flat", 24, 40, seed=3))
    assert [path.name for path in tmp_path.iterdir()] == ["image.npy"]
