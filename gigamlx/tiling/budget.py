"""Tile size from a memory budget, by measuring what a tile costs instead of guessing.

A tile's peak memory is affine in its input-window pixels (every activation is a fixed number
of bytes per pixel at its scale). Two small probe tiles measure the line; the largest tile on
it that fits the budget is chosen. The probes run on zeros, before the image is touched.
The budget is for the whole process: the host's own memory (interpreter, libraries) measured at
the probes, the engine's cache of freed buffers and the scheduler's pass-2 cache come out of it
before the tiles' share.
"""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import numpy as np

from gigamlx.backends.base import Backend, TileData
from gigamlx.core.geometry import Box, Tile
from gigamlx.core.losses import Objective
from gigamlx.core.memory import current_rss_bytes, format_bytes
from gigamlx.core.spec import GIGAUNET_4492, Layer, halo_px, total_stride
from gigamlx.tiling.prefetch import PREFETCH_DEPTH

log = logging.getLogger(__name__)

Mode = Literal["grad", "stats", "predict"]
# Of the budget left after the host's own memory: the engine's tiles get this share, the
# engine's cache of freed buffers BUFFER_CACHE_SHARE (the next tile reuses them instead of
# faulting fresh pages in; on Metal it is unbounded unless set), the scheduler's pass-2 window
# cache CACHE_SHARE, and the rest absorbs allocator rounding, prefetch and the store reader's
# decoded chunks kept between windows (slide.chunks: at most 48 MB per array and thread).
ENGINE_SHARE = 0.6
BUFFER_CACHE_SHARE = 0.2
CACHE_SHARE = 0.1
# Host bytes per input-window pixel while tiles are in flight: the uint8 window (3 B) and target
# (<= 1 B) of the tile computing, of the PREFETCH_DEPTH tiles queued and of the one being read,
# plus the reader's transient copies (a zero-filled window, a turned region block)
HOST_BYTES_PER_WINDOW_PX = 4 * (PREFETCH_DEPTH + 2) + 8
# Largest tile side planned where the model computes on the CPU: larger tiles ran slower there
# (page faults, and long reads the compute could not overlap); docs/experiments.md
CPU_MAX_TILE_PX = 4608
_PROBE_TILES_PX = (64, 256)
_cost_cache: dict[tuple[str, str, Mode], TileCost] = {}


class TileCost(NamedTuple):
    """Peak bytes of one tile = fixed_bytes + bytes_per_px * input-window pixels, plus the
    process's memory outside the engine (host_bytes) when it was measured."""

    fixed_bytes: float
    bytes_per_px: float
    host_bytes: float = 0.0

    def peak_bytes(self, tile_px: int, halo: int) -> float:
        """Engine peak of one square tile."""
        return self.fixed_bytes + self.bytes_per_px * (tile_px + 2 * halo) ** 2

    def in_flight_bytes(self, tile_px: int, halo: int) -> float:
        """Engine peak plus the host's windows in flight (prefetch queue and reads)."""
        window_px = (tile_px + 2 * halo) ** 2
        return self.peak_bytes(tile_px, halo) + HOST_BYTES_PER_WINDOW_PX * window_px


def probe_data(tile_px: int, halo: int) -> tuple[TileData, tuple[int, int]]:
    """A corner tile of a tile-sized image: zeroing is needed on every side (the dearer path)."""
    window = tile_px + 2 * halo
    tile = Tile(Box(0, 0, tile_px, tile_px), Box(-halo, -halo, tile_px + halo, tile_px + halo))
    image = np.zeros((window, window, 3), np.uint8)
    target = np.zeros((tile_px, tile_px), np.uint8)
    return TileData(tile, image, target), (tile_px, tile_px)


def measure_peak(backend: Backend, model, mode: Mode, tile_px: int, halo: int) -> int:
    """Peak bytes above the resting level while one probe tile runs."""
    data, padded = probe_data(tile_px, halo)
    backend.release_cache()
    resting = backend.memory().active_bytes
    backend.reset_peak_memory()
    if mode == "grad":
        backend.tile_grad(model, data, padded, Objective(1.0, 1.0, 1.0))
    elif mode == "stats":
        backend.tile_stats(model, data, padded)
    else:
        backend.tile_predict(model, data, padded)
    return backend.memory().peak_bytes - resting


