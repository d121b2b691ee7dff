"""Rasterise a QuPath-style GeoJSON of many nucleus-sized polygons: per-bounding-box fill
(gigamlx now) vs filling every polygon over the whole chunk (gigamlx before), same output.

Usage: python scripts/bench_geojson.py [--size 8192] [--polygons 20000] [--chunk 1024]
       [--skip-whole-box] [--json out/bench_geojson.json] [--markdown docs/benchmarks.md]
Also times shapely (contains_xy at pixel centres) and rasterio when they are installed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gigamlx.slide.geojson import GeoJsonMask, rasterize_polygon
from gigamlx.slide.store import chunk_boxes


def nuclei_geojson(size_px: int, count: int, seed: int = 0) -> dict:
    """`count` star-shaped polygons of radius 3-9 px with 8-16 vertices, as QuPath exports."""
    rng = np.random.default_rng(seed)
    features = []
    for _ in range(count):
        cx, cy = rng.uniform(10, size_px - 10, 2)
        n = int(rng.integers(8, 17))
        step = 2 * np.pi / n  # increasing angles around the centre: a simple polygon
        angles = np.arange(n) * step + rng.uniform(0, 0.5 * step, n)
        radius = rng.uniform(3, 9) * rng.uniform(0.7, 1.0, n)
        ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        ring = np.round(np.concatenate([ring, ring[:1]]), 2).tolist()
        properties = {"objectType": "annotation", "classification": {"name": "Nucleus"}}
        geometry = {"type": "Polygon", "coordinates": [ring]}
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def per_bbox(data: dict, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    mask = GeoJsonMask(data, hw)
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = mask.read(box)
    return out


def whole_box(data: dict, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    """The previous reader: each polygon touching a chunk is filled over the whole chunk."""
    mask = GeoJsonMask(data, hw)
    bounds = mask.tissue.bounds
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        block = np.zeros(box.hw, bool)
        for rings, b in zip(mask.polygons, bounds, strict=True):
            if b[0] < box.y1 and box.y0 < b[2] and b[1] < box.x1 and box.x0 < b[3]:
                block |= rasterize_polygon(rings, box)
        out[box.y0 : box.y1, box.x0 : box.x1] = block
    return out


def shapely_fill(data: dict, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    import shapely

    area = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in data["features"]])
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1] + 0.5
        out[box.y0 : box.y1, box.x0 : box.x1] = shapely.contains_xy(area, xx, yy)
    return out


def rasterio_fill(data: dict, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    from rasterio.features import rasterize

    shapes = [(f["geometry"], 1) for f in data["features"]]
    return rasterize(shapes, out_shape=hw, dtype="uint8")


HEADER = ("method", "seconds", "vs per-bbox", "px differing")
MARKDOWN_TITLE = "GeoJSON annotations to a mask (bench_geojson.py)"
MARKDOWN_WHAT = (
    "Seconds to rasterise a QuPath-style GeoJSON of many nucleus-sized polygons chunk by chunk: "
    "gigamlx's per-bounding-box fill vs its former whole-chunk fill, shapely and rasterio "
    "where installed, and how many pixels differ from the first."
)


def _cells(row: dict, base_seconds: float) -> list[str]:
    ratio = row["seconds"] / base_seconds
    return [row["method"], f"{row['seconds']:.2f}", f"{ratio:.1f}x", str(row["pixels_differing"])]


def _available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="square grid side, px")
    parser.add_argument("--polygons", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=1024, help="chunk side read at a time")
    parser.add_argument("--skip-whole-box", action="store_true", help="skip the slow old way")
    parser.add_argument("--json", type=Path, default=Path("out/bench_geojson.json"))
    parser.add_argument(
        "--markdown",
        type=Path,
        help="rewrite this script's section of this file (e.g. docs/benchmarks.md)",
    )
    args = parser.parse_args()
    hw = (args.size, args.size)
    data = nuclei_geojson(args.size, args.polygons)
    methods = {"gigamlx per-bbox": per_bbox}
    if not args.skip_whole_box:
        methods["gigamlx whole-box (before)"] = whole_box
    if _available("shapely"):
        methods["shapely contains_xy"] = shapely_fill
    if _available("rasterio"):
        methods["rasterio rasterize"] = rasterio_fill
    rows, reference = [], None
    for name, fill in methods.items():
        start = time.perf_counter()
        out = fill(data, hw, args.chunk)
        seconds = time.perf_counter() - start
        reference = out if reference is None else reference
        differ = int(np.count_nonzero(out != reference))
        rows.append({"method": name, "seconds": seconds, "pixels_differing": differ})
    base = rows[0]["seconds"]
    table = [_cells(row, base) for row in rows]
    print(f"{args.polygons} polygons on {args.size}x{args.size} px (HxW), chunks {args.chunk}")
    print(f"{HEADER[0]:<28}{HEADER[1]:>10}{HEADER[2]:>13}{HEADER[3]:>14}")
    for cells in table:
        print(f"{cells[0]:<28}{cells[1]:>10}{cells[2]:>13}{cells[3]:>14}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"size_px": args.size, "polygons": args.polygons, "chunk_px": args.chunk}
    args.json.write_text(json.dumps(summary | {"rows": rows}, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table, publish  # scripts/benchmarks_md.py

        caption = f"{args.polygons} polygons on {args.size}x{args.size} px, chunks {args.chunk}"
        tables = [caption, markdown_table(HEADER, table)]
        publish(args.markdown, "bench_geojson.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables)


if __name__ == "__main__":
    main()
