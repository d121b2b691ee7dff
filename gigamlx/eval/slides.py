"""Streaming Dice evaluation of predicted probability maps against tissue masks, per slide.

Shared by `scripts/evaluate_dice.py` and `gigamlx eval`: `run_evaluation` evaluates, prints a
rich table (per-slide rows and a mean ± std row) and writes the JSON report (eval/results.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from rich.console import Console

from gigamlx.core.arrays import WindowArray
from gigamlx.eval.baseline import BASELINES, baseline_plane
from gigamlx.eval.metrics import (
    EvaluationError,
    check_threshold,
    evaluate_pair,
)
from gigamlx.eval.results import Report, SlideResult, render_table, report_to_json, write_json
from gigamlx.eval.scale import check_pred_scale, resolve_pred_scale
from gigamlx.runs.config import DEFAULT_THRESHOLD
from gigamlx.slide.planes import TISSUE_LABEL, ArrayReadError, open_plane, prediction_info

logger = logging.getLogger(__name__)


def _open(path: str | Path, level: int) -> WindowArray:
    try:
        return open_plane(path, level)
    except ArrayReadError as err:
        raise EvaluationError(str(err)) from err


def _check_inputs(preds: Sequence, masks: Sequence, threshold: float | None, baseline: str | None):
    if threshold is not None:
        check_threshold(threshold)
    if not preds:
        raise EvaluationError("no prediction files given")
    if len(preds) != len(masks):
        raise EvaluationError(
            f"{len(preds)} prediction file(s) but {len(masks)} mask file(s); give one mask each"
        )
    if baseline is not None and baseline not in BASELINES:
        raise EvaluationError(f"unknown baseline {baseline!r}; choose from {list(BASELINES)}")


class Scored(NamedTuple):
    """What of a prediction file is scored, and how."""

    path: Path  # the file or group read
    threshold: float
    pred_scale: str
    scored: str  # "map" or "labels/tissue"


def what_to_score(
    pred_path: str | Path, threshold: float | None, pred_scale: str, raw: bool = False
) -> Scored:
    """A prediction store of `gigamlx predict` is scored by its tissue mask (`labels/tissue`,
    post-processed) when it has one and `raw` is False, else by its map at `threshold` or, if
    None, at the cut it records (0.5 where none). Any other file: its map."""
    info = prediction_info(pred_path)
    if info is not None and info.tissue_label is not None and not raw:
        return Scored(info.tissue_label, 0.5, "1", TISSUE_LABEL)
    recorded = info.threshold if info is not None else None
    cut = threshold if threshold is not None else recorded or DEFAULT_THRESHOLD
    return Scored(Path(pred_path), cut, pred_scale, "map")


def evaluate_slide(
    pred_path: str | Path,
    mask_path: str | Path,
    threshold: float | None = DEFAULT_THRESHOLD,
    baseline: str | None = None,
    level: int = 0,
    block_hw: tuple[int, int] | None = None,
    pred_scale: str = "auto",
    raw: bool = False,
) -> SlideResult:
    """Score one prediction file against one mask file, streamed block by block.

    Args:
        pred_path: probability map (OME-Zarr, zarr, TIFF/OME-TIFF, PNG), uint8 0-255 or float,
            or a prediction store (`what_to_score`: its tissue mask unless `raw`).
        mask_path: mask in the same formats (non-zero = tissue) or an ingested gigamlx store.
        threshold: p >= threshold counts as predicted tissue; None: the prediction's
            recorded cut (0.5 where none).
        baseline: "otsu" or "morph" to also score a classical detector (eval/baseline.py).
        level: pyramid level both files are read at (0 = full resolution).
        block_hw: (rows, cols) per streamed block; default follows the prediction's chunks.
        pred_scale: "255", "1" (a 0/1 map) or "auto" (see `gigamlx.eval.scale`), for uint8.
        raw: score a prediction store's probability map even where it has a tissue mask.

    Raises:
        EvaluationError: unreadable files, grids that differ, NaN or out-of-range values.
    """
    target = what_to_score(pred_path, threshold, pred_scale, raw)
    pred = _open(target.path, level)
    try:
        mask = _open(mask_path, level)
        try:
            scale, note = resolve_pred_scale(pred, target.pred_scale, block_hw)
            result = _score(pred, mask, target.threshold, baseline, level, block_hw, scale)
            result.pred_scale, result.note = scale, note
            result.threshold, result.scored = target.threshold, target.scored
            if target.scored != "map":
                result.pred_path = str(pred_path)
            return result
        finally:
            mask.close()
    except ArrayReadError as err:  # a chunk that fails to decode mid-stream
        raise EvaluationError(str(err)) from err
    finally:
        pred.close()


def _score(
    pred: WindowArray,
    mask: WindowArray,
    threshold: float,
    baseline: str | None,
    level: int,
    block_hw: tuple[int, int] | None,
    pred_scale: int = 255,
) -> SlideResult:
    if pred.shape != mask.shape:
        raise EvaluationError(
            f"grids differ at level {level}: prediction {pred.source} is {pred.shape} "
            f"(H, W) but mask {mask.source} is {mask.shape}"
        )
    counts = evaluate_pair(pred, mask, threshold, block_hw, pred.source, pred_scale)
    base = None
    if baseline is not None:
        base_pred = baseline_plane(baseline, mask.source, level, mask.chunk_hw)
        # the baseline is a hard 0/1 mask: 0.5 splits it whatever --threshold is
        base = evaluate_pair(base_pred, mask, 0.5, block_hw, pred_name=baseline)
    logger.info("%s: dice %.4f", pred.source, counts.metrics()["dice"])
    return SlideResult(pred.source, mask.source, pred.shape, counts, base)


def evaluate_files(
    preds: Sequence[str | Path],
    masks: Sequence[str | Path],
    threshold: float | None = DEFAULT_THRESHOLD,
    baseline: str | None = None,
    level: int = 0,
    block_hw: tuple[int, int] | None = None,
    pred_scale: str = "auto",
    raw: bool = False,
) -> Report:
    """Score each prediction against the mask at the same position (see `evaluate_slide`).

    Raises:
        EvaluationError: bad threshold or baseline, counts that differ, or any slide's error.
    """
    _check_inputs(preds, masks, threshold, baseline)
    check_pred_scale(pred_scale)
    slides = [
        evaluate_slide(p, m, threshold, baseline, level, block_hw, pred_scale, raw)
        for p, m in zip(preds, masks, strict=True)
    ]
    cuts = {s.threshold for s in slides}  # one cut for all (the usual case): the report's
    return Report(slides, cuts.pop() if len(cuts) == 1 else None, level, baseline)


def run_evaluation(
    preds: Sequence[str | Path],
    masks: Sequence[str | Path],
    threshold: float | None = DEFAULT_THRESHOLD,
    json_path: str | Path | None = None,
    baseline: str | None = None,
    level: int = 0,
    console: Console | None = None,
    pred_scale: str = "auto",
    raw: bool = False,
) -> Report:
    """Evaluate, print the table to `console` (stdout by default) and write `json_path`.

    The one entry point for `scripts/evaluate_dice.py` and `gigamlx eval`. `json_path` "-"
    writes the JSON to stdout and the table to stderr, so stdout is one JSON document.

    Raises:
        EvaluationError: any bad input; the message is one line, fit for the user.
    """
    report = evaluate_files(
        preds, masks, threshold, baseline, level, pred_scale=pred_scale, raw=raw
    )
    to_stdout = json_path is not None and str(json_path) == "-"
    (console or Console(stderr=to_stdout)).print(render_table(report))
    if to_stdout:
        sys.stdout.write(json.dumps(report_to_json(report), indent=2, ensure_ascii=False) + "\n")
    elif json_path is not None:
        write_json(report, json_path)
        logger.info("wrote %s", json_path)
    return report


def expand_multi_value_option(args: Sequence[str], option: str) -> list[str]:
    """Rewrite `OPT a b c` into `OPT a OPT b OPT c`, so `--masks M1 M2` works with click.

    Values run from `option` up to the next token starting with "-".
    """
    out, in_option = [], False
    for token in args:
        if token == option:
            in_option = True
            continue
        if token.startswith("-"):
            in_option = False
        out += [option, token] if in_option else [token]
    return out
