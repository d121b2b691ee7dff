"""A bounded prefetch queue: read item n+1 on a thread while the caller computes on item n.

The reader thread never runs more than `depth` results ahead; errors reach the caller. While
the caller waits for a result, it takes bands of the read in flight (`core.bands`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gigamlx.core.bands import get_lending

log = logging.getLogger(__name__)

PREFETCH_DEPTH = 2  # the scheduler's windows read ahead: one in flight, one ready
_DONE = object()
_POLL_S = 0.05


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterate `read_fn(item)` for each item in order, reading ahead on a background thread.

    Attributes:
        read_s: seconds spent inside `read_fn` (on the thread).
        wait_s: seconds the consumer waited for a result (0 when reading keeps up).

    Use as an iterator, ideally in a `with` block; `close()` stops the thread early.
    """

    def __init__(self, read_fn: Callable[[Any], Any], items: Iterable[Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.read_s = 0.0
        self.wait_s = 0.0
        self._read_fn = read_fn
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="gigamlx-prefetch", daemon=True)
        self._thread.start()

    def _put(self, value: Any) -> bool:
        """Put unless closed; False when the consumer has gone."""
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                start = time.perf_counter()
                value = self._read_fn(item)
                self.read_s += time.perf_counter() - start
                if not self._put(value):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        start = time.perf_counter()
        value = get_lending(self._queue)  # idle till then: it takes bands of the read
        self.wait_s += time.perf_counter() - start
        if value is _DONE or isinstance(value, _Failure):
            self._finished = True
            self._thread.join()
            if isinstance(value, _Failure):
                raise value.error
            raise StopIteration
        return value

    def close(self) -> None:
        """Stop reading ahead and join the thread (waits for an in-flight `read_fn`)."""
        self._finished = True
        self._stop.set()
        while True:  # drain so a blocked put sees the stop flag promptly
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    @property
    def alive(self) -> bool:
        """Whether the reader thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
