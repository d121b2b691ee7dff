"""A window computed as row bands on several threads, only while the compute waits for it.

A prefetch thread reads on one core while the compute runs on the others. But while the
compute is blocked waiting for a read (a step of one tile, the first window of a pass), its
core is idle and can take a share of the read. The waiting consumer says so with
`compute_waiting()`; a reader asks `read_workers()` how many threads the window may use and
runs its bands with `by_row_bands`. Independent pieces of work that release the GIL (the
validation's masks) run on all cores with `map_on_cores`.
"""

from __future__ import annotations

import os
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
    """Mark the calling thread as blocked on a read for the block's duration: its core is
    lent to `by_row_bands` meanwhile."""
    global _waiting
    with _lock:
        _waiting += 1
    try:
        yield
    finally:
        with _lock:
            _waiting -= 1


def read_workers() -> int:
    """Threads a window read may use now: every usable core while a consumer waits for a
    read, else one (the compute runs on the other cores)."""
    return usable_cores() if _waiting > 0 else 1


def by_row_bands(
    shape: tuple[int, ...], dtype, band: Callable[[int, int], np.ndarray], workers: int
) -> np.ndarray:
    """The array of `shape` whose rows y0:y1 are `band(y0, y1)`, in `workers` bands at once.

    Args:
        shape: (h, w[, C]) of the window.
        dtype: of the window.
        band: (y0, y1) -> rows y0:y1 of the window, shape (y1 - y0, w[, C]); called on this
            thread and on pool threads, so it must only read shared state.
        workers: threads to use (1: `band(0, h)` on this thread, returned as is).

    Returns:
        the window; its bytes do not depend on `workers` when `band` is pixel-wise.
    """
    rows = shape[0]
    workers = max(1, min(workers, rows))
    if workers == 1:
        return band(0, rows)
    out = np.empty(shape, dtype)
    edges = [rows * i // workers for i in range(workers + 1)]

    def fill(i: int) -> None:
        out[edges[i] : edges[i + 1]] = band(edges[i], edges[i + 1])

    futures = [_helpers(workers - 1).submit(fill, i) for i in range(1, workers)]
    fill(0)  # this thread takes the first band; the pool the rest
    for future in futures:
        future.result()  # raises a band's error here
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
