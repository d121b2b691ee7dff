"""A window computed as row bands on several threads, helped by the compute while it waits.

A prefetch thread reads on one core while the compute runs on the others. But while the
compute is blocked waiting for a read (a step of one tile, or a pass whose reads are slower
than its compute), its core is idle and can take a share of the read. A reader runs its window
with `by_row_bands`: as bands of a few hundred rows that the threads claim one at a time, so a
consumer that starts waiting part-way through (`get_lending`) takes the bands left instead of
idling until the read ends. `read_workers()` says how many threads a read may start with.
Independent pieces of work that release the GIL (the validation's masks) run on all cores
with `map_on_cores`.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

_lock = threading.Lock()
_waiting = 0  # consumer threads blocked on a read now
_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_open: list[_Bands] = []  # windows being read whose bands a waiting consumer may take
BAND_ROWS = 256  # rows of a claimable band: a fraction of a window, many times a call's cost
HELP_POLL_S = 0.001  # how often a waiting consumer looks for bands to take


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity where the OS has one (Linux), else
    `os.cpu_count()` (macOS, Windows); at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


T = TypeVar("T")
R = TypeVar("R")


def map_on_cores(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """[fn(item) for item in items], run on up to `usable_cores()` threads (for work that
    releases the GIL: numpy, scipy.ndimage, zarr's decode), results in the items' order."""
    with ThreadPoolExecutor(max(1, min(len(items), usable_cores()))) as pool:
        return list(pool.map(fn, items))


@contextmanager
def compute_waiting() -> Iterator[None]:
    """Mark the calling thread as blocked on a read for the block's duration (`get_lending`
    spends it taking the read's bands)."""
    global _waiting
    with _lock:
        _waiting += 1
    try:
        yield
    finally:
        with _lock:
            _waiting -= 1


def read_workers() -> int:
    """Threads a window read may start with now: the cores no waiting consumer holds while
    one waits (it takes bands itself), else one (the compute runs on the other cores)."""
    return max(1, usable_cores() - _waiting) if _waiting > 0 else 1


def get_lending(results: queue.Queue):
    """`results.get()` for a consumer blocked on a read: until a result comes, its thread
    takes bands of the windows being read (it would only idle)."""
    with compute_waiting():
        while True:
            try:
                return results.get_nowait()
            except queue.Empty:
                pass
            if not _take_a_band():
                try:
                    return results.get(timeout=HELP_POLL_S)
                except queue.Empty:
                    pass


class _Bands:
    """The bands of one window: claimed one at a time by the thread reading it, the pool
    threads it started and any consumer that waits meanwhile."""

    def __init__(self, count: int, fill: Callable[[int], None]):
        self.count, self.fill = count, fill
        self.claimed, self.unfinished = 0, count
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def run_one(self) -> bool:
        """Claim and fill the next band; False when none is left to claim."""
        with _lock:
            if self.claimed == self.count:
                return False
            i = self.claimed
            self.claimed += 1
        try:
            if self.error is None:  # after a failure the rest are only counted off
                self.fill(i)
        except BaseException as error:  # raised by the reading thread
            self.error = self.error or error
        finally:
            with _lock:
                self.unfinished -= 1
                if self.unfinished == 0:
                    self.finished.set()
        return True

    def run(self) -> None:
        while self.run_one():
            pass


def _take_a_band() -> bool:
    """Fill one unclaimed band of a window being read, if there is one."""
    with _lock:
        bands = next((b for b in _open if b.claimed < b.count), None)
    return bands is not None and bands.run_one()


def by_row_bands(
    shape: tuple[int, ...],
    dtype,
    band: Callable[[int, int, np.ndarray | None], np.ndarray],
    workers: int,
) -> np.ndarray:
    """The array of `shape` whose rows y0:y1 are `band(y0, y1, ...)`: bands of about BAND_ROWS
    rows (at least `workers`) claimed by this thread, `workers - 1` pool threads and any
    consumer waiting in `get_lending` meanwhile.

    Args:
        shape: (h, w[, C]) of the window.
        dtype: of the window.
        band: (y0, y1, out) -> rows y0:y1 of the window, shape (y1 - y0, w[, C]), written
            into `out` (those rows of the window, contiguous) where it can, or returned new
            (then copied there; `out` is None for a window of one band); called on this thread
            and on others, so it must only read shared state.
        workers: threads to start with (a window of one band: `band(0, h, None)` on this
            thread, returned as is).

    Returns:
        the window; its bytes do not depend on the bands or threads when `band` is pixel-wise.
    """
    rows = shape[0]
    workers = max(1, min(workers, rows))
    count = max(workers, min(rows, -(-rows // BAND_ROWS)))
    if count == 1:
        return band(0, rows, None)
    out = np.empty(shape, dtype)
    edges = [rows * i // count for i in range(count + 1)]

    def fill(i: int) -> None:
        rows_out = out[edges[i] : edges[i + 1]]
        got = band(edges[i], edges[i + 1], rows_out)
        if got is not rows_out:
            rows_out[...] = got

    bands = _Bands(count, fill)
    with _lock:
        _open.append(bands)
    try:
        for _ in range(workers - 1):
            _helpers(workers - 1).submit(bands.run)
        bands.run()  # this thread claims bands till none are left
        bands.finished.wait()  # then waits for those others claimed
    finally:
        with _lock:
            _open.remove(bands)
    if bands.error is not None:
        raise bands.error
    return out


def _helpers(count: int) -> ThreadPoolExecutor:
    """The shared pool of band threads, grown to at least `count` threads."""
    global _pool, _pool_threads
    with _lock:
        if _pool_threads < count:
            old, _pool = _pool, ThreadPoolExecutor(count, thread_name_prefix="gigamlx-band")
            _pool_threads = count
            if old is not None:
                old.shutdown(wait=False)  # its queued bands still run
        return _pool
