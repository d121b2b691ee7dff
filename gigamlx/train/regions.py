"""Region sampling and tile-wise augmentation (D4 turns here, colour and light in augment.py).

A region is never copied whole: `region_view` is an (H, W[, C]) array-like over a slide that
maps each window the scheduler asks for back to the slide, reads only that, and flips/rotates
the small window. The eight flips/rotations of the square (D4) map boxes to boxes.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from gigamlx.backends.base import WindowTurner
from gigamlx.core.arrays import WindowArray
from gigamlx.core.bands import by_row_bands, read_workers
from gigamlx.core.geometry import Box
from gigamlx.train.augment import (
    LUT_MIN_REGION_PX,
    ColorJitter,
    Illumination,
    apply_gains,
    draw_illumination,
    draw_jitter,
    lut32,
    unpack_rgb,
)

log = logging.getLogger(__name__)


class Region(NamedTuple):
    """Where one training region comes from and how it is turned."""

    slide: int  # index into the training slides
    origin_yx: tuple[int, int]
    source_hw: tuple[int, int]  # rows x cols read from the slide (before rotation)
    flip: bool  # mirror left-right first
    rot90: int  # then rotate counter-clockwise this many quarter turns (np.rot90)
    color: ColorJitter | None = None  # per-pixel colour transform of the image (not the mask)
    light: Illumination | None = None  # uneven light over the turned image (not the mask)


def _turn_point(y: int, x: int, hw: tuple[int, int], flip: bool, rot90: int):
    """Where pixel (y, x) of an (h, w) array lands after the flip then the rotations."""
    h, w = hw
    if flip:
        x = w - 1 - x
    for _ in range(rot90 % 4):
        y, x, h, w = w - 1 - x, y, w, h
    return y, x, (h, w)


def turned_hw(source_hw: tuple[int, int], rot90: int) -> tuple[int, int]:
    return source_hw if rot90 % 2 == 0 else (source_hw[1], source_hw[0])


def source_box(out_box: Box, source_hw: tuple[int, int], flip: bool, rot90: int) -> Box:
    """The box of the unturned region that turns into `out_box` (inclusive corners mapped)."""
    out_hw = turned_hw(source_hw, rot90)
    # the inverse of (flip, then k turns) is (4 - k turns, then flip), applied to the turned array
    ys, xs = [], []
    for y, x in ((out_box.y0, out_box.x0), (out_box.y1 - 1, out_box.x1 - 1)):
        y, x, mid_hw = _turn_point(y, x, out_hw, False, (4 - rot90) % 4)
        y, x, _ = _turn_point(y, x, mid_hw, flip, 0)
        ys.append(y)
        xs.append(x)
    return Box(min(ys), min(xs), max(ys) + 1, max(xs) + 1)


def turn(block: np.ndarray, flip: bool, rot90: int) -> np.ndarray:
    """Apply the flip then the rotations to a (h, w[, C]) block (a view: no copy)."""
    if not flip and rot90 % 4 == 0:
        return block
    if flip:
        block = block[:, ::-1]
    return np.rot90(block, rot90 % 4, axes=(0, 1))


def region_view(
    array,
    region: Region,
    color: ColorJitter | None = None,
    turner: WindowTurner | None = None,
    light: Illumination | None = None,
    workers: int | None = None,
) -> WindowArray:
    """(H, W[, C]) view of one turned region of a slide array; reads lazily.

    With `color`, each window read is colour-transformed, and with `light` scaled by the
    region's uneven illumination (per pixel, in the turned region's coordinates: exact for
    tiles; `light` needs an (H, W, 3) uint8 image). With `turner` (the backend's native one,
    same bytes), a uint8 window is turned, looked up and lit in one pass instead of numpy's five.
    A window's source block is read whole, then turned and coloured in row bands on `workers`
    threads (None: `read_workers()`, all cores while the compute waits for it); every pixel
    is transformed on its own, so the bytes do not depend on the bands.
    """

    by_table = color is not None and region.source_hw[0] * region.source_hw[1] >= LUT_MIN_REGION_PX
    shape = turned_hw(region.source_hw, region.rot90) + tuple(array.shape[2:])
    finish = _window_finisher(region, color, by_table, turner)

    def read(box: Box) -> np.ndarray:
        r = region
        src = source_box(box, r.source_hw, r.flip, r.rot90)
        y, x = r.origin_yx
        block = np.asarray(array[y + src.y0 : y + src.y1, x + src.x0 : x + src.x1])
        gains = None if light is None else light.gains(box, shape[:2])
        table = lut32(color) if by_table else None  # built (and cached) here, not by each band

        def band(y0: int, y1: int, out: np.ndarray | None) -> np.ndarray:  # rows y0:y1
            part = source_box(Box(y0, 0, y1, box.hw[1]), block.shape[:2], r.flip, r.rot90)
            rows = block[part.y0 : part.y1, part.x0 : part.x1]
            lit = None if gains is None else (gains[0][y0:y1], gains[1])
            return finish(rows, table, lit, out)

        count = read_workers() if workers is None else workers
        return by_row_bands(box.hw + shape[2:], array.dtype, band, count)

    return WindowArray(shape, array.dtype, read)


def _window_finisher(
    region: Region, color: ColorJitter | None, by_table: bool, turner: WindowTurner | None
):
    """(source block, colour table or None, gains or None, out or None) -> the turned,
    recoloured, lit block (written into `out` where given): in one native pass where the
    turner does it all, else the native or numpy turn followed by numpy's colour and light."""
    flip, rot90 = region.flip, region.rot90

    def finish(block: np.ndarray, table: np.ndarray | None, gains, out=None) -> np.ndarray:
        native = turner is not None and block.dtype == np.uint8
        if native and (color is None or by_table):
            return turner(block, table, flip, rot90, gains, out)
        if by_table:  # look colours up, turn the packed words, then unpack: fewest bytes moved
            packed = np.ascontiguousarray(turn(color.lookup(block), flip, rot90))
            block = unpack_rgb(packed)
        else:  # the native turn is one copy, numpy's a view copied once
            turned = (
                turner(block, None, flip, rot90, None, None) if native else turn(block, flip, rot90)
            )
            block = np.ascontiguousarray(turned)
            block = block if color is None else color.apply(block)
        return block if gains is None else apply_gains(block, *gains)

    return finish


