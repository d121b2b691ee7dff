"""Polygons filled at pixel centres: one vectorised even-odd scanline fill for many polygons.

Pixel (y, x) covers [y, y+1) x [x, x+1) and is inside a polygon when its centre is, by the
even-odd rule over all the polygon's rings (holes are interior rings); a centre exactly on an
edge is inside on a left edge and outside on a right one. A set of polygons is their union.
"""

from __future__ import annotations

import numpy as np

from gigamlx.core.geometry import Box

# spans covering more of a box than this are filled by one running sum over the box, fewer
# pixel by pixel (nuclei cover a few percent of a chunk, a tissue outline most of it)
DENSE_FRACTION = 0.25


def _ranges(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, value): each integer of [start[i], stop[i]) with its i (start <= stop)."""
    count = stop - start
    owner = np.repeat(np.arange(len(count)), count)
    offset = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    return owner, start[owner] + offset


class PolygonSet:
    """Polygons as one edge table, filled into any box in a few array passes.

    Each box costs its polygons' edge crossings (bounding boxes pick the polygons), not a Python
    step per polygon: 20,000 nucleus-sized polygons fill as fast as a few big ones
    (scripts/bench_geojson.py).

    Args:
        polygons: each a list of (n, 2) float64 (x, y) rings in pixels, exterior first; rings
            of fewer than 3 points are dropped. A ring need not repeat its first point.
    """

    def __init__(self, polygons: list[list[np.ndarray]]):
        rings = [(i, r[:, :2]) for i, rings in enumerate(polygons) for r in rings if len(r) >= 3]
        owner = np.array([i for i, _ in rings], np.int64)
        lengths = np.array([len(r) for _, r in rings], np.int64)
        points = np.concatenate([r for _, r in rings]) if rings else np.zeros((0, 2))
        self.count = len(polygons)
        self.bounds = _bounds(points, np.repeat(owner, lengths), self.count)
        self._edges(points, lengths, np.repeat(owner, lengths))

    def _edges(self, points: np.ndarray, lengths: np.ndarray, polygon: np.ndarray) -> None:
        """Every edge (closing ones included) that crosses a row of pixel centres."""
        ends = np.cumsum(lengths)
        following = np.arange(1, len(points) + 1)
        following[ends - 1] = ends - lengths  # the closing edge; zero-length if already closed
        (x0, y0), (x1, y1) = points.T, points[following].T
        first = np.ceil(np.minimum(y0, y1) - 0.5).astype(np.int64)
        stop = np.ceil(np.maximum(y0, y1) - 0.5).astype(np.int64)
        keep = stop > first  # rows y with lo <= y + 0.5 < hi; none for horizontal edges
        self.x0, self.y0, self.x1, self.y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        self.first_row, self.stop_row, self.polygon = first[keep], stop[keep], polygon[keep]
        self.edge_offsets = np.searchsorted(self.polygon, np.arange(self.count + 1))

    def _crossings(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, polygon) of every edge crossing of a pixel-centre row in `box`.

        Rows are relative to `box`; a crossing at col c toggles the pixels at c and right of it
        (c clipped to [0, w]), so a polygon left of the box toggles nothing inside it.
        """
        b = self.bounds
        hit = (b[:, 0] < box.y1) & (box.y0 < b[:, 2]) & (b[:, 1] < box.x1) & (box.x0 < b[:, 3])
        hit = np.flatnonzero(hit)
        _, edge = _ranges(self.edge_offsets[hit], self.edge_offsets[hit + 1])
        first = np.clip(self.first_row[edge], box.y0, box.y1)
        stop = np.clip(self.stop_row[edge], box.y0, box.y1)
        which, rows = _ranges(first, stop)
        edge = edge[which]
        x0, y0, x1, y1 = self.x0[edge], self.y0[edge], self.x1[edge], self.y1[edge]
        xc = x0 + (rows + 0.5 - y0) * (x1 - x0) / (y1 - y0)
        cols = np.clip(np.ceil(xc - 0.5) - box.x0, 0, box.hw[1]).astype(np.int64)
        return rows - box.y0, cols, self.polygon[edge]

    def covered(self, box: Box) -> np.ndarray:
        """(h, w) bool: pixels of `box` whose centres lie inside any of the polygons."""
        out = np.zeros(box.hw, bool)
        self.fill(out, box, True)
        return out

    def fill(self, out: np.ndarray, box: Box, value: bool) -> None:
        """Set pixels of (h, w) bool `out` (covering `box`) inside any polygon to `value`."""
        h, w = box.hw
        rows, cols, polygon = self._crossings(box)
        order = np.lexsort((cols, polygon, rows))  # each (row, polygon) run has even length
        rows, start, stop = rows[order][0::2], cols[order][0::2], cols[order][1::2]
        if (stop - start).sum() <= DENSE_FRACTION * h * w:  # few pixels: set them one by one
            span, x = _ranges(start, stop)
            out[rows[span], x] = value
            return
        at = rows * (w + 1)  # many: a running sum of +1 at each span's start, -1 at its stop
        spans = np.bincount(at + start, minlength=h * (w + 1))
        spans -= np.bincount(at + stop, minlength=h * (w + 1))
        inside = np.cumsum(spans.reshape(h, w + 1)[:, :w], axis=1) > 0
        if value:
            out |= inside
        else:
            out &= ~inside


def _bounds(points: np.ndarray, polygon: np.ndarray, count: int) -> np.ndarray:
    """(count, 4) int64 y0 x0 y1 x1: pixels whose centres may lie inside each polygon.

    A safe superset; empty for a polygon without a ring of 3 points.
    """
    bounds = np.zeros((count, 4), np.int64)
    if len(points):
        present, starts = np.unique(polygon, return_index=True)
        low = np.floor(np.minimum.reduceat(points, starts)).astype(np.int64)
        high = np.ceil(np.maximum.reduceat(points, starts)).astype(np.int64) + 1
        bounds[present] = np.stack([low[:, 1], low[:, 0], high[:, 1], high[:, 0]], axis=1)
    return bounds


def rasterize_polygon(rings: list[np.ndarray], box: Box) -> np.ndarray:
    """Even-odd fill (holes = interior rings) of one polygon at pixel centres in `box`.

    Returns:
        (h, w) bool, pixel (y, x) covering [y, y+1) x [x, x+1) in slide coordinates.
    """
    return PolygonSet([rings]).covered(box)
