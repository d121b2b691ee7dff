"""Prefetcher: same bytes as direct reads, errors reach the caller, close() stops the thread."""

import threading
import time

import numpy as np
import pytest

from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import plan_tiles
from gigamlx.slide.pyramid import chunk_boxes
from gigamlx.slide.store import open_store
from gigamlx.slide.writer import StoreWriter
from gigamlx.tiling.prefetch import Prefetcher


@pytest.fixture
def store(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (300, 430, 3), dtype=np.uint8)
    with StoreWriter(tmp_path / "s.zarr", rgb.shape[:2], 128, with_mask=False) as writer:
        for box in chunk_boxes(rgb.shape[:2], 128):
            writer.write_image(box, rgb[box.y0 : box.y1, box.x0 : box.x1])
        return open_store(writer.finish())


def test_prefetch_same_bytes_as_direct_read_with_halos(store):
    plan = plan_tiles(store.image_hw, 128)
    boxes = [tile.in_box for tile in plan.tiles]
    assert any(b.y0 < 0 or b.x1 > 430 for b in boxes)  # halos reach past the borders
    with Prefetcher(lambda box: read_window(store.image, box), boxes, depth=2) as windows:
        got = list(windows)
    assert len(got) == len(boxes)
    for box, window in zip(boxes, got, strict=True):
        assert window.tobytes() == read_window(store.image, box).tobytes()
    assert windows.read_s > 0 and windows.wait_s >= 0
    assert not windows.alive


def test_prefetch_reads_ahead_while_consumer_computes():
    started = []

    def read(i):
        started.append(i)
        return i

    prefetch = Prefetcher(read, range(10), depth=2)
    assert next(prefetch) == 0
    deadline = time.monotonic() + 5
    while len(started) < 3 and time.monotonic() < deadline:  # the consumer "computes"
        time.sleep(0.01)
    time.sleep(0.05)
    assert 3 <= len(started) <= 4  # item 0 consumed, 2 queued, at most 1 more in hand
    assert list(prefetch) == list(range(1, 10))


def test_prefetch_propagates_reader_error():
    def read(i):
        if i == 3:
            raise OSError(f"tile {i} unreadable")
        return i

    prefetch = Prefetcher(read, range(10))
    with pytest.raises(OSError, match="tile 3 unreadable"):
        for _ in prefetch:
            pass
    assert not prefetch.alive
    assert list(prefetch) == []


def test_prefetch_close_stops_thread_early():
    reads = []
    prefetch = Prefetcher(lambda i: reads.append(i) or i, range(10_000), depth=2)
    assert next(prefetch) == 0
    prefetch.close()
    assert not prefetch.alive
    assert len(reads) < 10
    assert list(prefetch) == []
    assert not [t for t in threading.enumerate() if t.name == "gigamlx-prefetch" and t.is_alive()]


def test_prefetch_wait_time_counts_slow_reads():
    prefetch = Prefetcher(lambda i: time.sleep(0.05) or i, range(3), depth=1)
    assert list(prefetch) == [0, 1, 2]
    assert prefetch.wait_s > 0.1 and prefetch.read_s > 0.14


def test_prefetch_lends_the_waiting_consumers_core_to_the_read(monkeypatch):
    from gigamlx.core import bands

    monkeypatch.setattr(bands, "usable_cores", lambda: 4)

    def read(item: int) -> int:  # what a read may use once the consumer blocks on it
        deadline = time.perf_counter() + 5
        while bands.read_workers() == 1 and time.perf_counter() < deadline:
            time.sleep(0.001)
        return bands.read_workers()

    with Prefetcher(read, [0], depth=1) as windows:
        assert list(windows) == [3]  # the waiting consumer's own core takes bands itself
    assert bands.read_workers() == 1  # nobody waits any more
