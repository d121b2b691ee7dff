"""QuPath GeoJSON as a tissue mask: classes, Ignore*, holes, lines and points, checked against
shapely at pixel centres, on a QuPath-like export and on random overlapping polygons."""

import json
import logging

import numpy as np
import pytest

from gigamlx.slide import polygons
from gigamlx.slide.geojson import GeoJsonMask
from gigamlx.slide.masks import MaskError
from gigamlx.slide.pyramid import chunk_boxes

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


def _star(rng, cx: float, cy: float, radius: float) -> list[list[float]]:
    """A simple star-shaped ring around (cx, cy); closed or not, as exporters differ."""
    n = int(rng.integers(6, 14))
    step = 2 * np.pi / n  # angle gaps under 90 degrees: the ring holds the disc of radius/2
    angles = np.arange(n) * step + rng.uniform(0, 0.5 * step, n)
    r = radius * rng.uniform(0.7, 1.0, n)
    ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).tolist()
    return ring + ring[:1] if rng.random() < 0.7 else ring


def _random_export(seed: int, count: int = 150):
    """Overlapping polygons, holes, MultiPolygons, Ignore* and polygons past the edges; and
    the expected mask by shapely (each part a polygon: tissue parts united, Ignore* removed)."""
    shapely = pytest.importorskip("shapely")
    rng = np.random.default_rng(seed)
    features, keep, drop = [], [], []
    for k in range(count):
        parts = []
        for _ in range(int(rng.integers(1, 3))):  # a Polygon or a two-part MultiPolygon
            cx, cy = rng.uniform(-15, HW[1] + 15), rng.uniform(-15, HW[0] + 15)
            radius = rng.uniform(1, 25)
            rings = [_star(rng, cx, cy, radius)]
            if rng.random() < 0.4:
                rings.append(_star(rng, cx, cy, 0.4 * radius))  # a hole
            parts.append(rings)
        name = "Ignore*" if k % 7 == 3 else ["Tumor", None][int(rng.integers(2))]
        (drop if name == "Ignore*" else keep).extend(
            shapely.Polygon(rings[0], rings[1:]) for rings in parts
        )
        kind, coordinates = ("Polygon", parts[0]) if len(parts) == 1 else ("MultiPolygon", parts)
        features.append(_feature({"type": kind, "coordinates": coordinates}, name))
    area = shapely.union_all(keep).difference(shapely.union_all(drop))
    yy, xx = np.mgrid[: HW[0], : HW[1]] + 0.5
    return {"type": "FeatureCollection", "features": features}, shapely.contains_xy(area, xx, yy)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dense_fraction", [0.0, 2.0], ids=["running-sum", "pixel-by-pixel"])
def test_random_polygons_match_shapely_at_pixel_centres(seed, dense_fraction, monkeypatch):
    monkeypatch.setattr(polygons, "DENSE_FRACTION", dense_fraction)  # each of the two fills
    data, expected = _random_export(seed)
    mask = GeoJsonMask(data, HW)
    for chunk_px in (37, 200):
        np.testing.assert_array_equal(_read(mask, chunk_px), expected)
    assert 0.2 < expected.mean() < 0.9  # overlaps, holes and Ignore* all leave their mark
