"""Tissue mask sources: a mask image or the Otsu saturation baseline (GeoJSON: geojson.py).

Each source is a small class with `read(box) -> (h, w) uint8 0/1` on the slide's pixel grid,
so masks are produced chunk by chunk like everything else.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Box
from gigamlx.slide import OTSU_DEFINITION, OTSU_FIT_MAX_PIXELS
from gigamlx.slide.pyramid import chunk_boxes

log = logging.getLogger(__name__)
__all__ = ["OTSU_DEFINITION", "ImageMask", "OtsuMask", "otsu_fit_level", "otsu_threshold"]


class MaskError(ValueError):
    """A mask input that does not fit the slide or is not a tissue mask."""


class MaskSource(Protocol):
    image_hw: tuple[int, int]

    def read(self, box: Box) -> np.ndarray: ...


class ImageMask:
    """A mask image (TIFF, PNG, ...) on the slide grid; any non-zero pixel is tissue.

    TIFFs are read tile by tile through tifffile; other formats are decoded whole by Pillow
    (H*W bytes), so prefer a tiled TIFF for gigapixel masks.
    """

    def __init__(self, path: str | os.PathLike, image_hw: tuple[int, int]):
        self.path, self.image_hw = Path(path), tuple(image_hw)
        self._array = self._open()
        mask_hw = tuple(self._array.shape[:2])
        if mask_hw != self.image_hw:
            raise MaskError(
                f"mask {self.path} is {mask_hw[0]}x{mask_hw[1]} (HxW) but the slide level is "
                f"{self.image_hw[0]}x{self.image_hw[1]}; they must be on the same pixel grid"
            )

    def _open(self):
        if self.path.suffix.lower() in (".tif", ".tiff"):
            import tifffile
            import zarr

            return zarr.open(tifffile.imread(str(self.path), aszarr=True, level=0), mode="r")
        from PIL import Image

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # masks are gigapixel
        try:
            with Image.open(self.path) as image:
                return np.asarray(image)
        finally:
            Image.MAX_IMAGE_PIXELS = limit

    def read(self, box: Box) -> np.ndarray:
        """(h, w) uint8 0/1 for `box`; 0 outside the image."""
        block = read_window(self._array, box)
        if block.ndim == 3:
            block = block.any(axis=2)
        return (block != 0).view(np.uint8)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of (..., 3) uint8 RGB as uint8 0..255: (max - min) / max."""
    hi = rgb.max(axis=-1).astype(np.uint16)
    lo = rgb.min(axis=-1).astype(np.uint16)
    return ((hi - lo) * 255 // np.maximum(hi, 1)).astype(np.uint8)


def saturation_histogram(image, chunk_px: int = 1024, step: int = 1) -> np.ndarray:
    """256-bin histogram of the saturation of an (H, W, 3) array, read chunk by chunk.

    Args:
        image: (H, W, 3) uint8, any sliceable array (a low-res pyramid level is enough).
        step: sample every `step`-th row and column (a subsampled pass).
    """
    hist = np.zeros(256, np.int64)
    chunk_px = max(step, chunk_px // step * step)
    for box in chunk_boxes(tuple(image.shape[:2]), chunk_px):
        block = np.asarray(image[box.y0 : box.y1, box.x0 : box.x1])[::step, ::step]
        hist += np.bincount(saturation(block).ravel(), minlength=256)
    return hist


def otsu_threshold(hist: np.ndarray, source: str = "image") -> int:
    """Otsu's threshold t of a 256-bin histogram: class 1 is values > t.

    Where several t tie (empty bins between two modes), the middle one: a two-valued image
    splits halfway, not at its lower value.

    Raises:
        MaskError: fewer than two distinct values (e.g. a greyscale slide: saturation 0).
    """
    if np.count_nonzero(hist) < 2:
        value = int(np.flatnonzero(hist)[0]) if hist.any() else 0
        raise MaskError(
            f"{source}: saturation is {value} everywhere (a greyscale or blank slide?), so "
            "Otsu on saturation cannot tell tissue from background; give --mask or --geojson"
        )
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between = np.where(np.isfinite(between), between, -1.0)
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return int(best[(len(best) - 1) // 2])


def otsu_fit_level(level_hws: list[tuple[int, int]], max_pixels: int = OTSU_FIT_MAX_PIXELS):
    """(level, step): the finest level with at most `max_pixels`, read every `step`-th pixel.

    The one definition of where the Otsu threshold is fitted (ingest --otsu and
    eval --baseline otsu both call it on the store's own pyramid).
    """
    for n, (h, w) in enumerate(level_hws):
        if h * w <= max_pixels:
            return n, 1
    h, w = level_hws[-1]
    return len(level_hws) - 1, int(np.ceil(np.sqrt(h * w / max_pixels)))


class OtsuMask:
    """Classical baseline: tissue where the (box-smoothed) HSV saturation exceeds Otsu's t.

    Pale tissue is missed and saturated pen marks are kept: it is a baseline, not truth.
    """

    def __init__(self, image, threshold: int, smooth_px: int = 4):
        self.image, self.threshold, self.smooth_px = image, threshold, smooth_px
        self.image_hw = tuple(image.shape[:2])

    @classmethod
    def fit(cls, levels: list, smooth_px: int = 4, source: str = "image") -> OtsuMask:
        """Fit the threshold on the level `otsu_fit_level` picks; apply on `levels[0]`.

        Args:
            levels: (H, W, 3) uint8 array-likes of one pyramid, finest first.
            source: the slide, named in errors.
        """
        fit_level, step = otsu_fit_level([tuple(a.shape[:2]) for a in levels])
        hist = saturation_histogram(levels[fit_level], step=step)
        threshold = otsu_threshold(hist, source)
        log.info("Otsu saturation threshold %d (fitted on level %d)", threshold, fit_level)
        return cls(levels[0], threshold, smooth_px)

    def read(self, box: Box) -> np.ndarray:
        """(h, w) uint8 0/1 for `box`, smoothing with a halo read across chunk borders."""
        r = self.smooth_px
        grown = Box(box.y0 - r, box.x0 - r, box.y1 + r, box.x1 + r)
        sat = saturation(read_window(self.image, grown)).astype(np.int64)
        if r > 0:  # (2r+1)^2 box mean through an integral image
            integral = np.pad(sat.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            k, (h, w) = 2 * r + 1, box.hw
            total = integral[k:, k:] - integral[:h, k:] - integral[k:, :w] + integral[:h, :w]
            sat = total / (k * k)
        return (sat > self.threshold).view(np.uint8)