def tile_cost(
    backend: Backend, model, mode: Mode, spec: tuple[Layer, ...] = GIGAUNET_4492
) -> TileCost:
    """Fit the affine cost line from two probe tiles (cached per backend and mode)."""
    key = (backend.name, backend.compute_path, mode)  # each model path has its own cost
    if key not in _cost_cache:
        halo = halo_px(spec)
        small, large = _PROBE_TILES_PX
        peak_small = measure_peak(backend, model, mode, small, halo)
        peak_large = measure_peak(backend, model, mode, large, halo)
        px_small, px_large = (small + 2 * halo) ** 2, (large + 2 * halo) ** 2
        per_px = max((peak_large - peak_small) / (px_large - px_small), 0.0)
        _cost_cache[key] = TileCost(peak_large - per_px * px_large, per_px, _host_bytes(backend))
        log.debug("tile cost %s/%s: %s", backend.name, mode, _cost_cache[key])
    return _cost_cache[key]


def _host_bytes(backend: Backend) -> float:
    """Resident memory that is not the engine's, live or cached (0 where RSS is unknown)."""
    rss, engine = current_rss_bytes(), backend.memory()
    return 0.0 if rss is None else max(rss - engine.active_bytes - engine.cache_bytes, 0)


def buffer_cache_bytes(cost: TileCost, budget_bytes: int) -> int:
    """How many freed bytes the engine may keep cached for reuse within the budget."""
    return max(int((budget_bytes - cost.host_bytes) * BUFFER_CACHE_SHARE), 0)


def engine_bytes(cost: TileCost, budget_bytes: int, resting_bytes: int) -> float:
    """What one tile's graph may peak at within the budget."""
    return (budget_bytes - cost.host_bytes) * ENGINE_SHARE - resting_bytes


def check_budget(
    backend: Backend, model, budget_bytes: int, spec: tuple[Layer, ...] = GIGAUNET_4492
) -> None:
    """Raise choose_tile_hw's ValueError now if even the smallest training tile cannot fit
    `budget_bytes`: a run checks this before it writes its first file."""
    stride = total_stride(spec)
    cost = tile_cost(backend, model, "grad", spec)  # cached: the first step reuses it
    choose_tile_hw(cost, budget_bytes, backend.memory().active_bytes, (stride, stride), spec)


def choose_tile_hw(
    cost: TileCost,
    budget_bytes: int,
    resting_bytes: int,
    image_hw: tuple[int, int],
    spec: tuple[Layer, ...] = GIGAUNET_4492,
    max_side_px: int | None = None,
) -> tuple[int, int]:
    """Tile (rows, cols) for this image whose predicted peak fits the budget.

    The largest square tile that fits (and is no larger than `max_side_px`, if given) sets
    how many tiles each axis needs; the tiles are then shrunk to split each axis evenly, so
    no tile is mostly padding.

    Raises:
        ValueError: if even the smallest tile does not fit; names the budget and the minimum.
    """
    stride, halo = total_stride(spec), halo_px(spec)
    usable = engine_bytes(cost, budget_bytes, resting_bytes)
    minimum = (cost.in_flight_bytes(stride, halo) + resting_bytes) / ENGINE_SHARE + cost.host_bytes
    if cost.in_flight_bytes(stride, halo) > usable:
        raise ValueError(
            f"memory budget {format_bytes(budget_bytes)} is too small: the smallest tile "
            f"({stride}x{stride} px) needs about {format_bytes(minimum)}; raise the budget"
        )
    padded = [-(-n // stride) * stride for n in image_hw]
    largest = min(max(padded), (max_side_px or max(padded)) // stride * stride)
    side = stride
    while side + stride <= largest and cost.in_flight_bytes(side + stride, halo) <= usable:
        side += stride
    rows, cols = (-(-n // (-(-n // side) * stride)) * stride for n in padded)
    return rows, cols
