"""What one validation pays per probability map besides predicting it: the counts at every
cut validation may choose, the closing, and the tissue mask at each hole limit it may choose.

Usage: python scripts/bench_validation.py [--size 8192x6554] [--repeats 3]
       [--json out/bench_validation.json] [--markdown docs/benchmarks.md]

The map is synthetic (smoothed noise cut into blobs with holes and specks, its probabilities
spread around the cut, as round(255 p)), at 0.5 µm/px. The counts are timed on the uint8 map
(one histogram per block) and on the same values as float32 (the per-cut loop every other
dtype takes), in one process, so their ratio holds on a shared machine. The closing is timed
twice, the same chunks and halos: as gigamlx applies the disk (on rows of bits) and with the
Euclidean distance transforms it used before (scipy's), checked to give the same mask. Prints a
table, writes JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from unittest import mock

import numpy as np
from benchmarks_md import sgemm_gflops  # scripts/benchmarks_md.py
from scipy import ndimage

from gigamlx.eval.metrics import evaluate_thresholds
from gigamlx.runs.config import POSTPROCESS, parse_region
from gigamlx.slide import morphology
from gigamlx.slide.morphology import pixel_settings, postprocessed_array
from gigamlx.train.validate import BLOCK_HW, FILL_CHOICES_UM2, THRESHOLDS

MPP = 0.5
HEADER = ("step", "map", "median s", "ns / px", "vs first")
MARKDOWN_TITLE = "Validation's scoring of one map (bench_validation.py)"
MARKDOWN_WHAT = (
    "Seconds one validation spends per probability map besides predicting it: the counts at "
    "all its cuts (uint8 histogram vs the per-cut float loop, same values) and the tissue mask "
    "at each hole limit it may choose; median of `--repeats`, one process."
)


def synthetic_map(hw: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """((H, W) uint8 round(255 p), (H, W) bool truth): blobs from 8x-upsampled smoothed
    noise, with the map's probabilities noisy around the truth."""
    rng = np.random.default_rng(seed)
    coarse_hw = (-(-hw[0] // 8), -(-hw[1] // 8))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_hw, dtype=np.float32), 3)
    truth = np.repeat(np.repeat(field > 0, 8, 0), 8, 1)[: hw[0], : hw[1]]
    prob = np.where(truth, 200, 40).astype(np.int16)
    prob += rng.integers(-60, 60, hw, dtype=np.int16)
    return np.clip(prob, 0, 255).astype(np.uint8), truth


def _edt_dilate(block: np.ndarray, radius_px: float) -> np.ndarray:
    if not block.any():
        return np.zeros_like(block)
    return ndimage.distance_transform_edt(~block) <= radius_px


def _edt_erode(block: np.ndarray, radius_px: float) -> np.ndarray:
    if block.all():
        return block.copy()
    return ndimage.distance_transform_edt(block) > radius_px


def _closing(cut: np.ndarray, settings, distance_transform: bool):
    """The closing step alone (no holes filled, no pieces dropped), as an in-memory plane."""
    only_closing = settings._replace(fill_holes_px=0.0, min_object_px=0.0)
    if not distance_transform:
        return postprocessed_array(cut, only_closing)
    with (
        mock.patch.object(morphology, "_dilate", _edt_dilate),
        mock.patch.object(morphology, "_erode", _edt_erode),
    ):
        return postprocessed_array(cut, only_closing)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rows(prob: np.ndarray, truth: np.ndarray, repeats: int) -> list[dict]:
    """One row per timed step, with its median seconds."""
    as_float = prob.astype(np.float32) / np.float32(255)
    cut = prob >= round(255 * 0.5)
    timed = {
        ("counts at 17 cuts", "uint8"): lambda: evaluate_thresholds(
            prob, truth, THRESHOLDS, BLOCK_HW
        ),
        ("counts at 17 cuts", "float32"): lambda: evaluate_thresholds(
            as_float, truth, THRESHOLDS, BLOCK_HW
        ),
    }
    settings = pixel_settings(POSTPROCESS, MPP)
    closing = f"closing {POSTPROCESS.closing_um:g} µm"
    bits, distances = (_closing(cut, settings, edt)[:, :] for edt in (False, True))
    if not np.array_equal(bits, distances):
        raise SystemExit("the two closings differ: the bit-row disk is wrong")
    timed[(f"{closing}, distance transforms", "bool")] = lambda: _closing(cut, settings, True)
    timed[(f"{closing}, rows of bits", "bool")] = lambda: _closing(cut, settings, False)
    for fill in FILL_CHOICES_UM2:
        settings = pixel_settings(dataclasses.replace(POSTPROCESS, fill_holes_um2=fill), MPP)
        timed[(f"tissue mask, holes <= {fill:g} µm²", "bool")] = lambda s=settings: (
            postprocessed_array(cut, s)
        )
    found = []
    for (step, kind), fn in timed.items():
        fn()  # warm: first-call costs are not what a validation pays every time
        found.append({"step": step, "map": kind, "seconds": _median_seconds(fn, repeats)})
    return found


def _cells(row: dict, first: float, n_px: int) -> list[str]:
    return [
        row["step"],
        row["map"],
        f"{row['seconds']:.3f}",
        f"{row['seconds'] / n_px * 1e9:.1f}",
        f"{row['seconds'] / first:.2f}x",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="8192x6554", help="HxW of the map (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("out/bench_validation.json"))
    parser.add_argument(
        "--markdown",
        type=Path,
        help="rewrite this script's section of this file (e.g. docs/benchmarks.md)",
    )
    args = parser.parse_args()
    hw = parse_region(args.size)
    prob, truth = synthetic_map(hw)
    found = rows(prob, truth, args.repeats)
    gflops = sgemm_gflops()
    n_px = hw[0] * hw[1]
    table = [_cells(row, found[0]["seconds"], n_px) for row in found]
    caption = f"one {hw[0]}x{hw[1]} map (HxW) at {MPP} µm/px, {args.repeats} repeats"
    print(caption)
    for cells in [list(HEADER), *table]:
        print(f"{cells[0]:<40}{cells[1]:>9}{cells[2]:>10}{cells[3]:>9}{cells[4]:>9}")
    print(f"sgemm {gflops:.0f} GFLOP/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    summary = {"hw": list(hw), "mpp": MPP, "sgemm_gflops": gflops, "rows": found}
    args.json.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.json}")
    if args.markdown:
        from benchmarks_md import markdown_table, publish  # scripts/benchmarks_md.py

        tables = [caption, markdown_table(HEADER, table)]
        publish(args.markdown, "bench_validation.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, gflops)


if __name__ == "__main__":
    main()
