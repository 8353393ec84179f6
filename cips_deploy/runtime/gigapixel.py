"""Gigapixel renders: streamed to disk cell by cell, in bounded memory, resumable, parallel.

    cips_deploy.runtime.gigapixel.render_to_file(model, "pano.tif", topology="cylinder", height=8192, width=32768)

The image is cut into *cells* of ``CELL_ROWS`` rows by up to ``CELL_COLUMNS`` columns on the
output format's tile grid (:data:`cips_deploy.contracts.sinks.TILE`). Each cell is rendered on its own:
the layout gives the cell's points (:meth:`~cips_deploy.contracts.topology.Layout.rectangle_points`),
the chunker cuts them, the backend colours them (the renderer's own chunk loop,
:func:`cips_deploy.runtime.chunk_loop.synthesize`), the layout turns the colours into pixels and the
output format's :class:`~cips_deploy.contracts.sinks.Sink` stores them. Memory follows the cell
(about 25 MB for a 256 x 4096 cell: points, float colours, pixels) and the chunk, never the
image. A layout that is not a ``pixel_grid`` (foveated reconstruction) cannot stream and is
refused with a sentence that says to render it in memory.

Resume. Everything lives in ``<destination>.partial/`` until the render is complete:
``manifest.json`` (the settings that decide the pixels: model hash, seed, size, topology
and parameters, backend and its options, device, package version, format, cell size), a
journal with one line ``<cell> <crc32>`` appended after each cell is stored, and the
format's files. ``resume=True`` continues from the journal: the manifest must match (else
the differing setting is named and nothing is reused), every journalled cell is read back
and checked against its CRC (a corrupt partial output is named, never reused), finished
cells are never rendered or written again, and a torn last journal line (a SIGKILL while
appending) only costs that cell. Cells are deterministic, so the finished output is bitwise
identical to that of an uninterrupted render.

Ownership. The partial folder belongs to one command at a time: it appears complete with
its manifest and a ``lock`` file already ``flock``-ed (made in a hidden stage and renamed
into place), and every later command locks ``lock`` before reading anything, so a second
render of the same output ends in a sentence instead of racing the first. Nothing in the
folder may be a link or a special file (checked before it is reused and before the output
moves out), its manifest and journal are read with size and depth caps, and files are
created there with ``O_EXCL | O_NOFOLLOW``. The output is moved out through the output
guard of :mod:`cips_deploy.runtime.atomic`: without ``overwrite`` nothing existing is
replaced, and a companion (a pyramid's folder, its page) only if cips-deploy wrote it.

Workers. ``workers=N`` renders cells in this process and N - 1 spawned ones, each with its
own backend and thread count (:mod:`cips_deploy.runtime.cell_workers`); this process
stores them as they come. Every cell is computed exactly as in a serial render, so the
output is bitwise identical. A worker that dies ends the render with a sentence, the
finished cells kept for ``resume``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cips_deploy._version import __version__
from cips_deploy.runtime.atomic import (
    OutputConflict, check_plain_tree, current_umask, guard_outputs, lock_folder, output_policy, read_small_file, shown,
    staging_folder, write_failure, write_new_file,
)
from cips_deploy.runtime.backend_use import choose_backend
from cips_deploy.contracts.backend import Backend
from cips_deploy.runtime.hashing import file_sha256
from cips_deploy.runtime.cell_workers import WorkerLost, render_cells
from cips_deploy.runtime.cells import CellRenderer, Job
from cips_deploy.runtime.render_setup import Controls
from cips_deploy.runtime.chunk_loop import Progress
from cips_deploy.errors import CipsError
from cips_deploy.contracts.limits import MAX_JSON_BYTES, check_in_memory, parse_json
from cips_deploy.runtime.plugin_calls import call
from cips_deploy.runtime.plugin_manager import Registered, Registry, get_registry
from cips_deploy.runtime.render_request import check_chunk_settings, check_seed, check_size
from cips_deploy.contracts.sinks import TILE, ArraySink, OutputFormat, Sink, format_for, remove_tree
from cips_deploy.contracts.topology import resolve_parameters

CELL_ROWS = TILE
CELL_COLUMNS = 16 * TILE
MAX_WORKERS = 256
PARTIAL_SUFFIX = ".partial"
MANIFEST_VERSION = 1
LOCK_FILE = "lock"  # in the partial folder: flock-ed by the command that renders into it
JOURNAL_LINE = 10  # bytes of a journal line besides the cell number: " <crc32 hex>\n"
# How a manifest field is named when a resumed render's settings differ from the partial's.
FIELD_NAMES = {
    "format": "output format",
    "version": "cips-deploy version",
    "model": "model (SHA-256 of its weights)",
    "backend": "backend",
    "backend_options": "backend options",
    "device": "device",
    "topology": "topology",
    "params": "topology parameters",
    "height": "height",
    "width": "width",
    "seed": "seed",
    "blend_seed": "blend seed",
    "truncation": "truncation",
    "cell": "cell size",
    "transform": "coordinate transform",
    "mix": "style mixing (mix seed, first style input)",
    "class": "class",
    "w": "saved style (SHA-256 of --w)",
}


@dataclass
class StreamedRendering:
    """A finished streamed render: what was written and what it took."""

    paths: list[Path]
    format: str
    cells: int
    cells_resumed: int
    points_evaluated: int  # in this run (cells finished before a resume excluded)
    workers: int


def partial_path(destination: str | os.PathLike) -> Path:
    """Where the render of ``destination`` keeps its unfinished state."""
    destination = Path(destination)
    return destination.with_name(destination.name + PARTIAL_SUFFIX)


def cell_grid(height: int, width: int, rows: int | None = None, columns: int | None = None) -> list[tuple[int, int, int, int]]:
    """Cells ``(top, bottom, left, right)`` covering the image, row-major (default size
    ``CELL_ROWS`` x ``CELL_COLUMNS``, read at the call so that tests can make cells small)."""
    rows, columns = rows or CELL_ROWS, columns or CELL_COLUMNS
    return [
        (top, min(top + rows, height), left, min(left + columns, width))
        for top in range(0, height, rows)
        for left in range(0, width, columns)
    ]


def render_to_file(
    model: Any,
    destination: str | os.PathLike,
    *,
    output_format: str | None = None,
    topology: str = "flat",
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    truncation: float = 1.0,
    chunker: str | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
    blend_seed: int | None = None,
    controls: Controls | None = None,
    resume: bool = False,
    workers: int = 1,
    threads: int | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    overwrite: bool = True,
    **topology_params: Any,
) -> StreamedRendering:
    """Render straight into a streaming output format (``.tif``, ``.dzi`` or a plugin's).

    Arguments as :func:`cips_deploy.runtime.render.render_detailed`, plus:

    destination:   the output file; its extension picks the format unless ``output_format`` names one.
    resume:        continue the interrupted render in ``<destination>.partial`` (see the module text);
                   without it an existing partial render is refused, never overwritten.
    workers:       processes rendering cells, this one included (``model`` must then be a Generator or a path).
    threads:       torch threads per worker (default: the CPU count divided among the workers;
                   a serial render keeps the caller's setting).
    progress:      ``progress(points_done, points_total)`` over the points this run renders.
    controls:      the coordinate transform, style mixing, class and saved style
                   (:class:`~cips_deploy.runtime.render_setup.Controls`), as the in-memory renderer takes them.
    overwrite:     replace an existing output (``--force``; a companion such as ``NAME_files/`` only
                   if cips-deploy wrote it); without it the render refuses, also when the output
                   appears while it runs.
    """
    registry = registry or get_registry()
    destination = Path(destination)
    job, output, sink_format = _prepare(
        registry, model, destination, output_format, topology, height, width, seed, truncation, chunker, chunk_size,
        memory_budget, backend, device, backend_options or {}, blend_seed, workers, threads, topology_params, overwrite,
        controls,
    )
    # The renderer of this process is built before any file is touched, so that a model,
    # topology or backend problem leaves nothing behind (with workers it renders cells too).
    local = CellRenderer(job, registry, runner=model if isinstance(model, Backend) else None)
    try:
        fingerprint = model_fingerprint(model)
    except BaseException:
        local.close()
        raise
    fields = {
        "format": sink_format.name,
        "version": __version__,
        "model": fingerprint,
        "backend": local.backend_entry.name,
        "backend_options": {name: str(value) for name, value in sorted(job.backend_options.items())},
        "device": device,
        "topology": topology,
        "params": job.params,
        "height": height,
        "width": width,
        "seed": seed,
        "blend_seed": blend_seed,
        "truncation": float(truncation),
        "cell": [CELL_ROWS, CELL_COLUMNS],
        **job.controls.fields(),  # only what is set: a plain render's manifest is as before
    }
    fields = json.loads(json.dumps(fields, sort_keys=True))  # as it reads back from the manifest
    description = json.dumps({"cips_deploy": fields}, sort_keys=True)
    cells = cell_grid(height, width)
    partial = partial_path(destination)
    manifest = json.dumps({"cips_deploy_partial": MANIFEST_VERSION, "fields": fields}, indent=1, sort_keys=True)

    try:
        lock, created = _claim(partial, destination, resume, manifest)
    except BaseException:
        local.close()
        raise
    finishing = False
    try:
        if created:
            try:  # another command may have finished this output between our first look and the claim
                with output_policy(overwrite=overwrite):
                    _guard(output, sink_format, destination, overwrite)
            except BaseException:
                remove_tree(partial)  # ours, empty: nothing to resume
                raise
            sink, journal, done = _start(partial, sink_format, destination, height, width, description)
        else:
            sink, journal, done = _reopen(partial, sink_format, destination, height, width, description, fields, cells)
        try:
            pending = [index for index in range(len(cells)) if index not in done]
            total = sum((cells[i][1] - cells[i][0]) * (cells[i][3] - cells[i][2]) for i in pending)
            finished = 0
            if progress is not None:
                progress(0, total)
            for index, pixels, points in render_cells(job, local, cells, pending, workers, threads, progress, total):
                top, _, left, _ = cells[index]
                sink.write(top, left, pixels)
                journal.append(index, _checksum(pixels))
                finished += points
                if progress is not None:
                    progress(finished, total)
            finishing = True
            with output_policy(overwrite=overwrite):
                # Again: an output may have appeared while the cells rendered (a plugin's sink
                # moves its files itself; the built-in ones also refuse at the move).
                _guard(output, sink_format, destination, overwrite)
                paths = sink.finish()
        except BaseException as error:
            sink.close()
            journal.close()
            problem = _stopped(error, destination, partial, journal.count + len(done), finishing)
            if created and not journal.count:
                remove_tree(partial)  # nothing finished: leave nothing behind
            if problem is not None:
                raise problem from None
            raise
        journal.close()
        remove_tree(partial)
    finally:
        os.close(lock)  # after the partial folder is gone: no other command reuses it half-removed
        local.close()
    return StreamedRendering(paths, sink_format.name, len(cells), len(done), total, workers)


def _stopped(error: BaseException, destination: Path, partial: Path, kept: int, finishing: bool) -> CipsError | None:
    """The sentence for a streamed render that stopped with ``error`` after ``kept`` finished
    cells (None: re-raise the error as it is)."""
    if isinstance(error, WorkerLost):
        if not kept:
            return CipsError(f"{error}; no cell was finished.")
        return CipsError(f"{error}; the {kept:,} finished cells are kept in {partial}, and the same command with --resume continues.")
    if finishing and isinstance(error, OutputConflict):  # the output may not move into place: the render is whole
        return CipsError(f"{str(error).rstrip('.')}; the finished render is kept in {shown(partial)} for --resume.")
    problem = write_failure(error, destination, partial)  # a full disk, a failed write: not a traceback
    if problem is None:
        return None
    if not kept:
        return problem
    return CipsError(f"{str(problem).rstrip('.')}; the {kept:,} finished cells are kept in {shown(partial)}, and the same command with --resume continues.")


def render_to_array(
    model: Any,
    *,
    topology: str = "flat",
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    truncation: float = 1.0,
    chunker: str | None = None,
    chunk_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    device: str = "cpu",
    backend_options: dict[str, Any] | None = None,
    blend_seed: int | None = None,
    controls: Controls | None = None,
    workers: int = 1,
    threads: int | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
    **topology_params: Any,
) -> np.ndarray:
    """An in-memory image, uint8 ``[height, width, 3]``, rendered cell by cell into an
    :class:`~cips_deploy.contracts.sinks.ArraySink`, in ``workers`` processes: bitwise the image of
    :func:`cips_deploy.runtime.render.render` (within the in-memory limits of :func:`cips_deploy.contracts.limits.check_in_memory`)."""
    registry = registry or get_registry()
    check_size(height, width)
    registry.get("topology", topology)  # an unknown name is refused before anything else
    check_in_memory(height, width)  # the assembled image; cells are small
    job = _job(
        registry, model, topology, height, width, seed, truncation, chunker, chunk_size, memory_budget, backend, device,
        backend_options or {}, blend_seed, workers, threads, topology_params, controls,
    )
    local = CellRenderer(job, registry, runner=model if isinstance(model, Backend) else None)
    try:
        cells = cell_grid(height, width)
        sink = ArraySink(height, width)
        total, finished = height * width, 0
        if progress is not None:
            progress(0, total)
        for index, pixels, points in render_cells(job, local, cells, list(range(len(cells))), workers, threads, progress, total):
            sink.write(cells[index][0], cells[index][2], pixels)
            finished += points
            if progress is not None:
                progress(finished, total)
    except WorkerLost as error:
        raise CipsError(f"{error}, so the image was not made.") from None
    finally:
        local.close()
    return sink.image


# --------------------------------------------------------------------------- the partial render


class _Journal:
    """Append-only record of finished cells: one line ``<cell> <crc32 hex>`` each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:  # never through a link planted in its place
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise CipsError(f"Cannot write {shown(path)}: {error.strerror or error}.") from None
        self.count = 0

    def append(self, index: int, checksum: int) -> None:
        line = f"{index} {checksum:08x}\n".encode("ascii")
        os.write(self.fd, line)  # one write of a short line: whole, or torn at the very end
        self.count += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _checksum(pixels: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(pixels).tobytes())


def _claim(partial: Path, destination: Path, resume: bool, manifest: str) -> tuple[int, bool]:
    """Lock the partial folder of ``destination``, creating it when there is none: returns the
    lock's descriptor and whether the folder is new. A new one appears complete (manifest,
    held lock) by a rename, so another command never sees it half made."""
    busy = (
        f"Another command is rendering {shown(destination)} right now ({shown(partial)} is locked); "
        "wait for it to finish or choose another output."
    )
    for _ in range(3):  # a partial can vanish (finished) or appear (started) between two looks
        try:
            found = os.lstat(partial)
        except FileNotFoundError:
            found = None
        except OSError as error:
            raise CipsError(f"Cannot use {shown(partial)}: {error.strerror or error}.") from None
        if found is None:
            claimed = _create_partial(partial, busy, manifest)
            if claimed is not None:
                return claimed, True
            continue
        if not stat.S_ISDIR(found.st_mode):
            raise CipsError(f"{shown(partial)} is not a folder of a partial render; delete it or choose another output.")
        try:
            lock = lock_folder(partial, busy, LOCK_FILE)
        except FileNotFoundError:
            continue
        if not resume:
            os.close(lock)
            raise CipsError(
                f"{partial} holds an interrupted render of {destination.name}; pass --resume to continue it, "
                "or delete it to start again."
            )
        return lock, False
    raise CipsError(f"{shown(partial)} keeps appearing and vanishing (another command is rendering {shown(destination)}); try again.")


def _create_partial(partial: Path, busy: str, manifest: str) -> int | None:
    """A new partial folder, locked, with its manifest; None if another command made one first."""
    stage = staging_folder(partial.parent, partial.name)
    try:
        lock = lock_folder(stage, busy, LOCK_FILE)
    except BaseException:
        remove_tree(stage)
        raise
    try:
        write_new_file(stage / "manifest.json", manifest.encode("utf-8"))
        os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp made it private
        os.rename(stage, partial)  # fails on a partial someone else made meanwhile (it is not empty)
    except OSError as error:
        os.close(lock)
        remove_tree(stage)
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return None
        problem = write_failure(error, partial, partial.parent)
        raise problem from None
    except BaseException:
        os.close(lock)
        remove_tree(stage)
        raise
    return lock


def _start(partial: Path, sink_format: OutputFormat, destination: Path, height: int, width: int, description: str) -> tuple[Sink, _Journal, set[int]]:
    """A new partial render's sink and empty journal (the folder, its lock and manifest exist)."""
    try:
        sink = sink_format.create(partial, destination, height, width, description)
        return sink, _Journal(partial / "journal"), set()
    except BaseException as error:
        problem = write_failure(error, destination, partial)
        remove_tree(partial)
        if problem is not None:
            raise problem from None
        raise


def _reopen(
    partial: Path, sink_format: OutputFormat, destination: Path, height: int, width: int, description: str,
    fields: dict, cells: list[tuple[int, int, int, int]],
) -> tuple[Sink, _Journal, set[int]]:
    """The interrupted render in ``partial``, checked: nothing in it a link, same settings, every finished cell intact."""
    check_plain_tree(partial, "delete the folder to start again.")
    found = _read_manifest(partial)
    if not isinstance(found, dict):
        raise CipsError(f"{partial} is not a cips-deploy partial render (no readable manifest.json); delete it or choose another output.")
    for name in FIELD_NAMES:  # in this order: the topology is named before its parameters
        value = fields.get(name)  # the render controls are there only when set (older manifests lack them)
        if found.get(name) != value:
            raise CipsError(
                f"{partial} is a partial render of another {FIELD_NAMES.get(name, name)} ({_short(found.get(name))} there, "
                f"{_short(value)} now), so it is not reused; render with its settings or delete it."
            )
    done = _read_journal(partial / "journal", len(cells), partial)
    sink = sink_format.reopen(partial, destination, height, width, description)
    try:
        for index, checksum in done.items():
            top, bottom, left, right = cells[index]
            stored = sink.read(top, left, bottom - top, right - left)
            if stored is None or _checksum(stored) != checksum:
                raise CipsError(
                    f"{partial} is corrupt: the finished tile at row {top}, column {left} no longer matches its checksum; "
                    "delete the folder to start again."
                )
        return sink, _Journal(partial / "journal"), set(done)
    except BaseException:
        sink.close()
        raise


def _read_manifest(partial: Path) -> Any:
    """The manifest's fields, or None when it is missing, too large, too deep or not ours."""
    try:
        text = read_small_file(partial / "manifest.json", MAX_JSON_BYTES, "manifest").decode("utf-8")
        manifest = parse_json(text, f"{partial / 'manifest.json'}")
        return manifest["fields"] if manifest.get("cips_deploy_partial") == MANIFEST_VERSION else None
    except (CipsError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def _read_journal(path: Path, n_cells: int, partial: Path) -> dict[int, int]:
    """Finished cells and their checksums; a torn last line (no newline) is cut off."""
    # Every cell once and a torn line, twice over and 4 KiB more: room for a damaged journal to
    # be named line by line, never room to exhaust memory.
    limit = 2 * (n_cells + 1) * (len(str(n_cells)) + JOURNAL_LINE) + 4096
    try:
        size = os.lstat(path).st_size
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise CipsError(f"Cannot read {path}: {error.strerror or error}.") from None
    if size > limit:
        raise CipsError(f"{partial} is corrupt: its journal is longer than its {n_cells:,} cells can fill; delete the folder to start again.")
    data = read_small_file(path, limit, "journal")
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):  # a SIGKILL while appending: that cell is rendered again
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, len(complete))
        finally:
            os.close(fd)
    done: dict[int, int] = {}
    for number, line in enumerate(complete.decode("ascii", errors="replace").splitlines(), 1):
        parts = line.split()
        try:
            index, checksum = int(parts[0]), int(parts[1], 16)
            if len(parts) != 2 or not 0 <= index < n_cells or index in done or len(parts[1]) != 8:
                raise ValueError
        except (ValueError, IndexError):
            raise CipsError(f"{partial} is corrupt: line {number} of its journal is not a finished tile; delete the folder to start again.") from None
        done[index] = checksum
    return done


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- checks


def _prepare(
    registry: Registry, model: Any, destination: Path, output_format: str | None, topology: str, height: int, width: int,
    seed: int, truncation: float, chunker: str | None, chunk_size: int | None, memory_budget: float | None, backend: str | None,
    device: str, backend_options: dict[str, Any], blend_seed: int | None, workers: int, threads: int | None,
    topology_params: dict[str, Any], overwrite: bool, controls: Controls | None = None,
) -> tuple[Job, Registered, OutputFormat]:
    """Every check that needs no rendering, before any file is touched."""
    check_size(height, width)
    formats = {name: entry.item for name, entry in registry.outputs.items()}
    sink_format = format_for(destination, output_format, formats)
    output = registry.outputs[sink_format.name]
    if not getattr(sink_format, "streaming", True):
        streaming = ", ".join(sorted(f"{name} ({', '.join(item.extensions)})" for name, item in formats.items() if item.streaming))
        raise CipsError(f"The {sink_format.name} format is written from memory, not streamed; stream to {streaming}.")
    job = _job(
        registry, model, topology, height, width, seed, truncation, chunker, chunk_size, memory_budget, backend, device,
        backend_options, blend_seed, workers, threads, topology_params, controls,
    )
    _guard(output, sink_format, destination, overwrite, probe=True)
    call(output, "check", sink_format.check, destination, height, width)
    return job, output, sink_format


def _guard(output: Registered, sink_format: OutputFormat, destination: Path, overwrite: bool, probe: bool = False) -> None:
    """The output guard (:func:`cips_deploy.runtime.atomic.guard_outputs`) over every path the
    format's output occupies; the format may say how it recognises its own companions (``owns``)."""
    companions = call(output, "outputs", sink_format.outputs, destination)
    guard_outputs(
        destination, companions, overwrite=overwrite, owner=getattr(sink_format, "owns", None),
        extra_names=[partial_path(destination)], probe=probe,
    )


def _job(
    registry: Registry, model: Any, topology: str, height: int, width: int, seed: int, truncation: float,
    chunker: str | None, chunk_size: int | None, memory_budget: float | None, backend: str | None, device: str,
    backend_options: dict[str, Any], blend_seed: int | None, workers: int, threads: int | None,
    topology_params: dict[str, Any], controls: Controls | None = None,
) -> Job:
    """The checked settings of a render in cells."""
    check_size(height, width)
    check_seed(seed, "seed")
    if blend_seed is not None:
        check_seed(blend_seed, "blend seed")
    if not isinstance(truncation, (int, float)) or isinstance(truncation, bool) or not math.isfinite(truncation):
        raise CipsError(f"The truncation must be a finite number, not {truncation!r}.")
    for name, value in (("workers", workers), ("threads", threads)):
        if value is None and name == "threads":
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= MAX_WORKERS:
            raise CipsError(f"The number of {name} must be a whole number from 1 to {MAX_WORKERS}, not {value!r}.")
    if workers > 1 and isinstance(model, Backend):
        raise CipsError("Workers build their own backends, so give a model or a checkpoint path, not a constructed backend.")
    topology_entry = registry.get("topology", topology)
    chunker_name = chunker or ("fixed" if chunk_size is not None else "memory")
    check_chunk_settings(registry.get("chunker", chunker_name), chunk_size, memory_budget)
    params = resolve_parameters(topology_entry.item, topology_params, topology_entry.name)
    if not isinstance(model, Backend):
        backend = registry.get("backend", choose_backend(registry, model, backend)).name  # workers build this one
    return Job(
        model if not isinstance(model, Backend) else None, topology, params, int(height), int(width), int(seed),
        float(truncation), blend_seed, chunker_name, chunk_size, memory_budget, backend, device, dict(backend_options),
        controls if controls is not None else Controls(),
    )


def model_fingerprint(model: Any) -> str:
    """SHA-256 identifying the weights: of a checkpoint file's bytes, or of a Generator's
    configuration and tensors; a constructed backend is identified by its generator."""
    if isinstance(model, Backend):
        model = getattr(model, "generator", None)
        if not _is_generator(model):
            raise CipsError("A streamed render identifies its model for --resume, which this constructed backend does not expose; give the model or checkpoint.")
    if _is_generator(model):
        torch = sys.modules["torch"]  # loaded: a generator is a torch module
        digest = hashlib.sha256(repr(model.config).encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return "generator:" + digest.hexdigest()
    path = Path(model)
    try:
        return "file:" + file_sha256(path)
    except OSError as error:
        raise CipsError(f"Cannot read the checkpoint {path}: {error.strerror or error}.") from None


def _is_generator(model: Any) -> bool:
    """Whether ``model`` is a torch Generator (cips_deploy.families), without importing the
    families: none can exist unless their module is loaded."""
    families = sys.modules.get("cips_deploy.families.generator")
    return families is not None and isinstance(model, families.Generator)
