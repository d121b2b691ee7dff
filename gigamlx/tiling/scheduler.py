"""The scheduler: one tile's graph at a time, exact whole-image losses and gradients.

It owns every evaluation of a step (through the backend's tile methods), accumulates sums and
gradients in float64, and measures the peak memory of what it ran. Dice takes two passes:
forward-only sums, then per-tile gradients with the exact per-pixel cotangent from those sums
(pass 2 runs backwards, starting with the windows pass 1 kept within the budget); on a plan of
one tile, one forward + backward gives both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from gigamlx.backends.base import Backend, FlatParams, TileData
from gigamlx.core.geometry import Tile, TilePlan, plan_tiles
from gigamlx.core.losses import (
    Objective,
    TileStats,
    check_loss,
    loss_value,
    needs_two_passes,
    objective,
)
from gigamlx.core.memory import release_freed_memory
from gigamlx.core.progress import Progress
from gigamlx.core.spec import GIGAUNET_4492, Layer
from gigamlx.runs.config import DEFAULT_TILE_PX
from gigamlx.tiling.budget import (
    CPU_MAX_TILE_PX,
    Mode,
    buffer_cache_bytes,
    choose_tile_hw,
    tile_cost,
)
from gigamlx.tiling.windows import (
    ReadClock,
    cache_limit_bytes,
    iter_tile_data,
    kept_tiles,
    pass2_loader,
    second_pass_order,
    staged_loader,
    window_reader,
)

log = logging.getLogger(__name__)


class StepResult(NamedTuple):
    """One exact tiled step, with what it cost."""

    loss: float
    stats: TileStats  # sums over the whole image's real pixels
    grads: FlatParams  # float64, summed over tiles
    plan: TilePlan
    peak_bytes: int  # engine peak (active bytes) while the step ran
    seconds: float
    read_seconds: float  # reading image and mask windows (on the prefetch thread)
    read_wait_seconds: float  # of which compute waited for (0 when reads fully overlap)
    forward_seconds: float  # Dice pass 1 (forward-only sums), reads included; 0 without one
    cache_bytes: int = 0  # freed buffers the engine kept at the step's end (bounded by budget)
    kept_windows: int = 0  # windows pass 2 took from pass 1 instead of reading them again


def check_image(image, mask=None) -> tuple[int, int]:
    """Validate an (H, W, 3) uint8 image and optional (H, W) mask; return (H, W)."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {shape}")
    if np.dtype(image.dtype) != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"image is empty: shape {shape}")
    if mask is not None:
        mask_shape = tuple(getattr(mask, "shape", ()))
        if mask_shape != shape[:2]:
            raise ValueError(f"mask shape {mask_shape} does not match image grid {shape[:2]}")
    return shape[0], shape[1]


def resolve_plan(
    backend: Backend,
    model: Any,
    mode: Mode,
    image_hw: tuple[int, int],
    tile: int | tuple[int, int] | None,
    budget_bytes: int | None,
    spec: tuple[Layer, ...] = GIGAUNET_4492,
) -> TilePlan:
    """Tiles for this image: `tile` if given, else the largest that fit `budget_bytes` (on a
    CPU, at most CPU_MAX_TILE_PX a side)."""
    if tile is None and budget_bytes is not None:
        resting = backend.memory().active_bytes
        cost = tile_cost(backend, model, mode, spec)
        backend.bound_memory(budget_bytes, buffer_cache_bytes(cost, budget_bytes))
        cap = CPU_MAX_TILE_PX if backend.runs_on_cpu else None
        tile = choose_tile_hw(cost, budget_bytes, resting, image_hw, spec, cap)
    return plan_tiles(image_hw, tile or DEFAULT_TILE_PX, spec)


def _forward_pass(
    backend: Backend,
    model: Any,
    plan: TilePlan,
    image,
    read: Callable[[Tile], TileData],
    budget_bytes: int | None,
    clock: ReadClock,
    progress: Progress | None,
) -> tuple[TileStats, list[Tile | TileData], int]:
    """Dice pass 1: forward-only sums over the whole image; returns them, pass 2's order (the
    windows kept within the budget first) and how many windows were kept."""
    sums, cache = TileStats(), []
    kept = set(kept_tiles(plan, cache_limit_bytes(image, budget_bytes)))
    staged = staged_loader(read, backend.stage)

    def load(tile: Tile) -> TileData:  # a kept window stays on the host till pass 2
        return read(tile) if tile in kept else staged(tile)

    for done, data in enumerate(iter_tile_data(plan.tiles, load, clock), 1):
        sums = sums + backend.tile_stats(model, data, plan.padded_hw)
        if data.tile in kept:
            cache.append(data)
        _report(progress, "forward", done, len(plan.tiles))
    return sums, second_pass_order(plan, cache), len(cache)


