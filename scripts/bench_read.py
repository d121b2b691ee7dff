"""Reading a training region's windows, as one pass of a step does: numpy vs the native turn,
zarr's decode vs the store's direct chunk decode.

    python scripts/bench_read.py                        # the default slide, 16000x64000
    python scripts/bench_read.py SLIDE.zarr --region 4096x4096 --repeats 1

Every window of one pass (the tile plan of `--tile`, input box with its halo, and the mask's
owned box) is read through `train.regions.region_view` with a colour jitter, an uneven
illumination, a mirror and a quarter turn (what a default training step reads): turned by
numpy or by the backend's `window_turner` (the extension's `turn_window`), the store's chunks
decoded by zarr or directly (`gigamlx.slide.chunks`, what training uses). The kinds alternate
`--repeats` times in one process so the ratios are taken under the same load. Prints a table,
writes JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gigamlx.backends import get_backend
from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import plan_tiles
from gigamlx.core.memory import keep_freed_memory, parse_bytes
from gigamlx.runs.config import DEFAULTS, parse_region
from gigamlx.slide.store import open_store
from gigamlx.train.augment import draw_illumination, draw_jitter, lut32
from gigamlx.train.data import open_training_slides
from gigamlx.train.regions import Region, region_view

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
MARKDOWN_TITLE = "Window reads of one pass (bench_read.py)"
MARKDOWN_WHAT = (
    "Every window one pass of a training step reads (tile inputs with halos, mask boxes; "
    "colour jitter, illumination, mirror and quarter turn), numpy vs the native turn, zarr's "
    "decode vs the direct chunk decode: median wall and CPU seconds over `--repeats`."
)


def read_pass(slide, region: Region, tile_hw: int | tuple[int, int], turner) -> dict[str, float]:
    """Read every window of one pass over owned tiles of `tile_hw` px; wall and CPU seconds,
    and pixels read."""
    image = region_view(slide.image, region, region.color, turner, region.light)
    mask = region_view(slide.mask, region, turner=turner)
    plan = plan_tiles(image.shape[:2], tile_hw)
    wall, cpu, pixels = time.perf_counter(), time.process_time(), 0
    for tile in plan.tiles:
        pixels += read_window(image, tile.in_box).shape[0] * tile.in_box.hw[1]
        read_window(mask, tile.out_box)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "pixels": pixels}  # fmt: skip


@app.command()
def main(
    slides: list[str] = typer.Argument(None, help="slide stores (default: the built-in slide)"),
    region: str = typer.Option(DEFAULTS.region, help="HxW region read"),
    tile: int = typer.Option(4032, help="owned tile side px of the pass (the halo is added)"),
    repeats: int = typer.Option(2, help="alternations of numpy and native (median reported)"),
    json_out: Path = typer.Option(Path("out/bench_read.json"), "--json"),
    markdown: Path | None = typer.Option(
        None, help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"
    ),
) -> None:
    """Time one pass of window reads: numpy vs native turn, zarr vs direct chunk decode."""
    # freed windows reused as in a training process (its backend's bound_memory at the
    # default budget), instead of fresh pages faulted in for every window
    keep_freed_memory(parse_bytes(DEFAULTS.memory_budget) // 4)
    slide = open_training_slides(tuple(slides or ()))[0]
    by_zarr = open_store(slide.path, direct_chunks=False)
    source_hw = parse_region(region)
    jitter = draw_jitter(np.random.default_rng(0), 1.0)
    lut32(jitter)  # built once per region in a run too; not what is compared here
    light = draw_illumination(np.random.default_rng(0), 1.0)
    spec = Region(0, (0, 0), source_hw, True, 1, jitter, light)
    turner = get_backend("mlx").window_turner
    kinds = [("numpy", "direct", None, slide)]
    if turner:
        kinds += [("native", "zarr", turner, by_zarr), ("native", "direct", turner, slide)]
    runs: dict[tuple, list[dict]] = {kind[:2]: [] for kind in kinds}
    for _ in range(repeats):
        for turn_kind, decode, fn, store in kinds:
            runs[turn_kind, decode].append(read_pass(store, spec, tile, fn))
    rows = []
    for (name, decode), done in runs.items():
        wall = statistics.median(r["wall_s"] for r in done)
        cpu = statistics.median(r["cpu_s"] for r in done)
        pixels = done[0]["pixels"]
        rows.append({"kind": name, "decode": decode, "wall_s": wall, "cpu_s": cpu,
                     "pixels": pixels, "ns_per_px": 1e9 * wall / pixels})  # fmt: skip
    table = Table(title=f"one pass of window reads, {region} region, {tile} px tiles")
    for column in ("turn", "decode", "wall s", "CPU s", "ns / input px", "CPU vs first"):
        table.add_column(column, justify="right")
    for row in rows:
        ratio = rows[0]["cpu_s"] / row["cpu_s"]
        table.add_row(row["kind"], row["decode"], f"{row['wall_s']:.2f}", f"{row['cpu_s']:.2f}",
                      f"{row['ns_per_px']:.1f}", f"{ratio:.2f}x")  # fmt: skip
    Console().print(table)
    if not turner:
        Console().print("no native turn here (extension absent or older than 0.4): numpy only")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps({"region": region, "tile": tile, "rows": rows}, indent=2))
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        publish(markdown, "bench_read.py", MARKDOWN_TITLE, MARKDOWN_WHAT, [table])


if __name__ == "__main__":
    app()
