"""Row bands on several threads: the same array for any thread count, errors reach the caller,
and more than one thread only while a consumer waits for a read."""

import os

import numpy as np
import pytest

from gigamlx.core import bands
from gigamlx.core.bands import by_row_bands, compute_waiting, read_workers, usable_cores


def _window(y0: int, y1: int) -> np.ndarray:
    rows = np.arange(y0, y1, dtype=np.int64)[:, None, None]
    return (rows * 1009 + np.arange(37)[None, :, None] * 7 + np.arange(3)).astype(np.uint16)


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 40])
def test_by_row_bands_same_array_for_any_thread_count(workers):
    got = by_row_bands((23, 37, 3), np.uint16, _window, workers)
    np.testing.assert_array_equal(got, _window(0, 23))
    assert got.dtype == np.uint16 and got.flags.c_contiguous


def test_by_row_bands_one_worker_returns_the_band_itself():
    whole = _window(0, 9)
    assert by_row_bands(whole.shape, whole.dtype, lambda y0, y1: whole, 1) is whole


def test_by_row_bands_raises_a_bands_error():
    def band(y0: int, y1: int) -> np.ndarray:
        if y0 > 0:
            raise OSError("chunk gone")
        return _window(y0, y1)

    with pytest.raises(OSError, match="chunk gone"):
        by_row_bands((10, 37, 3), np.uint16, band, 2)


def test_read_workers_uses_every_core_only_while_the_compute_waits(monkeypatch):
    monkeypatch.setattr(bands, "usable_cores", lambda: 4)
    assert read_workers() == 1
    with compute_waiting():
        assert read_workers() == 4
        with compute_waiting():
            assert read_workers() == 4
        assert read_workers() == 4
    assert read_workers() == 1


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
