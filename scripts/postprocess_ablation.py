"""Choose the tissue mask's post-processing on the validation slides (never the held-out ones).

Takes a finished `reproduce_paper.py` work folder, predicts its validation slides with the
run's best weights (the raw probability maps, cut at the threshold validation chose), and any
`--large` slide (its held-out strip, the last 10 % of the long side as `gigamlx train` holds
out, scored at pyramid level LARGE_LEVEL to stay quick), then scores a grid of closing radius
× hole-filling area × minimum object area against the slides' true masks, beside the Otsu and
the morphological detectors on the same pixels. Prints the best settings and every single-step
variant, writes the whole grid as JSON, and says which settings it chooses: the highest mean
per-slide Dice; within `TIE_DICE` of it, the gentlest (fewest and smallest steps).

The quick benchmark's validation slides are 2048² px: their holes are small, so every hole
limit above the largest of them scores the same there. A large slide's strip (the default
slide's, the first run's validation) has holes of the size a whole section has.

Usage: python scripts/postprocess_ablation.py [--work runs/reproduce] [--json FILE]
       [--large ~/.cache/gigamlx/synth-v5-s0-16384x65536.zarr] [--markdown docs/benchmarks.md]
       [--checkpoint bundled]
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from gigamlx.eval.baseline import baseline_plane
from gigamlx.infer.annotations import threshold_u8
from gigamlx.infer.model import cut_of, trained_scale
from gigamlx.infer.predict import PredictOptions, predict_slides
from gigamlx.runs.bundled import BUNDLED
from gigamlx.runs.config import POSTPROCESS, PostprocessConfig
from gigamlx.slide.morphology import pixel_settings, postprocess_array
from gigamlx.slide.planes import open_plane
from gigamlx.slide.store import open_store
from gigamlx.train.validate import AUTO_VAL_FRACTION, split_hw

CLOSING_UM = (0.0, 4.0, 8.0, 16.0)
FILL_HOLES_UM2 = (0.0, 10_000.0, 50_000.0, 200_000.0, 1_000_000.0, 10_000_000.0)
MIN_OBJECT_UM2 = (0.0, 2_000.0, 10_000.0, 50_000.0)
TIE_DICE = 1e-4  # differences below this are noise on a few validation slides
LARGE_LEVEL = 1  # a large slide's strip is scored at 2x the pixel size: ~10x faster, same ranking


class Slide:
    """One validation slide in memory: the map cut at the threshold, the truth, baselines."""

    def __init__(self, store: Path, pred: Path, cut_u8: int, level: int = 0, strip: bool = False):
        """The whole slide at `level`, or (`strip`) its held-out strip only."""
        self.name = store.name + (" (held-out strip)" if strip else "")
        slide = open_store(store)
        self.mpp = slide.level_mpp(level)
        truth = open_plane(store, level)
        box = split_hw(truth.shape[:2], AUTO_VAL_FRACTION)[1] if strip else None
        self.truth = _window(truth, box) != 0
        self.binary = _window(open_plane(pred, level), box) >= cut_u8
        self.otsu = dice(_window(baseline_plane("otsu", store, level), box), self.truth)
        self.morph = dice(_window(baseline_plane("morph", store, level), box), self.truth)

    def post_dice(self, config: PostprocessConfig) -> float:
        if not any(c > 0 for c in config.to_dict().values()):
            return dice(self.binary, self.truth)
        mask = postprocess_array(self.binary, pixel_settings(config, self.mpp))
        return dice(mask, self.truth)


def _window(plane, box) -> np.ndarray:
    """The whole plane, or its `box` (a core.geometry.Box)."""
    if box is None:
        h, w = plane.shape[:2]
        return np.asarray(plane[0:h, 0:w])
    return np.asarray(plane[box.y0 : box.y1, box.x0 : box.x1])


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    both = int(np.count_nonzero(pred & truth))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2 * both / total


def gentleness(config: PostprocessConfig) -> tuple:
    """Sort key: fewer steps on, then smaller ones (the closing moves outlines most)."""
    values = (config.closing_um, config.fill_holes_um2, config.min_object_um2)
    return (sum(v > 0 for v in values), *values)


def choose(rows: list[dict]) -> dict:
    """The gentlest row within TIE_DICE of the best mean."""
    best = max(r["mean"] for r in rows)
    near = [r for r in rows if r["mean"] >= best - TIE_DICE]
    return min(near, key=lambda r: gentleness(PostprocessConfig(**r["config"])))


def ablate(slides: list[Slide], console: Console) -> list[dict]:
    rows = []
    grid = list(itertools.product(CLOSING_UM, FILL_HOLES_UM2, MIN_OBJECT_UM2))
    start = time.perf_counter()
    for n, (closing, fill, min_object) in enumerate(grid, 1):
        config = PostprocessConfig(fill, min_object, closing)
        scores = [s.post_dice(config) for s in slides]
        beats = sum(d > max(s.otsu, s.morph) for d, s in zip(scores, slides, strict=True))
        rows.append(
            {
                "config": config.to_dict(),
                "mean": float(np.mean(scores)),
                "min": float(np.min(scores)),
                "above_both_baselines": beats,
                "per_slide": dict(zip([s.name for s in slides], scores, strict=True)),
            }
        )
        if n % 16 == 0:
            console.print(f"  {n}/{len(grid)} settings, {time.perf_counter() - start:.0f} s")
    return rows


def _label(config: dict) -> str:
    return (
        f"closing {config['closing_um']:g} µm, fill ≤ {config['fill_holes_um2']:g} µm², "
        f"drop < {config['min_object_um2']:g} µm²"
    )


def table(rows: list[dict], slides: list[Slide], chosen: dict) -> Table:
    """The ten best settings, each step alone, the current defaults and the baselines."""
    out = Table(title=f"Post-processing on {len(slides)} validation slides (mean per-slide Dice)")
    for name in ("settings", "mean Dice", "min Dice", "slides above Otsu and morph"):
        out.add_column(name, justify="left" if name == "settings" else "right")
    off = PostprocessConfig(0.0, 0.0, 0.0).to_dict()

    def single(r: dict) -> bool:
        return sum(v > 0 for v in r["config"].values()) == 1

    shown = sorted(rows, key=lambda r: -r["mean"])[:10]
    shown += [r for r in rows if r["config"] == off or single(r) or r is chosen]
    shown += [r for r in rows if r["config"] == POSTPROCESS.to_dict()]
    seen = set()
    for r in sorted(shown, key=lambda r: -r["mean"]):
        key = json.dumps(r["config"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        mark = " (chosen)" if r is chosen else " (off)" if r["config"] == off else ""
        out.add_row(
            _label(r["config"]) + mark,
            f"{r['mean']:.4f}",
            f"{r['min']:.4f}",
            f"{r['above_both_baselines']}/{len(slides)}",
        )
    for name, key in (("Otsu", "otsu"), ("morphological detector", "morph")):
        scores = [getattr(s, key) for s in slides]
        out.add_row(name, f"{np.mean(scores):.4f}", f"{np.min(scores):.4f}", "—")
    return out


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    work: Annotated[
        Path, typer.Option(help="a reproduce_paper.py work folder (run/, slides/val-*)")
    ] = Path("runs/reproduce"),
    json_path: Annotated[Path | None, typer.Option("--json", help="the whole grid")] = None,
    large: Annotated[
        list[Path] | None,
        typer.Option(
            help="a large slide store (e.g. the default slide in ~/.cache/gigamlx) whose "
            "held-out strip joins the validation slides; repeatable"
        ),
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(help="rewrite this script's section of this file (e.g. docs/benchmarks.md)"),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="the weights to score: a checkpoint or run folder, a .safetensors file, or "
            "`bundled` (the model that ships); default WORK/run/checkpoints/best"
        ),
    ] = None,
) -> None:
    """Score post-processing settings on the validation slides and choose the defaults."""
    logging.basicConfig(level=logging.WARNING)
    console = Console(width=120)
    checkpoint = checkpoint or work / "run" / "checkpoints" / "best"
    stores = sorted((work / "slides").glob("val-*.zarr"))
    if not (checkpoint == BUNDLED or Path(checkpoint).exists()) or not stores:
        console.print(f"no weights at {checkpoint} or no {work}/slides/val-*.zarr: run "
                      "`python scripts/reproduce_paper.py --quick` first")  # fmt: skip
        raise typer.Exit(2)
    threshold = cut_of(None, trained_scale(checkpoint))
    options = PredictOptions(postprocess=None, overwrite=True)
    results = predict_slides(checkpoint, stores, work / "val-maps", options)
    cut_u8 = threshold_u8(threshold)
    slides = [Slide(s, r.outputs.zarr, cut_u8) for s, r in zip(stores, results, strict=True)]
    for store in large or []:
        (result,) = predict_slides(checkpoint, [store], work / "val-maps", options)
        slides.append(Slide(store, result.outputs.zarr, cut_u8, LARGE_LEVEL, strip=True))
    console.print(f"{len(slides)} validation slides, maps cut at p >= {threshold:g}")
    rows = ablate(slides, console)
    chosen = choose(rows)
    console.print(table(rows, slides, chosen))
    console.print(f"chosen: {_label(chosen['config'])}")
    result = {
        "checkpoint": str(checkpoint),
        "threshold": threshold,
        "chosen": chosen,
        "baselines": {s.name: {"otsu": s.otsu, "morph": s.morph} for s in slides},
        "grid": rows,
    }
    json_path = json_path or work / "postprocess_ablation.json"
    json_path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {json_path}")
    if markdown:
        from benchmarks_md import publish  # scripts/benchmarks_md.py

        what = (
            "Post-processing settings scored on the validation slides of a quick reproduction "
            "(the held-out slides are never looked at): the defaults are the chosen row."
        )
        tables = [table(rows, slides, chosen), f"chosen: {_label(chosen['config'])}"]
        publish(markdown, "postprocess_ablation.py", "Choosing the tissue mask's "
                "post-processing (postprocess_ablation.py)", what, tables)  # fmt: skip


if __name__ == "__main__":
    sys.exit(app())