class RegionSampler:
    """Draws regions uniformly among the positions where they fit, one RNG stream per run.

    Each step draws `count` regions in a fixed order; with data-parallel ranks, rank r takes
    its share of that order, so K ranks and one process accumulating K regions see the same.
    """

    def __init__(
        self,
        slide_hws: list[tuple[int, int]],
        region_hw: tuple[int, int],
        seed: int,
        augment: bool = True,
        pad: bool = True,
        color_jitter: float = 0.0,
        illumination: float = 0.0,
    ):
        self.slide_hws, self.region_hw, self.augment = slide_hws, region_hw, augment
        self.color_jitter, self.illumination = color_jitter, illumination
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._warned: set[int] = set()
        fits = [i for i, (h, w) in enumerate(slide_hws) if h >= region_hw[0] and w >= region_hw[1]]
        self.eligible = list(range(len(slide_hws))) if pad else fits
        if not self.eligible:
            largest = max(slide_hws, key=lambda hw: hw[0] * hw[1])
            raise ValueError(
                f"region {region_hw[0]}x{region_hw[1]} px (HxW) is larger than every slide "
                f"(largest {largest[0]}x{largest[1]}); lower --region or drop --no-pad"
            )

    def draw(self, count: int) -> list[Region]:
        return [self._one() for _ in range(count)]

    def _one(self) -> Region:
        slide = self.eligible[int(self.rng.integers(len(self.eligible)))]
        h, w = self.slide_hws[slide]
        rh, rw = min(self.region_hw[0], h), min(self.region_hw[1], w)
        if (rh, rw) != self.region_hw and slide not in self._warned:
            self._warned.add(slide)
            log.warning(
                "slide %d is %dx%d px (HxW), smaller than the region: using %dx%d",
                slide,
                h,
                w,
                rh,
                rw,
            )
        y0 = int(self.rng.integers(h - rh + 1))
        x0 = int(self.rng.integers(w - rw + 1))
        flip, rot90 = False, 0
        if self.augment:
            flip, rot90 = bool(self.rng.integers(2)), int(self.rng.integers(4))
        color = None
        if self.augment and self.color_jitter > 0:
            color = draw_jitter(self.rng, self.color_jitter)
        light = None  # drawn after the colour, and only when on: older runs keep their stream
        if self.augment and self.illumination > 0:
            light = draw_illumination(self.rng, self.illumination)
        return Region(slide, (y0, x0), (rh, rw), flip, rot90, color, light)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state
