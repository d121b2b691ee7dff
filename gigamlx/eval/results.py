"""What an evaluation found and how it is shown: per-slide results, the rich table (one row
per slide, then mean ± std) and the JSON report (settings, edge-case rules, counts)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from gigamlx.eval.metrics import METRIC_NAMES, EvaluationError, PixelCounts, summarize

EDGE_CASES = (
    "prediction and mask both empty: dice = iou = precision = recall = 1; "
    "nothing predicted but mask non-empty: precision = recall = dice = iou = 0; "
    "mask empty but prediction non-empty: recall = precision = dice = iou = 0; "
    "soft dice = 1 when sum(p) + sum(g) = 0; "
    "std is the sample std (ddof=1), null in JSON and '—' in the table for one slide"
)


@dataclass
class SlideResult:
    """One prediction/mask pair: its paths, grid and summed pixel counts."""

    pred_path: str
    mask_path: str
    shape_hw: tuple[int, int]
    counts: PixelCounts
    baseline_counts: PixelCounts | None = None
    pred_scale: int = 255  # a uint8 prediction's value for p = 1
    note: str | None = None  # how the prediction was read, when auto-detection chose
    threshold: float = 0.5  # the cut the prediction was scored at
    scored: str = "map"  # "map", or "labels/tissue": a prediction store's tissue mask


@dataclass
class Report:
    """All slides of one evaluation run and the settings they were scored with."""

    slides: list[SlideResult]
    threshold: float | None  # the cut every slide was scored at; None: they differ
    level: int
    baseline: str | None = None

    def summary(self) -> dict[str, dict[str, Any]]:
        return summarize([s.counts.metrics() for s in self.slides])

    def baseline_summary(self) -> dict[str, dict[str, Any]] | None:
        if self.baseline is None:
            return None
        return summarize([s.baseline_counts.metrics() for s in self.slides])


def _fmt_mean_std(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "—"
    std = "—" if stats["std"] is None else f"{stats['std']:.4f}"
    return f"{stats['mean']:.4f}\n± {std}"


def render_table(report: Report) -> Table:
    """Rich table: one row per slide, then `mean ± std` over slides (std '—' for one slide).

    Grid sizes and counts are left to the JSON report, to keep the table in 80 columns.
    """
    cut = "each prediction's cut" if report.threshold is None else report.threshold
    title = f"Dice at threshold {cut}, level {report.level}"
    table = Table(title=title)
    table.add_column("slide", overflow="fold", min_width=12)
    for name in METRIC_NAMES:
        table.add_column(name.replace("_", " "), justify="right")
    if report.baseline:
        table.add_column(f"{report.baseline} dice", justify="right")
    for slide in report.slides:
        metrics = slide.counts.metrics()
        scored = "" if slide.scored == "map" else f" ({slide.scored})"
        cells = [Path(slide.pred_path).name + scored]
        cells += [f"{metrics[name]:.4f}" for name in METRIC_NAMES]
        if report.baseline:
            cells.append(f"{slide.baseline_counts.metrics()['dice']:.4f}")
        table.add_row(*cells)
    summary = report.summary()
    cells = [f"mean ± std (n={len(report.slides)})"]
    cells += [_fmt_mean_std(summary[name]) for name in METRIC_NAMES]
    if report.baseline:
        cells.append(_fmt_mean_std(report.baseline_summary()["dice"]))
    table.add_row(*cells, style="bold", end_section=True)
    return table


def _counts_json(counts: PixelCounts) -> dict[str, Any]:
    return {
        "metrics": counts.metrics(),
        "counts": {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn, "tn": counts.tn},
        "soft_sums": {"sum_p": counts.sum_p, "sum_g": counts.sum_g, "sum_pg": counts.sum_pg},
    }


def report_to_json(report: Report) -> dict[str, Any]:
    """JSON-ready dict: settings, edge-case rules, per-slide metrics/counts, summary."""
    slides = []
    for slide in report.slides:
        row = {"pred": slide.pred_path, "mask": slide.mask_path, "shape_hw": slide.shape_hw}
        row["pred_scale"] = slide.pred_scale
        row["scored"], row["threshold"] = slide.scored, slide.threshold
        row.update(_counts_json(slide.counts))
        if slide.baseline_counts is not None:
            row["baseline"] = _counts_json(slide.baseline_counts)
        slides.append(row)
    return {
        "threshold": report.threshold,
        "level": report.level,
        "baseline": report.baseline,
        "edge_cases": EDGE_CASES,
        "n_slides": len(report.slides),
        "slides": slides,
        "summary": report.summary(),
        "baseline_summary": report.baseline_summary(),
    }


def write_json(report: Report, path: str | Path) -> None:
    """Write `report_to_json(report)` to `path` (indented UTF-8)."""
    try:
        Path(path).write_text(json.dumps(report_to_json(report), indent=2, ensure_ascii=False))
    except OSError as err:
        raise EvaluationError(f"{path}: cannot write JSON ({err.strerror})") from err
