"""QuPath GeoJSON as a tissue mask: classes, Ignore*, holes, lines and points, checked against
shapely at pixel centres; per-bounding-box filling equals filling the whole box."""

import json
import logging

import numpy as np
import pytest

from gigamlx.core.geometry import Box
from gigamlx.slide.geojson import GeoJsonMask, PolygonSet, rasterize_polygon
from gigamlx.slide.masks import MaskError
from gigamlx.slide.store import chunk_boxes

HW = (120, 160)


def _feature(geometry, name=None):
    properties = {"objectType": "annotation"}
    if name:
        properties["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _qupath_export():
    tumor = {"type": "Polygon", "coordinates": [_ring(10, 10, 70.5, 60), _ring(30, 25, 50, 45)]}
    loose = {
        "type": "MultiPolygon",
        "coordinates": [[[[90, 10], [150, 30], [100, 70], [90, 10]]], [_ring(5, 80, 40, 110)]],
    }
    features = [
        _feature(tumor, "Tumor"),
        _feature(loose),  # unclassified
        _feature({"type": "Polygon", "coordinates": [_ring(60, 40, 120, 100)]}, "Stroma"),
        _feature({"type": "Polygon", "coordinates": [_ring(0, 50, 100.25, 65)]}, "Ignore*"),
        _feature({"type": "LineString", "coordinates": [[0, 0], [100, 100]]}, "Tumor"),
        _feature({"type": "Point", "coordinates": [5, 5]}),
        _feature({"type": "MultiPoint", "coordinates": [[5, 5], [6, 6]]}),
        _feature({"type": "MultiLineString", "coordinates": [[[0, 0], [9, 9]]]}),
    ]
    return {"type": "FeatureCollection", "features": features}


def _shapely_mask(data, tissue_classes=None) -> np.ndarray:
    """The expected mask, by shapely: union(tissue) - union(Ignore*) at pixel centres."""
    shapely = pytest.importorskip("shapely")
    keep, drop = [], []
    for f in data["features"]:
        shape = shapely.geometry.shape(f["geometry"])
        if shape.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        name = f["properties"].get("classification", {}).get("name")
        if name and name.startswith("Ignore"):
            drop.append(shape)
        elif tissue_classes is None or (name or "unclassified") in tissue_classes:
            keep.append(shape)
    area = shapely.union_all(keep).difference(shapely.union_all(drop))
    yy, xx = np.mgrid[: HW[0], : HW[1]] + 0.5
    return shapely.contains_xy(area, xx, yy)


def _read(source, chunk_px=48) -> np.ndarray:
    out = np.zeros(HW, np.uint8)
    for box in chunk_boxes(HW, chunk_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = source.read(box)
    return out.astype(bool)


def test_qupath_export_classes_holes_ignore_lines_points(tmp_path, caplog):
    data = _qupath_export()
    path = tmp_path / "export.geojson"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        mask = GeoJsonMask(path, HW)
    assert "skipped 4 annotation(s) without area" in caplog.text
    assert "1 LineString, 1 MultiLineString, 1 MultiPoint, 1 Point" in caplog.text
    expected = _shapely_mask(data)
    np.testing.assert_array_equal(_read(mask), expected)
    assert not expected[55, 20] and expected[20, 20] and not expected[35, 40]  # ignore, hole


@pytest.mark.parametrize("classes", [["Tumor"], ["tumor", "unclassified"], ["Stroma"]])
def test_tissue_class_selects(classes):
    data = _qupath_export()
    mask = GeoJsonMask(data, HW, tissue_classes=classes)
    expected = _shapely_mask(data, {c.capitalize() if c != "unclassified" else c for c in classes})
    np.testing.assert_array_equal(_read(mask), expected)


def test_tissue_class_absent_names_the_classes():
    with pytest.raises(MaskError, match=r"no polygons of class Necrosis.*'Ignore\*', 'Stroma'"):
        GeoJsonMask(_qupath_export(), HW, tissue_classes=["Necrosis"])
    lines_only = {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0]]}}
    with pytest.raises(MaskError, match="no polygons"):
        GeoJsonMask(lines_only, HW)


def test_per_bbox_fill_equals_whole_box_fill():
    rng = np.random.default_rng(0)
    polygons = []
    for _ in range(60):
        cx, cy, r = rng.uniform(-10, 170), rng.uniform(-10, 130), rng.uniform(1, 15)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 9)))
        ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)
        polygons.append([np.concatenate([ring, ring[:1]])])
    for box in (Box(0, 0, *HW), Box(17, 33, 90, 101)):
        whole = np.zeros(box.hw, bool)
        for rings in polygons:
            whole |= rasterize_polygon(rings, box)
        fast = np.zeros(box.hw, bool)
        PolygonSet(polygons).fill(fast, box, True)
        np.testing.assert_array_equal(fast, whole)
        assert whole.any()
