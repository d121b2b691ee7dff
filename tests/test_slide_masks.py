"""Mask sources: mask images, GeoJSON polygons (hand-checked), and the Otsu baseline."""

import json

import numpy as np
import pytest
import tifffile

from gigamlx.core.geometry import Box
from gigamlx.slide.geojson import GeoJsonMask
from gigamlx.slide.masks import (
    ImageMask,
    MaskError,
    OtsuMask,
    otsu_fit_level,
    otsu_threshold,
    saturation,
)
from gigamlx.slide.pyramid import chunk_boxes
from gigamlx.synth.render import render
from gigamlx.synth.scene import make_scene


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _chunked(source, hw, chunk_px):
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = source.read(box)
    return out


def test_geojson_square_with_hole():
    polygon = {"type": "Polygon", "coordinates": [_square(2, 1, 10, 9), _square(4, 3, 7, 6)]}
    mask = GeoJsonMask(
        {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": polygon}]},
        (12, 12),
    )
    expected = np.zeros((12, 12), np.uint8)
    expected[1:9, 2:10] = 1  # pixel (y, x) is in when its center (y + .5, x + .5) is
    expected[3:6, 4:7] = 0
    np.testing.assert_array_equal(mask.read(Box(0, 0, 12, 12)), expected)
    np.testing.assert_array_equal(_chunked(mask, (12, 12), 5), expected)


def test_geojson_multipolygon_and_bare_list():
    multi = {"type": "MultiPolygon", "coordinates": [[_square(0, 0, 3, 2)], [_square(5, 4, 8, 8)]]}
    triangle = {"type": "Polygon", "coordinates": [[[0, 10], [4, 10], [0, 14]]]}  # unclosed ring
    mask = GeoJsonMask([multi, {"type": "Feature", "geometry": triangle}], (16, 10))
    got = mask.read(Box(0, 0, 16, 10))
    expected = np.zeros((16, 10), np.uint8)
    expected[0:2, 0:3] = 1
    expected[4:8, 5:8] = 1
    for y in range(10, 14):  # center inside iff (x + .5) + (y + .5) < 14; on the edge = out
        expected[y, : 13 - y] = 1
    np.testing.assert_array_equal(got, expected)


def test_geojson_overlapping_hole_does_not_erase_other_polygon():
    donut = {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10), _square(2, 2, 8, 8)]}
    inner = {"type": "Polygon", "coordinates": [_square(4, 4, 6, 6)]}
    mask = GeoJsonMask([donut, inner], (10, 10)).read(Box(0, 0, 10, 10))
    assert mask[5, 5] == 1 and mask[3, 3] == 0 and mask[1, 1] == 1


def test_geojson_chunked_equals_whole_and_offsets(tmp_path):
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
    radius = rng.uniform(60, 140, 40)
    ring = np.stack([200 + radius * np.cos(angles), 150 + radius * np.sin(angles)], 1).tolist()
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    mask = GeoJsonMask(tmp_path / "p.geojson", (300, 400))
    whole = mask.read(Box(0, 0, 300, 400))
    assert 0.1 < whole.mean() < 0.6
    np.testing.assert_array_equal(_chunked(mask, (300, 400), 64), whole)
    np.testing.assert_array_equal(mask.read(Box(-20, -20, 10, 10))[20:, 20:], whole[:10, :10])


def test_geojson_unknown_geometry_and_empty_clear_errors(tmp_path):
    path = tmp_path / "bad.geojson"
    feature = {"type": "Feature", "geometry": {"type": "Circle", "coordinates": [1, 2]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(MaskError, match="bad.geojson.*'Circle'.*not a Polygon"):
        GeoJsonMask(path, (10, 10))
    with pytest.raises(MaskError, match="no polygons"):
        GeoJsonMask({"type": "FeatureCollection", "features": []}, (10, 10))


def test_image_mask_tiff_and_shape_mismatch(tmp_path):
    mask = (np.random.default_rng(0).random((300, 500)) > 0.5).astype(np.uint8) * 7
    tifffile.imwrite(tmp_path / "m.tif", mask, tile=(64, 64))
    source = ImageMask(tmp_path / "m.tif", (300, 500))
    np.testing.assert_array_equal(_chunked(source, (300, 500), 128), (mask > 0).astype(np.uint8))
    with pytest.raises(MaskError, match=r"m.tif is 300x500 .* slide level is 301x500"):
        ImageMask(tmp_path / "m.tif", (301, 500))


def test_otsu_threshold_bimodal():
    hist = np.zeros(256, np.int64)
    hist[10:20] = 100
    hist[150:170] = 50
    assert 19 <= otsu_threshold(hist) < 150
    assert saturation(np.array([[[255, 0, 0], [0, 0, 0], [200, 100, 100]]], np.uint8)).tolist() == [
        [255, 0, 127]
    ]


def test_otsu_mask_separates_synthetic_slide():
    # seed 24 has no pale or faint piece; those (other seeds) are the baseline's known weakness
    rgb, truth = render(make_scene((512, 1024), 24), np.arange(512), np.arange(1024))
    source = OtsuMask.fit([rgb, rgb[::4, ::4]])
    pred = _chunked(source, (512, 1024), 200)
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.85, dice
    np.testing.assert_array_equal(pred, source.read(Box(0, 0, 512, 1024)))


def test_otsu_fit_level_is_finest_small_enough_level():
    hws = [(20000, 80000), (10000, 40000), (5000, 20000), (2500, 10000)]
    assert otsu_fit_level(hws) == (3, 2)  # 2500x10000 = 25 Mpx > 4096²: every 2nd pixel
    assert otsu_fit_level(hws, max_pixels=30_000_000) == (3, 1)
    assert otsu_fit_level([(8192, 8192), (4096, 4096), (2048, 2048)]) == (1, 1)
    level, step = otsu_fit_level([(20000, 80000)])
    assert level == 0 and 20000 * 80000 / step**2 <= 4096 * 4096 < 20000 * 80000 / (step - 1) ** 2
