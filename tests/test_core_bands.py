"""Row bands on several threads: the same array for any thread count and band size, errors
reach the caller, more than one thread only while a consumer waits for a read, and a consumer
that waits takes bands of the read in flight."""

import os
import queue
import threading

import numpy as np
import pytest

from gigamlx.core import bands
from gigamlx.core.bands import by_row_bands, compute_waiting, read_workers, usable_cores


def _window(y0: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
    rows = np.arange(y0, y1, dtype=np.int64)[:, None, None]
    return (rows * 1009 + np.arange(37)[None, :, None] * 7 + np.arange(3)).astype(np.uint16)


def _window_into(y0: int, y1: int, out: np.ndarray | None) -> np.ndarray:
    """_window written into `out` where given, as the native turn does."""
    if out is None:
        return _window(y0, y1)
    out[...] = _window(y0, y1)
    return out


@pytest.mark.parametrize("band_rows", [4, 256])
@pytest.mark.parametrize("workers", [1, 2, 3, 5, 40])
@pytest.mark.parametrize("band", [_window, _window_into])
def test_by_row_bands_same_array_for_any_thread_count(band, workers, band_rows, monkeypatch):
    monkeypatch.setattr(bands, "BAND_ROWS", band_rows)
    got = by_row_bands((23, 37, 3), np.uint16, band, workers)
    np.testing.assert_array_equal(got, _window(0, 23))
    assert got.dtype == np.uint16 and got.flags.c_contiguous


def test_by_row_bands_one_band_returns_it_as_is():
    whole = _window(0, 9)
    assert by_row_bands(whole.shape, whole.dtype, lambda y0, y1, out: whole, 1) is whole


@pytest.mark.parametrize("workers", [1, 2])
def test_by_row_bands_raises_a_bands_error(workers, monkeypatch):
    monkeypatch.setattr(bands, "BAND_ROWS", 3)

    def band(y0: int, y1: int, out: np.ndarray | None) -> np.ndarray:
        if y0 > 0:
            raise OSError("chunk gone")
        return _window(y0, y1)

    with pytest.raises(OSError, match="chunk gone"):
        by_row_bands((10, 37, 3), np.uint16, band, workers)
    assert not bands._open  # the failed window is no longer offered to waiting consumers


def test_read_workers_uses_the_cores_no_waiting_consumer_holds(monkeypatch):
    """A waiting consumer takes bands itself: a read starts threads on the other cores."""
    monkeypatch.setattr(bands, "usable_cores", lambda: 4)
    assert read_workers() == 1
    with compute_waiting():
        assert read_workers() == 3
        with compute_waiting():
            assert read_workers() == 2
        assert read_workers() == 3
    assert read_workers() == 1
    monkeypatch.setattr(bands, "usable_cores", lambda: 1)
    with compute_waiting():
        assert read_workers() == 1


def test_a_waiting_consumer_takes_bands_of_the_read_in_flight(monkeypatch):
    """A read that started on one thread (the compute was busy) is finished by the consumer
    once it waits: the reader's first band blocks until another thread has filled the last
    one, which only the waiting consumer can do. The bytes are the one-thread read's."""
    monkeypatch.setattr(bands, "BAND_ROWS", 5)
    last_done, threads = threading.Event(), {}
    results: queue.Queue = queue.Queue()

    def band(y0: int, y1: int, out: np.ndarray | None) -> np.ndarray:
        threads[y0] = threading.current_thread().name
        if y0 == 0:
            assert last_done.wait(10), "no other thread took a band"
        elif y1 == 23:
            last_done.set()
        return _window_into(y0, y1, out)

    reader = threading.Thread(
        target=lambda: results.put(by_row_bands((23, 37, 3), np.uint16, band, 1)), name="reader"
    )
    reader.start()
    got = bands.get_lending(results)
    reader.join()
    np.testing.assert_array_equal(got, _window(0, 23))
    assert threads[0] == "reader" and set(threads.values()) == {"reader", "MainThread"}
    assert read_workers() == 1  # nobody waits any more


def test_usable_cores_without_an_affinity_call(monkeypatch):
    """macOS has neither sched_getaffinity nor /proc: os.cpu_count() is the answer there."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


def test_map_on_cores_keeps_the_items_order():
    import time

    from gigamlx.core.bands import map_on_cores

    def slow_square(n: int) -> int:
        time.sleep(0.01 * (5 - n))  # later items finish first
        return n * n

    assert map_on_cores(slow_square, [0, 1, 2, 3, 4]) == [0, 1, 4, 9, 16]
    assert map_on_cores(slow_square, []) == []
