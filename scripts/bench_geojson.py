"""Rasterise a QuPath-style GeoJSON of many nucleus-sized polygons chunk by chunk, and ingest
a slide with it (all in); with --peers also shapely and rasterio, where installed.

Usage: python scripts/bench_geojson.py [--size 8192] [--polygons 20000] [--chunk 1024]
       [--no-ingest] [--peers] [--json out/bench_geojson.json] [--markdown docs/benchmarks.md]
Only the public API is used (GeoJsonMask, ingest), so the same script times another checkout
(PYTHONPATH=that checkout). Every row gives wall and process CPU seconds, and the JSON an sgemm
rate: on a shared machine compare CPU seconds, or ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from benchmarks_md import sgemm_gflops  # scripts/benchmarks_md.py

from gigamlx.slide.geojson import GeoJsonMask
from gigamlx.slide.ingest import ingest
from gigamlx.slide.pyramid import chunk_boxes


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


def gigamlx_fill(path: Path, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    """Read and parse the file, then fill every chunk, as ingest does."""
    mask = GeoJsonMask(path, hw)
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = mask.read(box)
    return out


def shapely_fill(path: Path, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    import shapely

    data = json.loads(path.read_text())
    area = shapely.union_all([shapely.geometry.shape(f["geometry"]) for f in data["features"]])
    out = np.zeros(hw, np.uint8)
    for box in chunk_boxes(hw, chunk_px):
        yy, xx = np.mgrid[box.y0 : box.y1, box.x0 : box.x1] + 0.5
        out[box.y0 : box.y1, box.x0 : box.x1] = shapely.contains_xy(area, xx, yy)
    return out


def rasterio_fill(path: Path, hw: tuple[int, int], chunk_px: int) -> np.ndarray:
    from rasterio.features import rasterize

    shapes = [(f["geometry"], 1) for f in json.loads(path.read_text())["features"]]
    return rasterize(shapes, out_shape=hw, dtype="uint8")


def _available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    """(fn's result, wall seconds, this process's CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def fill_rows(path: Path, hw: tuple[int, int], chunk_px: int, peers: bool) -> list[dict]:
    """Each method from the file to the whole (H, W) mask; pixels differing from gigamlx's."""
    methods = {"gigamlx GeoJsonMask": gigamlx_fill}
    if peers and _available("shapely"):
        methods["shapely contains_xy"] = shapely_fill
    if peers and _available("rasterio"):
        methods["rasterio rasterize"] = rasterio_fill
    rows, reference = [], None
    for name, fill in methods.items():
        out, wall, cpu = _timed(fill, path, hw, chunk_px)
        reference = out if reference is None else reference
        differ = int(np.count_nonzero(out != reference))
        rows.append({"method": name, "seconds": wall, "cpu_seconds": cpu, "px_differing": differ})
    return rows


def ingest_rows(root: Path, geojson: Path, hw: tuple[int, int], chunk_px: int) -> list[dict]:
    """Ingest a synthetic tiled TIFF without a mask and with the GeoJSON (read from file)."""
    import tifffile

    slide = root / "slide.tif"
    image = np.full((*hw, 3), 220, np.uint8)
    image[::7, ::5] = np.random.default_rng(0).integers(0, 255, image[::7, ::5].shape, np.uint8)
    tifffile.imwrite(slide, image, photometric="rgb", tile=(256, 256))
    rows = []
    for name, mask in (("ingest, no mask", None), ("ingest --geojson (all in)", geojson)):
        out = root / "out.zarr"
        _, wall, cpu = _timed(ingest, slide, out, geojson=mask, chunk_px=chunk_px, overwrite=True)
        rows.append({"method": name, "seconds": wall, "cpu_seconds": cpu})
    return rows


HEADER = ("method", "wall s", "cpu s", "px differing")
MARKDOWN_TITLE = "GeoJSON annotations to a mask (bench_geojson.py)"
MARKDOWN_WHAT = (
    "Seconds (wall and CPU) to turn a QuPath-style GeoJSON of many nucleus-sized polygons into "
    "a mask chunk by chunk, and to ingest a synthetic TIFF without a mask and with the GeoJSON "
    "(all in); shapely and rasterio with --peers, with the pixels that differ from gigamlx's."
)


def _cells(row: dict) -> list[str]:
    differ = str(row.get("px_differing", ""))
    return [row["method"], f"{row['seconds']:.2f}", f"{row['cpu_seconds']:.2f}", differ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="square grid side, px")
    parser.add_argument("--polygons", type=int, default=20000)
    parser.add_argument("--chunk", type=int, default=1024, help="chunk side read at a time")
    parser.add_argument("--no-ingest", action="store_true", help="skip the ingest rows")
    parser.add_argument("--peers", action="store_true", help="also shapely and rasterio (slow)")
    parser.add_argument("--json", type=Path, default=Path("out/bench_geojson.json"))
    parser.add_argument(
        "--markdown",
        type=Path,
        help="rewrite this script's section of this file (e.g. docs/benchmarks.md)",
    )
    args = parser.parse_args()
    hw = (args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "annotations.geojson"
        path.write_text(json.dumps(nuclei_geojson(args.size, args.polygons)))
        rows = fill_rows(path, hw, args.chunk, args.peers)
        if not args.no_ingest:
            rows += ingest_rows(Path(tmp), path, hw, args.chunk)
    gflops = sgemm_gflops()
    print(f"{args.polygons} polygons on {args.size}x{args.size} px (HxW), chunks {args.chunk}")
    table = [_cells(row) for row in rows]
    print(f"{HEADER[0]:<28}{HEADER[1]:>9}{HEADER[2]:>9}{HEADER[3]:>14}")
    for cells in table:
        print(f"{cells[0]:<28}{cells[1]:>9}{cells[2]:>9}{cells[3]:>14}")
    print(f"sgemm {gflops:.0f} GFLOP/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"size_px": args.size, "polygons": args.polygons, "chunk_px": args.chunk}
    args.json.write_text(json.dumps(summary | {"sgemm_gflops": gflops, "rows": rows}, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table, publish  # scripts/benchmarks_md.py

        caption = f"{args.polygons} polygons on {args.size}x{args.size} px, chunks {args.chunk}"
        tables = [caption, markdown_table(HEADER, table)]
        publish(args.markdown, "bench_geojson.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, gflops)


if __name__ == "__main__":
    main()
