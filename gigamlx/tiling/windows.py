"""Tiles' windows for the scheduler: read one tile ahead on a thread while the compute runs,
and which of pass 1's windows stay on the host to start Dice's pass 2 without a second read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from gigamlx.backends.base import TileData
from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Tile, TilePlan
from gigamlx.tiling.budget import CACHE_SHARE
from gigamlx.tiling.prefetch import PREFETCH_DEPTH, Prefetcher

DEFAULT_CACHE_BYTES = 512 * 10**6  # Dice pass-2 cache when no budget is given


class ReadClock:
    """Seconds spent reading windows (on the prefetch thread) and waiting for them."""

    def __init__(self) -> None:
        self.read_s = 0.0
        self.wait_s = 0.0


def window_reader(image, mask) -> Callable[[Tile], TileData]:
    def read(tile: Tile) -> TileData:
        window = read_window(image, tile.in_box)
        target = None
        if mask is not None:
            target = (read_window(mask, tile.out_box) != 0).view(np.uint8)
        return TileData(tile, window, target)

    return read


def staged_loader(read: Callable[[Tile], TileData], stage: Callable[[TileData], TileData]):
    return lambda tile: stage(read(tile))


def pass2_loader(read: Callable[[Tile], TileData], stage: Callable[[TileData], TileData]):
    """Pass 2's loader: a window kept from pass 1 is staged, a tile is read and staged."""
    return lambda item: stage(item if isinstance(item, TileData) else read(item))


def iter_tile_data(items, load: Callable, clock: ReadClock) -> Iterator[TileData]:
    """`load(item)` for each item, one tile ahead on a thread, while the caller computes.

    Reading tile n+1 (zarr decompression, disk) and staging it on the device (the backend's
    `stage`: a prefetch to the GPU for cuda-um) overlap the compute of tile n.
    """
    prefetcher = Prefetcher(load, items, depth=PREFETCH_DEPTH)
    try:
        yield from prefetcher
    finally:
        prefetcher.close()
        clock.read_s += prefetcher.read_s
        clock.wait_s += prefetcher.wait_s


def cache_limit_bytes(image, budget_bytes: int | None) -> int:
    """Host bytes the Dice pass-2 cache may take: none for in-memory images (rereading is a
    copy), else its share of the budget (the tile size was chosen leaving that room)."""
    if isinstance(image, np.ndarray):
        return 0
    return int(budget_bytes * CACHE_SHARE) if budget_bytes else DEFAULT_CACHE_BYTES


def kept_tiles(plan: TilePlan, limit_bytes: int) -> list[Tile]:
    """The last tiles of pass 1 whose windows (image and target) fit in `limit_bytes` together:
    kept on the host, they start pass 2 without being read again."""
    kept, total = [], 0
    for tile in reversed(plan.tiles):
        total += tile.in_box.area() * 3 + tile.out_box.area()
        if total > limit_bytes:
            break
        kept.append(tile)
    return kept[::-1]


def second_pass_order(plan: TilePlan, cache: list[TileData]) -> list[Tile | TileData]:
    """Pass 2 goes backwards: the windows kept from the end of pass 1 first (newest first, so
    the compute never waits for the first read), then the others, read again."""
    return cache[::-1] + list(plan.tiles[: len(plan.tiles) - len(cache)])[::-1]
