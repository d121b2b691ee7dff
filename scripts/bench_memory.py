"""Peak memory of a tiled step vs a whole-image step, across image sizes (issue: the core).

Every configuration runs in a fresh process, so the process peak RSS is its own. Prints a
table and writes JSON.

    python scripts/bench_memory.py --budget 2GB --sizes 1024,2048,4096,8192,16384
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import gigamlx.backends.mlx  # noqa: F401  (first: loads a fast BLAS before mlx.core)
from gigamlx.runs.config import DEFAULT_MEMORY_BUDGET

app = typer.Typer(add_completion=False)
# a whole-image step is skipped when its estimate (bytes/px measured at the previous size)
# passes this share of RAM
WHOLE_IMAGE_RAM_SHARE = 0.5
MARKDOWN_TITLE = "Peak memory: tiled vs whole-image step (bench_memory.py)"
MARKDOWN_WHAT = (
    "One soft-Dice training step (forward and gradients, no update) per image size, tiled "
    "within the budget vs the whole image at once, one process per row: seconds, MLX's peak "
    "and the process's peak RSS."
)


def run_one(kind: str, side: int, budget_bytes: int, loss: str) -> dict:
    """One step in this process; returns the measurements."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from bench import RandomRegion  # scripts/bench.py: a lazily generated random image

    import gigamlx
    from gigamlx.backends.mlx.backend import MLXBackend
    from gigamlx.core.memory import peak_rss_bytes
    from gigamlx.tiling.scheduler import tiled_step

    mx.random.seed(0)
    model = gigamlx.GigaUNet()
    # the tiled step reads windows of a lazy image, as from a slide store; the whole-image
    # step needs the image in memory, and that memory counts against it
    image, mask = RandomRegion((side, side), 3), RandomRegion((side, side), 0)
    if kind == "whole":
        image, mask = image[0:side, 0:side], mask[0:side, 0:side]
    mx.reset_peak_memory()
    start = time.perf_counter()
    row = {"kind": kind, "side": side, "loss": loss}
    if kind == "tiled":
        result = tiled_step(MLXBackend(), model, image, mask, loss, budget_bytes=budget_bytes)
        row.update(tile_px=result.plan.tile_hw[0], tiles=len(result.plan.tiles))
    else:
        x = mx.array(image)[None].astype(mx.float32) / 255.0
        g = mx.array(mask.astype(np.float32))

        def loss_fn(m):
            p = m(x)[0, ..., 0]
            return 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)

        value, grads = nn.value_and_grad(model, loss_fn)(model)
        mx.eval(value, grads)
    row.update(
        seconds=time.perf_counter() - start,
        mlx_peak_bytes=mx.get_peak_memory(),
        rss_peak_bytes=peak_rss_bytes(),
    )
    return row


def _row_in_subprocess(kind: str, side: int, budget_bytes: int, loss: str) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{kind}:{side}", "--budget-bytes", str(budget_bytes)]
    cmd += ["--loss", loss]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"kind": kind, "side": side, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _table(rows: list[dict], budget_bytes: int) -> Table:
    table = Table(title=f"tiled (budget {budget_bytes / 1e9:.1f} GB) vs whole-image step")
    for column in ("image", "kind", "tile", "s/step", "MLX peak GB", "RSS peak GB"):
        table.add_column(column, justify="right")
    for r in rows:
        if "seconds" not in r:
            table.add_row(f"{r['side']}²", r["kind"], "", "", r.get("skipped", "failed"), "")
            continue
        tile = f"{r['tile_px']} x{r['tiles']}" if r["kind"] == "tiled" else "whole"
        table.add_row(
            f"{r['side']}²",
            r["kind"],
            tile,
            f"{r['seconds']:.1f}",
            f"{r['mlx_peak_bytes'] / 1e9:.2f}",
            f"{r['rss_peak_bytes'] / 1e9:.2f}",
        )
    return table


@app.command()
def main(
    sizes: str = typer.Option("1024,2048,4096,8192,16384", help="image sides, comma-separated"),
    budget: str = typer.Option(DEFAULT_MEMORY_BUDGET, help="memory budget of the tiled step"),
    loss: str = typer.Option("dice", help="dice (two passes), bce or dice+bce"),
    json_out: Path = typer.Option(Path("bench_memory.json"), "--json", help="where to write rows"),
    markdown: Path | None = typer.Option(
        None, help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"
    ),
    one: str = typer.Option("", hidden=True, help="internal: run KIND:SIDE in this process"),
    budget_bytes: int = typer.Option(0, hidden=True),
) -> None:
    """Tiled step time and peak memory next to a whole-image step, one process per row."""
    from gigamlx.core.memory import parse_bytes

    if one:
        kind, side = one.split(":")
        print(json.dumps(run_one(kind, int(side), budget_bytes, loss)))
        return
    budget_bytes = parse_bytes(budget)
    rows, whole_per_px = [], None
    for side in (int(s) for s in sizes.split(",")):
        for kind in ("tiled", "whole"):
            need = whole_per_px * side * side if whole_per_px else 0
            if kind == "whole" and need > WHOLE_IMAGE_RAM_SHARE * _ram_bytes():
                skipped = f"skipped: needs ~{need / 1e9:.0f} GB"
                rows.append({"kind": kind, "side": side, "skipped": skipped})
                continue
            rows.append(_row_in_subprocess(kind, side, budget_bytes, loss))
            if kind == "whole" and "rss_peak_bytes" in rows[-1]:
                whole_per_px = rows[-1]["rss_peak_bytes"] / (side * side)
            Console(stderr=True).print(rows[-1])
    table = _table(rows, budget_bytes)
    Console().print(table)
    json_out.write_text(json.dumps({"budget_bytes": budget_bytes, "rows": rows}, indent=2))
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        publish(markdown, "bench_memory.py", MARKDOWN_TITLE, MARKDOWN_WHAT, [table])


if __name__ == "__main__":
    app()
