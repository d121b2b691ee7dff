"""CPU time of rendering chunks of the synthetic slide, against another commit's renderer.

    python scripts/bench_synth.py                               # 32 chunks of the default slide
    python scripts/bench_synth.py --baseline main --repeats 3   # and main's renderer beside it

Renders a grid of chunks spread evenly over the slide (glass, tissue, pen, a bubble) and
reports CPU seconds per chunk: process time, not wall, so a shared machine blurs it less. With
`--baseline REV` that commit's `gigamlx/` (from `git archive`) renders the same chunks too; the
two alternate `--repeats` times, each repeat in a fresh process, so both see the same load, and
their image and mask bytes are compared. Each process is set up as synth's worker processes
are (`prepare_worker`, where that renderer has one). Prints a table, writes JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
ROOT = Path(__file__).resolve().parent.parent
MARKDOWN_TITLE = "Rendering the synthetic slide (bench_synth.py)"
MARKDOWN_WHAT = (
    "CPU seconds to render one chunk of the default synthetic slide (a grid of chunks spread "
    "over it), median over `--repeats`, beside the `--baseline` commit's renderer in "
    "alternating fresh processes; `same bytes` compares their image and mask bytes."
)


def _parse_hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def grid_origins(
    size_hw: tuple[int, int], chunk_px: int, grid_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """(y, x) origins of `grid_hw` chunks spread evenly over the slide's chunk grid."""
    rows, cols = (-(-side // chunk_px) for side in size_hw)
    picked_rows = sorted({int((i + 0.5) * rows / grid_hw[0]) for i in range(grid_hw[0])})
    picked_cols = sorted({int((j + 0.5) * cols / grid_hw[1]) for j in range(grid_hw[1])})
    return [(r * chunk_px, c * chunk_px) for r in picked_rows for c in picked_cols]


def render_chunks(size_hw, seed: int, chunk_px: int, origins) -> dict:
    """Render each chunk once (after one untimed warm-up): CPU s per chunk, digest of all."""
    from gigamlx.synth import render as renderer  # the gigamlx on sys.path: current or baseline
    from gigamlx.synth.scene import make_scene

    render = renderer.render
    try:  # as synth's worker processes do (older: in render.py, or absent)
        from gigamlx.synth.slide import prepare_worker
    except ImportError:
        prepare_worker = getattr(renderer, "prepare_worker", None)
    if prepare_worker is not None:
        prepare_worker(chunk_px)

    scene = make_scene(size_hw, seed)

    def chunk(y: int, x: int):
        ys = np.arange(y, min(y + chunk_px, size_hw[0]))
        return render(scene, ys, np.arange(x, min(x + chunk_px, size_hw[1])))

    chunk(*origins[0])
    digest, cpu_s = hashlib.sha256(), []
    for y, x in origins:
        start = time.process_time()
        rgb, mask = chunk(y, x)
        cpu_s.append(time.process_time() - start)
        digest.update(rgb.tobytes())
        digest.update(mask.tobytes())
    return {
        "cpu_s": cpu_s,
        "sha256": digest.hexdigest(),
        "gigamlx": str(Path(render.__code__.co_filename).parent.parent),
    }


def _export(rev: str, into: Path) -> Path:
    """`gigamlx/` as of commit `rev`, unpacked under `into`."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "gigamlx"],
                         capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def _run_child(pythonpath: Path, args: list[str]) -> dict:
    """One repeat in a fresh interpreter that imports gigamlx from `pythonpath`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        env = os.environ | {"PYTHONPATH": str(pythonpath)}
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--child", str(out)]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text())


def _row(name: str, runs: list[dict]) -> dict:
    per_chunk = [statistics.fmean(run["cpu_s"]) for run in runs]
    return {"renderer": name, "chunks": len(runs[0]["cpu_s"]),
            "cpu_s_per_chunk": statistics.median(per_chunk),
            "cpu_s_per_chunk_min": min(per_chunk), "sha256": runs[0]["sha256"],
            "repeats_cpu_s_per_chunk": per_chunk, "gigamlx": runs[0]["gigamlx"]}  # fmt: skip


@app.command()
def main(
    size: Annotated[str, typer.Option(help="HxW of the synthetic slide")] = "16384x65536",
    seed: Annotated[int, typer.Option(help="slide seed")] = 0,
    chunk_px: Annotated[int, typer.Option(help="chunk side px, as synth renders them")] = 1024,
    grid: Annotated[str, typer.Option(help="RxC chunks spread evenly over the slide")] = "4x8",
    repeats: Annotated[int, typer.Option(help="alternations of the renderers (median)")] = 3,
    baseline: Annotated[
        str | None, typer.Option(help="git commit whose renderer is timed beside (e.g. main)")
    ] = None,
    json_out: Annotated[Path, typer.Option("--json", help="write the rows here")] = Path(
        "out/bench_synth.json"
    ),
    markdown: Annotated[
        Path | None,
        typer.Option(help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"),
    ] = None,
    child: Annotated[Path | None, typer.Option(hidden=True, help="one repeat's JSON here")] = None,
) -> None:
    """Time rendering a grid of synthetic-slide chunks; optionally beside another commit's."""
    size_hw, grid_hw = _parse_hw(size), _parse_hw(grid)
    origins = grid_origins(size_hw, chunk_px, grid_hw)
    if child:
        child.write_text(json.dumps(render_chunks(size_hw, seed, chunk_px, origins)))
        return
    args = ["--size", size, "--seed", str(seed), "--chunk-px", str(chunk_px), "--grid", grid]
    with tempfile.TemporaryDirectory() as tmp:
        renderers = {"current": ROOT}
        if baseline:
            renderers[f"baseline {baseline}"] = _export(baseline, Path(tmp))
        runs: dict[str, list[dict]] = {name: [] for name in renderers}
        for _ in range(repeats):
            for name, pythonpath in renderers.items():
                runs[name].append(_run_child(pythonpath, args))
    rows = [_row(name, done) for name, done in runs.items()]
    first = rows[-1]  # the baseline where there is one
    table = Table(title=f"{len(origins)} chunks of {chunk_px} px, {size} slide, seed {seed}")
    for column in ("renderer", "CPU s / chunk", "min", "speed vs " + first["renderer"],
                   "same bytes"):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        row["speedup"] = first["cpu_s_per_chunk"] / row["cpu_s_per_chunk"]
        row["same_bytes"] = row["sha256"] == first["sha256"]
        table.add_row(row["renderer"], f"{row['cpu_s_per_chunk']:.3f}",
                      f"{row['cpu_s_per_chunk_min']:.3f}", f"{row['speedup']:.2f}x",
                      "yes" if row["same_bytes"] else "NO")  # fmt: skip
    Console().print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    report = {"size_hw": size_hw, "seed": seed, "chunk_px": chunk_px, "origins_yx": origins,
              "repeats": repeats, "baseline": baseline, "rows": rows}  # fmt: skip
    json_out.write_text(json.dumps(report, indent=2))
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        publish(markdown, "bench_synth.py", MARKDOWN_TITLE, MARKDOWN_WHAT, [table])


if __name__ == "__main__":
    app()
