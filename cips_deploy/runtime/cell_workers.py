"""Cells rendered by this process alone, or by it and ``workers - 1`` spawned processes.

    for index, pixels, points in render_cells(job, local, cells, pending, workers=2):
        sink.write(...)

With workers, this process renders cells too, with the renderer it has already built (the
model loaded, no start-up), while the other processes start: no core waits for an import.
The others are spawned (``fork`` after torch's OpenMP threads have started can deadlock),
each building its own backend from the job on its first cell and setting its own torch
thread count (where its backend runs on torch: the runtime never imports torch itself).
Cells are handed out two per process at a time, so a process never waits for work while
this one renders, and a slow one takes fewer. Each cell is computed exactly as in
a serial render, so the image is bitwise the serial one, whoever rendered which cell.

A process that dies (the kernel's OOM killer, a SIGKILL) ends the render with
:class:`WorkerLost`, never a hang; if this process dies, the others notice after their
current chunk and exit; if the render stops for any other reason (an error, Ctrl-C), they
are told to stop after their current chunk.
"""

from __future__ import annotations

import dataclasses

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import numpy as np

from cips_deploy.runtime.cells import CellRenderer, Job
from cips_deploy.runtime.chunk_loop import Progress
from cips_deploy.errors import CipsError
from cips_deploy.runtime.plugin_manager import get_registry

Cell = tuple[int, int, int, int]  # top, bottom, left, right
CELLS_AHEAD = 2  # cells handed to each spawned process at a time


class WorkerLost(CipsError):
    """A worker process ended without finishing its cell (killed, or out of memory)."""


def render_cells(
    job: Job,
    local: CellRenderer,
    cells: list[Cell],
    pending: list[int],
    workers: int = 1,
    threads: int | None = None,
    progress: Progress | None = None,
    total: int = 0,
) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(cell index, pixels uint8 [rows, columns, 3], points)`` for every pending cell, in
    the order they finish. ``threads`` is torch's thread count in each process where torch
    is loaded (default: the caller's setting when serial, the CPU count shared out among the
    workers otherwise);
    ``progress(points_done, total)`` is called per chunk of the cells rendered here."""
    if not pending:
        return
    helpers = min(workers, len(pending)) - 1
    if threads is None and helpers:
        threads = max(1, (os.cpu_count() or 1) // workers)
    previous = _set_torch_threads(threads)
    try:
        if helpers:
            yield from _with_helpers(job, local, cells, pending, helpers, threads, progress, total)
        else:
            done = 0
            for index in pending:
                yield index, local.render(cells[index], _within(progress, done, total)), _points(cells[index])
                done += _points(cells[index])
    finally:
        _set_torch_threads(previous)


def _set_torch_threads(threads: int | None) -> int | None:
    """Set torch's thread count (None: leave it) when torch is loaded; return the previous count,
    or None without torch, whose import this module never causes."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return previous


def _with_helpers(
    job: Job, local: CellRenderer, cells: list[Cell], pending: list[int], helpers: int, threads: int,
    progress: Progress | None, total: int,
) -> Iterator[tuple[int, np.ndarray, int]]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()  # set when the render ends early: helpers stop after their chunk
    queue = deque(pending)
    in_flight: dict[Future, int] = {}
    done = 0
    executor = ProcessPoolExecutor(helpers, mp_context=context, initializer=_helper_start, initargs=(job, threads, stop, os.getpid()))
    try:

        def hand_out() -> None:
            while queue and len(in_flight) < CELLS_AHEAD * helpers:
                index = queue.popleft()
                in_flight[executor.submit(_helper_render, cells[index])] = index

        with _interrupts_ignored():  # inherited by the processes started now: Ctrl-C stops them through `stop`
            hand_out()
        while queue or in_flight:
            for future in [future for future in in_flight if future.done()]:
                index = in_flight.pop(future)
                yield index, _result(future), _points(cells[index])
                done += _points(cells[index])
            hand_out()
            if queue:  # this process renders the next cell itself
                index = queue.popleft()
                yield index, local.render(cells[index], _within(progress, done, total)), _points(cells[index])
                done += _points(cells[index])
            elif in_flight:
                wait(in_flight, return_when=FIRST_COMPLETED)
    finally:
        if in_flight:
            stop.set()
        executor.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes start, so that they inherit that (Python keeps an
    ignored SIGINT ignored): a Ctrl-C in a terminal reaches the whole process group, and a
    worker still importing torch would print a traceback; this process stops them instead."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; an embedding program has its own
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _result(future: Future) -> np.ndarray:
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerLost("A worker process ended before finishing its cell (killed, out of memory, or unable to start)") from None


def _points(cell: Cell) -> int:
    top, bottom, left, right = cell
    return (bottom - top) * (right - left)


def _within(progress: Progress | None, base: int, total: int) -> Progress | None:
    """Per-chunk progress inside a cell, counted from the ``base`` points finished before it."""
    if progress is None:
        return None
    return lambda stop, _n: progress(base + stop, total)


# --------------------------------------------------------------------------- in a spawned process

_helper: CellRenderer | None = None
_helper_settings: tuple[Job, int, Any, int] | None = None


def _helper_start(job: Job, threads: int, stop: Any, parent: int) -> None:
    """Keeps the settings only: the first cell builds the renderer, so that its errors (a
    missing plugin, an unreadable checkpoint) reach the parent as that cell's exception."""
    global _helper_settings
    _helper_settings = (job, threads, stop, parent)


class _Stopped(Exception):
    """The parent stopped the render; this cell's pixels are not wanted."""


def _check_parent(done: int, total: int) -> None:
    """Called after every chunk: stop when the parent asks, exit when it is gone (a SIGKILL
    leaves no one to stop this process, and nobody would store its cell)."""
    _, _, stop, parent = _helper_settings
    if os.getppid() != parent:
        os._exit(1)
    if stop.is_set():
        raise _Stopped()


def _helper_render(cell: Cell) -> np.ndarray:
    """The pixels of one cell, in a spawned process."""
    global _helper
    if _helper is None:
        job, threads, _, _ = _helper_settings
        registry = get_registry()  # imports the plugins: torch too, where the backend runs on it
        _set_torch_threads(threads)  # before the backend is built, as its chunk budget may read it
        # The parent already said what it had to say about the styles (announce): once, not per worker.
        _helper = CellRenderer(dataclasses.replace(job, controls=dataclasses.replace(job.controls, announce=False)), registry)
        _set_torch_threads(threads)  # again, for a backend that imported torch only when built
    return _helper.render(cell, _check_parent)
