"""Tissue mask sources: a mask image, GeoJSON polygons (QuPath), or an Otsu saturation baseline.

Each source is a small class with `read(box) -> (h, w) uint8 0/1` on the slide's pixel grid,
so masks are produced chunk by chunk like everything else.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Box
from gigamlx.slide.store import chunk_boxes

log = logging.getLogger(__name__)


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


def _ring(ring, source: str, kind: str) -> np.ndarray:
    """One ring as (n, 2) float64 x, y; MaskError naming the file if it is not a point list."""
    try:
        points = np.asarray(ring, np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or points.ndim != 2 or points.shape[1] < 2:
        raise MaskError(
            f"{source}: a {kind} ring is not a list of [x, y] points (got {str(ring)[:40]})"
        )
    return points[:, :2]


def _rings(geometry, source: str) -> list[list[np.ndarray]]:
    """Polygons (each a list of (n, 2) x,y rings, exterior first) of one GeoJSON geometry."""
    kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
    if kind in ("Polygon", "MultiPolygon"):
        coordinates = geometry.get("coordinates")
        if not isinstance(coordinates, list):
            raise MaskError(f"{source}: a {kind} without a list of coordinates")
        polygons = [coordinates] if kind == "Polygon" else coordinates
        if not all(isinstance(p, list) for p in polygons):
            raise MaskError(f"{source}: a MultiPolygon's coordinates are not lists of rings")
        return [[_ring(r, source, kind) for r in p] for p in polygons]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _rings(g, source)]
    raise MaskError(f"{source}: GeoJSON geometry {kind!r} is not a Polygon or MultiPolygon")


def parse_geojson(data, source: str = "GeoJSON") -> list[list[np.ndarray]]:
    """Polygons of a FeatureCollection, Feature, bare geometry, or a list of those.

    Returns:
        One list of rings per polygon; rings are (n, 2) float64 (x, y) pixel coordinates.
    """
    if isinstance(data, list):
        return [p for item in data for p in parse_geojson(item, source)]
    if not isinstance(data, dict):
        raise MaskError(f"{source}: expected a GeoJSON object or list, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "FeatureCollection":
        return parse_geojson(data.get("features", []), source)
    if kind == "Feature":
        if data.get("geometry") is None:
            log.warning("%s: skipping a feature without geometry", source)
            return []
        return _rings(data["geometry"], source)
    return _rings(data, source)


def _toggles(ring: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Row and first column of every edge crossing of the rows' pixel centers in `box`.

    A pixel is inside when an odd number of crossings lie left of (or on) its center.
    """
    x0, y0 = ring[:-1, 0], ring[:-1, 1]
    x1, y1 = ring[1:, 0], ring[1:, 1]
    if len(ring) and not np.array_equal(ring[0], ring[-1]):  # close the ring
        x0, y0 = np.append(x0, ring[-1, 0]), np.append(y0, ring[-1, 1])
        x1, y1 = np.append(x1, ring[0, 0]), np.append(y1, ring[0, 1])
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo - 0.5), box.y0, box.y1).astype(np.int64)
    stop = np.clip(np.ceil(hi - 0.5), box.y0, box.y1).astype(np.int64)
    count = stop - first  # rows with lo <= y + 0.5 < hi; 0 for horizontal edges
    edge = np.repeat(np.arange(len(count)), count)
    rows = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count)
    yc = rows + 0.5
    xc = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    cols = np.clip(np.ceil(xc - 0.5) - box.x0, 0, box.hw[1]).astype(np.int64)
    return rows - box.y0, cols


def rasterize_polygon(rings: list[np.ndarray], box: Box) -> np.ndarray:
    """Even-odd fill (holes = interior rings) of one polygon at pixel centers in `box`.

    Returns:
        (h, w) bool, pixel (y, x) covering [y, y+1) x [x, x+1) in slide coordinates.
    """
    h, w = box.hw
    parts = [_toggles(ring, box) for ring in rings if len(ring) >= 3]
    if not parts:
        return np.zeros((h, w), bool)
    rows = np.concatenate([r for r, _ in parts])
    cols = np.concatenate([c for _, c in parts])
    diff = np.bincount(rows * (w + 1) + cols, minlength=h * (w + 1)).reshape(h, w + 1)
    return (np.cumsum(diff[:, :w], axis=1) & 1).astype(bool)


def _read_json(path: Path):
    """Parsed JSON of `path`; MaskError naming the file and the place of a syntax error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise MaskError(f"{path}: not a GeoJSON text file ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise MaskError(
            f"{path}: not valid JSON at line {error.lineno} column {error.colno} ({error.msg})"
        ) from None


class GeoJsonMask:
    """GeoJSON polygons (QuPath export) rasterized per box; coordinates are level-0 pixels."""

    def __init__(self, path_or_data, image_hw: tuple[int, int], downsample: float = 1.0):
        source = str(path_or_data) if isinstance(path_or_data, str | Path) else "GeoJSON"
        data = path_or_data
        if isinstance(path_or_data, str | Path):
            data = _read_json(Path(path_or_data))
        self.image_hw = tuple(image_hw)
        self.polygons = [[r / downsample for r in p] for p in parse_geojson(data, source)]
        if not self.polygons:
            raise MaskError(f"{source}: no polygons found")
        self._bounds = [self._bbox(p) for p in self.polygons]

    @staticmethod
    def _bbox(rings: list[np.ndarray]) -> Box:
        points = np.concatenate(rings)
        y0, x0 = np.floor(points[:, 1].min()), np.floor(points[:, 0].min())
        y1, x1 = np.ceil(points[:, 1].max()) + 1, np.ceil(points[:, 0].max()) + 1
        return Box(int(y0), int(x0), int(y1), int(x1))

    def read(self, box: Box) -> np.ndarray:
        """(h, w) uint8 0/1: the union of all polygons over `box`."""
        out = np.zeros(box.hw, bool)
        for rings, bounds in zip(self.polygons, self._bounds, strict=True):
            if (
                bounds.y0 < box.y1
                and box.y0 < bounds.y1
                and bounds.x0 < box.x1
                and box.x0 < bounds.x1
            ):
                out |= rasterize_polygon(rings, box)
        return out.view(np.uint8)


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
    return int(np.nanargmax(np.where(np.isfinite(between), between, np.nan)))


class OtsuMask:
    """Classical baseline: tissue where the (box-smoothed) HSV saturation exceeds Otsu's t.

    Pale tissue is missed and saturated pen marks are kept: it is a baseline, not truth.
    """

    def __init__(self, image, threshold: int, smooth_px: int = 4):
        self.image, self.threshold, self.smooth_px = image, threshold, smooth_px
        self.image_hw = tuple(image.shape[:2])

    @classmethod
    def fit(
        cls, image, fit_image=None, smooth_px: int = 4, step: int = 4, source: str = "image"
    ) -> OtsuMask:
        """Fit the threshold on `fit_image` (e.g. a low-res level), else on every `step`-th
        pixel of `image`; apply at full resolution on `image` (H, W, 3). `source` names the
        slide in errors."""
        hist = saturation_histogram(fit_image) if fit_image is not None else None
        if hist is None:
            hist = saturation_histogram(image, step=step)
        threshold = otsu_threshold(hist, source)
        log.info("Otsu saturation threshold: %d", threshold)
        return cls(image, threshold, smooth_px)

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
