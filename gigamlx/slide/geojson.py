"""QuPath GeoJSON annotations as a tissue mask: polygons by class, rasterised box by box.

Which annotations are tissue (QuPath writes the class as `properties.classification.name`):
by default every area annotation except classes named `Ignore*` (QuPath's "Ignore*" class,
for regions to leave out), including unclassified ones; `tissue_classes` restricts tissue to
the named classes ("unclassified" names the unclassified ones). `Ignore*` regions are always
subtracted. Lines and points have no area: they are skipped with one warning that counts them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box
from gigamlx.slide.masks import MaskError
from gigamlx.slide.polygons import PolygonSet

log = logging.getLogger(__name__)

NON_AREA = ("Point", "MultiPoint", "LineString", "MultiLineString")
UNCLASSIFIED = "unclassified"


class Annotation(NamedTuple):
    """One polygon: (n, 2) float64 (x, y) rings, exterior first, and its class name."""

    rings: list[np.ndarray]
    class_name: str | None


def class_name(properties: dict | None) -> str | None:
    """QuPath's class of a feature: `classification.name` (or a bare string); None if none."""
    value = (properties or {}).get("classification")
    if isinstance(value, dict):
        value = value.get("name")
    return str(value) if value else None


def is_ignored(name: str | None) -> bool:
    """QuPath's "Ignore*" class (and any class whose name starts with "Ignore")."""
    return bool(name) and name.lower().startswith("ignore")


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


def _polygons(geometry, source: str, skipped: Counter) -> list[list[np.ndarray]]:
    """Polygons (lists of (n, 2) x,y rings) of one geometry; non-area parts are counted."""
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
        parts = geometry.get("geometries") or []
        return [p for g in parts for p in _polygons(g, source, skipped)]
    if kind in NON_AREA:
        skipped[kind] += 1
        return []
    raise MaskError(f"{source}: GeoJSON geometry {kind!r} is not a Polygon or MultiPolygon")


def read_geojson(path: Path):
    """Parsed JSON of `path`; MaskError naming the file and the place of a syntax error."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise MaskError(f"{path}: not a GeoJSON text file ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise MaskError(
            f"{path}: not valid JSON at line {error.lineno} column {error.colno} ({error.msg})"
        ) from None


def _walk(data, source: str, skipped: Counter, name: str | None = None) -> list[Annotation]:
    if isinstance(data, list):
        return [a for item in data for a in _walk(item, source, skipped)]
    if not isinstance(data, dict):
        raise MaskError(f"{source}: expected a GeoJSON object or list, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "FeatureCollection":
        return _walk(data.get("features", []), source, skipped)
    if kind == "Feature":
        if data.get("geometry") is None:
            skipped["feature without geometry"] += 1
            return []
        return _walk(data["geometry"], source, skipped, class_name(data.get("properties")))
    return [Annotation(rings, name) for rings in _polygons(data, source, skipped)]


def parse_annotations(data, source: str = "GeoJSON") -> list[Annotation]:
    """Area annotations of a FeatureCollection, Feature, bare geometry, or a list of those.

    Lines, points and features without geometry are skipped with one counted warning.

    Raises:
        MaskError: not GeoJSON, or a geometry type that is neither an area nor a line/point.
    """
    skipped: Counter = Counter()
    annotations = _walk(data, source, skipped)
    if skipped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        log.warning(
            "%s: skipped %d annotation(s) without area (%s)", source, skipped.total(), counts
        )
    return annotations


def split_tissue(
    annotations: list[Annotation], tissue_classes: list[str] | None, source: str
) -> tuple[list[Annotation], list[Annotation]]:
    """(tissue, ignored) annotations under the rule in the module docstring.

    Raises:
        MaskError: no annotation is tissue (the message lists the classes present).
    """
    wanted = {c.lower() for c in tissue_classes} if tissue_classes else None
    tissue, ignored = [], []
    for a in annotations:
        label = (a.class_name or UNCLASSIFIED).lower()
        if is_ignored(a.class_name):
            ignored.append(a)
        elif wanted is None or label in wanted:
            tissue.append(a)
    if not tissue:
        present = sorted({a.class_name or UNCLASSIFIED for a in annotations})
        chosen = f"of class {', '.join(tissue_classes)} " if tissue_classes else ""
        raise MaskError(
            f"{source}: no polygons {chosen}found (classes present: {present or 'none'}); "
            "choose with --tissue-class"
        )
    return tissue, ignored


class GeoJsonMask:
    """GeoJSON annotations (QuPath export) rasterised per box; coordinates are level-0 pixels.

    Tissue = the union of the tissue polygons minus the union of the `Ignore*` ones.
    """

    def __init__(
        self,
        path_or_data,
        image_hw: tuple[int, int],
        downsample: float = 1.0,
        tissue_classes: list[str] | None = None,
    ):
        is_path = isinstance(path_or_data, str | Path)
        source = str(path_or_data) if is_path else "GeoJSON"
        data = read_geojson(Path(path_or_data)) if is_path else path_or_data
        self.image_hw = tuple(image_hw)
        annotations = parse_annotations(data, source)
        if not annotations:
            raise MaskError(f"{source}: no polygons found")
        tissue, ignored = split_tissue(annotations, tissue_classes, source)
        self.tissue = PolygonSet([[r / downsample for r in a.rings] for a in tissue])
        self.ignored = PolygonSet([[r / downsample for r in a.rings] for a in ignored])
        log.info("%s: %d tissue polygon(s), %d ignored", source, len(tissue), len(ignored))

    def read(self, box: Box) -> np.ndarray:
        """(h, w) uint8 0/1: tissue polygons minus `Ignore*` polygons over `box`."""
        out = np.zeros(box.hw, bool)
        self.tissue.fill(out, box, True)
        self.ignored.fill(out, box, False)
        return out.view(np.uint8)
