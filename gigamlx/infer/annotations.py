"""The thresholded prediction as QuPath annotations: a GeoJSON FeatureCollection.

One feature, a Polygon or MultiPolygon (holes kept) of everything with p >= threshold, in
level-0 pixel coordinates of the source slide, `objectType: "annotation"` and a "Tissue"
class with its colour, so QuPath's File > Import objects (or drag and drop) takes it whole.
The outline is traced on the finest level of the probability pyramid with at most
`MAX_TRACE_PIXELS` pixels (level 0 for slides up to 4096x4096), so it follows that level's
pixel edges exactly; re-ingesting it gives that level's thresholded map, upsampled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from gigamlx.runs.files import write_text_atomic
from gigamlx.slide.contours import mask_polygons
from gigamlx.slide.pyramid import chunk_boxes

MAX_TRACE_PIXELS = 4096 * 4096
CLASS_NAME = "Tissue"
CLASS_RGB = (0, 190, 90)


def threshold_u8(threshold: float) -> int:
    """The uint8 cut-off of `p >= threshold` for maps stored as round(255 p) (as `eval` reads)."""
    return math.ceil(255 * threshold)


def trace_level(level_hws: list[tuple[int, int]], max_pixels: int = MAX_TRACE_PIXELS) -> int:
    """The finest level with at most `max_pixels` pixels (the coarsest if none is)."""
    return next(
        (n for n, (h, w) in enumerate(level_hws) if h * w <= max_pixels), len(level_hws) - 1
    )


def _thresholded(array, cut_u8: int, block_px: int = 2048) -> np.ndarray:
    """(H, W) bool of array >= cut_u8, read block by block."""
    out = np.zeros(tuple(array.shape), bool)
    for box in chunk_boxes(tuple(array.shape), block_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = (
            np.asarray(array[box.y0 : box.y1, box.x0 : box.x1]) >= cut_u8
        )
    return out


def _to_level0(ring: np.ndarray, scale_yx: tuple[float, float], hw0: tuple[int, int]) -> list:
    """(n, 2) x,y lattice ring of a coarse level -> level-0 pixel coordinates, clipped."""
    x = np.minimum(ring[:, 0] * scale_yx[1], hw0[1])
    y = np.minimum(ring[:, 1] * scale_yx[0], hw0[0])
    return [[_number(a), _number(b)] for a, b in zip(x.tolist(), y.tolist(), strict=True)]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


def prediction_features(
    prob_levels: list,
    threshold: float,
    level0_hw: tuple[int, int],
    properties: dict | None = None,
    cut_u8: int | None = None,
) -> dict:
    """GeoJSON FeatureCollection of the tissue in a probability pyramid (or a 0/1 mask's).

    Args:
        prob_levels: (H, W) uint8 round(255 p) arrays, finest first (the prediction's grid).
        threshold: p >= threshold is tissue.
        level0_hw: (H, W) of the source slide's level 0, the coordinates QuPath uses.
        properties: extra properties (provenance) stored with the feature.
        cut_u8: the uint8 cut instead of `threshold`'s (1 for a 0/1 label pyramid).
    """
    level = trace_level([tuple(a.shape) for a in prob_levels])
    cut = threshold_u8(threshold) if cut_u8 is None else cut_u8
    mask = _thresholded(prob_levels[level], cut)
    scale_yx = (level0_hw[0] / prob_levels[0].shape[0], level0_hw[1] / prob_levels[0].shape[1])
    scale_yx = (scale_yx[0] * 2**level, scale_yx[1] * 2**level)
    polygons = [[_to_level0(r, scale_yx, level0_hw) for r in p] for p in mask_polygons(mask)]
    features = []
    if polygons:
        geometry = (
            {"type": "Polygon", "coordinates": polygons[0]}
            if len(polygons) == 1
            else {"type": "MultiPolygon", "coordinates": polygons}
        )
        qupath = {
            "objectType": "annotation",
            "classification": {"name": CLASS_NAME, "color": list(CLASS_RGB)},
            "isLocked": False,
        }
        extra = {"gigamlx": (properties or {}) | {"traced_level": level}}
        features.append({"type": "Feature", "geometry": geometry, "properties": qupath | extra})
    # a GeoJSON foreign member: marks predict's output (--overwrite replaces only its own)
    marker = {"kind": "prediction", "format": 1}
    return {"type": "FeatureCollection", "gigamlx": marker, "features": features}


def write_geojson(collection: dict, path: str | os.PathLike) -> Path:
    """Write a FeatureCollection atomically (a hidden temporary file renamed into place)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(collection, separators=(",", ":")))
    return path