def _tile_grad(
    backend: Backend, model: Any, plan: TilePlan, loss: str, sums: TileStats | None, pixels: int
) -> Callable[[TileData], tuple[TileStats | None, FlatParams]]:
    """Pass 2's gradient of one tile: of the surrogate from pass 1's `sums` (the tile's stats
    are pass 1's: not computed again), or (Dice on a one-tile plan, no pass 1) of the loss of
    the tile's own sums, in one forward."""
    if needs_two_passes(loss) and sums is None:

        def of_own_sums(stats: TileStats) -> Objective:
            return objective(loss, stats, pixels)

        return lambda data: backend.tile_loss_grad(model, data, plan.padded_hw, of_own_sums)
    coefficients = objective(loss, sums, pixels)
    with_stats = sums is None
    return lambda data: backend.tile_grad(model, data, plan.padded_hw, coefficients, with_stats)


def tiled_step(
    backend: Backend,
    model: Any,
    image,
    mask,
    loss: str = "dice",
    tile: int | None = None,
    budget_bytes: int | None = None,
    progress: Progress | None = None,
) -> StepResult:
    """Exact loss and parameter gradients of one whole image, computed tile by tile.

    Dice takes two passes, unless the plan has one tile: that tile's sums are the image's, so
    one forward + backward (`Backend.tile_loss_grad`) gives the sums and the gradient, and
    `forward_seconds` is 0.

    Args:
        backend: the engine.
        model: the engine's model.
        image: (H, W, 3) uint8 array-like (numpy, zarr...), read one window at a time.
        mask: (H, W) array-like; non-zero is tissue.
        loss: "dice", "bce" or "dice+bce".
        tile: owned tile side in pixels (multiple of 64); overrides `budget_bytes`.
        budget_bytes: peak engine memory to stay under when choosing the tile.
        progress: optional callback (phase, done, total).
    """
    check_loss(loss)
    image_hw = check_image(image, mask)
    plan = resolve_plan(backend, model, "grad", image_hw, tile, budget_bytes)
    start, clock = time.perf_counter(), ReadClock()
    read = window_reader(image, mask)
    backend.reset_peak_memory()
    pixels = image_hw[0] * image_hw[1]
    sums, order, kept_windows, forward_seconds = None, list(plan.tiles), 0, 0.0
    if needs_two_passes(loss) and len(plan.tiles) > 1:
        sums, order, kept_windows = _forward_pass(
            backend, model, plan, image, read, budget_bytes, clock, progress
        )
        forward_seconds = time.perf_counter() - start
    grad = _tile_grad(backend, model, plan, loss, sums, pixels)
    grads: FlatParams = {}
    stats = TileStats()
    second_pass = iter_tile_data(order, pass2_loader(read, backend.stage), clock)
    for done, data in enumerate(second_pass, 1):
        tile_stats, tile_grads = grad(data)
        stats = stats if tile_stats is None else stats + tile_stats
        for name, g in tile_grads.items():
            grads[name] = grads[name] + g if name in grads else g
        _report(progress, "backward", done, len(plan.tiles))
    if sums is not None:
        stats = sums  # pass 1's: the same forward, so pass 2 did not compute them again
    reading = backend.memory()
    order.clear()  # the kept windows are done with: free them, then hand back what
    if len(plan.tiles) > 1:  # the C library keeps of the step's buffers (between steps)
        # windows of several sizes fragment the heap from step to step; one tile's buffers
        # are the same every step and are reused whole, and handing them back would make the
        # next step fault in and zero them again (most of its system time)
        release_freed_memory()
    return StepResult(
        loss=loss_value(loss, stats),
        stats=stats,
        grads=grads,
        plan=plan,
        peak_bytes=reading.peak_bytes,
        seconds=time.perf_counter() - start,
        read_seconds=clock.read_s,
        read_wait_seconds=clock.wait_s,
        forward_seconds=forward_seconds,
        cache_bytes=reading.cache_bytes,
        kept_windows=kept_windows,
    )


def tiled_predict(
    backend: Backend,
    model: Any,
    image,
    tile: int | None = None,
    budget_bytes: int | None = None,
    out=None,
    progress: Progress | None = None,
):
    """Tissue probabilities for a whole image, tile by tile.

    Args:
        out: optional (H, W) array-like (numpy, zarr) written tile by tile; float32 unless its
            dtype is uint8, in which case probabilities are stored as round(255 * p).

    Returns:
        `out` if given, else a new (H, W) float32 numpy array.
    """
    image_hw = check_image(image)
    if out is None:
        out = np.zeros(image_hw, np.float32)
    elif tuple(out.shape) != image_hw:
        raise ValueError(f"out shape {tuple(out.shape)} does not match image grid {image_hw}")
    plan = resolve_plan(backend, model, "predict", image_hw, tile, budget_bytes)
    load = staged_loader(window_reader(image, None), backend.stage)
    for done, data in enumerate(iter_tile_data(plan.tiles, load, ReadClock()), 1):
        probs = backend.tile_predict(model, data, plan.padded_hw)
        box = data.tile.out_box
        if np.dtype(out.dtype) == np.uint8:
            probs = np.rint(probs * 255.0).astype(np.uint8)
        out[box.y0 : box.y1, box.x0 : box.x1] = probs
        _report(progress, "predict", done, len(plan.tiles))
    return out


def _report(progress: Progress | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)
