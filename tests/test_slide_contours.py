"""Boundary tracing: polygons with holes that rasterise back to the mask exactly and that
shapely accepts as valid (what QuPath's JTS needs to import them)."""

import numpy as np
import pytest

from gigamlx.core.geometry import Box
from gigamlx.slide.contours import mask_polygons, signed_area, trace_rings
from gigamlx.slide.polygons import rasterize_polygon


def _fill(polygons, hw) -> np.ndarray:
    out = np.zeros(hw, bool)
    for rings in polygons:
        inside = rasterize_polygon([r.astype(np.float64) for r in rings], Box(0, 0, *hw))
        assert not (out & inside).any()  # pieces never overlap
        out |= inside
    return out


def test_ring_with_hole_and_island():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False
    mask[4, 4] = True
    polygons = mask_polygons(mask)
    assert [len(p) for p in polygons] == [2, 1]
    outer, hole = polygons[0]
    assert outer.tolist() == [[1, 1], [8, 1], [8, 8], [1, 8], [1, 1]]
    assert signed_area(outer) == 49 and signed_area(hole) == -9
    np.testing.assert_array_equal(_fill(polygons, mask.shape), mask)


def test_diagonal_pixels_are_separate_pieces():
    mask = np.array([[1, 0], [0, 1]], bool)
    assert len(mask_polygons(mask)) == 2
    assert trace_rings(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize("seed", range(8))
def test_random_masks_round_trip_and_are_valid(seed):
    rng = np.random.default_rng(seed)
    hw = tuple(rng.integers(5, 60, 2))
    mask = rng.random(hw) < rng.uniform(0.2, 0.8)
    polygons = mask_polygons(mask)
    np.testing.assert_array_equal(_fill(polygons, hw), mask)
    shapely = pytest.importorskip("shapely")
    for rings in polygons:
        polygon = shapely.Polygon(rings[0], rings[1:])
        assert polygon.is_valid, shapely.is_valid_reason(polygon)
    area = sum(shapely.Polygon(p[0], p[1:]).area for p in polygons)
    assert area == pytest.approx(mask.sum(), abs=1e-3 * mask.size)  # saddle cuts: 5e-5 px²
