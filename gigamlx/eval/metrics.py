"""Segmentation metrics streamed block by block: Dice, IoU, precision, recall, soft Dice.

Counts are exact integers and soft sums float64, so a streamed pass over a 100000 x 200000
pair gives the counts of an in-memory pass exactly and its soft sums to rounding.

Edge cases (P = predicted tissue pixels, G = mask tissue pixels, both at the threshold):
    - P and G both empty: Dice = IoU = precision = recall = 1 (a perfect "no tissue").
    - P empty, G not: Dice = IoU = recall = 0, precision = 0 (nothing predicted, so no
      credit; undefined 0/0 is scored as a miss).
    - G empty, P not: Dice = IoU = precision = 0, recall = 0 (likewise).
    - soft Dice = 2 sum(p g) / (sum(p) + sum(g)), and 1 when sum(p) + sum(g) = 0.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import astuple, dataclass, fields
from typing import Any

import numpy as np

from gigamlx.runs.config import DEFAULT_THRESHOLD
from gigamlx.slide.planes import aligned_block_hw, iter_blocks

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dice", "iou", "precision", "recall", "soft_dice")


class EvaluationError(ValueError):
    """Bad evaluation input (NaN, threshold, shapes, counts, files); one line, no traceback."""


@dataclass
class PixelCounts:
    """Confusion counts (exact ints) and soft sums (float64) over some pixels.

    Attributes:
        tp, fp, fn, tn: pixels by (prediction >= threshold, mask != 0).
        sum_p: sum of probabilities p in [0, 1].
        sum_g: number of mask tissue pixels, as float (= tp + fn).
        sum_pg: sum of p over mask tissue pixels.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    sum_p: float = 0.0
    sum_g: float = 0.0
    sum_pg: float = 0.0

    def __iadd__(self, other: PixelCounts) -> PixelCounts:
        for field in fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self

    @property
    def n_px(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, float]:
        """Dice, IoU, precision, recall and soft Dice, with the module's edge-case rules."""
        tp, fp, fn = self.tp, self.fp, self.fn
        both_empty = tp + fp + fn == 0
        soft_den = self.sum_p + self.sum_g
        return {
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "iou": _ratio(tp, tp + fp + fn, both_empty),
            "precision": _ratio(tp, tp + fp, both_empty),
            "recall": _ratio(tp, tp + fn, both_empty),
            "soft_dice": 2.0 * self.sum_pg / soft_den if soft_den > 0 else 1.0,
        }


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """num / den; an undefined 0/0 is 1 when prediction and mask are both empty, else 0."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def to_probability(
    block: np.ndarray, source: str = "prediction", scale: float = 255.0
) -> np.ndarray:
    """Prediction block as float64 probabilities in [0, 1].

    Args:
        block: (h, w) uint8 in 0..scale (divided by `scale`), bool, or float in [0, 1].
        source: name used in error messages.
        scale: what a uint8 1.0 is: 255 for round(255 p), 1 for a 0/1 map.

    Raises:
        EvaluationError: another dtype.
    """
    if block.dtype == np.uint8:
        prob = block.astype(np.float64)
        prob /= scale  # in place: one float64 block, not two
        return prob
    if block.dtype == np.bool_ or np.issubdtype(block.dtype, np.floating):
        return block.astype(np.float64)
    raise EvaluationError(
        f"{source}: dtype {block.dtype} not supported (uint8 0-255 or float 0-1 expected)"
    )


def block_counts(
    prob: np.ndarray, tissue: np.ndarray, thresholds: tuple[float, ...]
) -> list[PixelCounts]:
    """Counts and soft sums of one block at each of `thresholds` (the soft sums, which do not
    depend on the threshold, are summed once).

    Args:
        prob: (h, w) float64 probabilities in [0, 1].
        tissue: (h, w) bool mask.
        thresholds: a pixel is predicted tissue when prob >= threshold.
    """
    n_true = int(np.count_nonzero(tissue))
    sum_p = float(prob.sum(dtype=np.float64))
    sum_pg = float(prob.sum(where=tissue, dtype=np.float64))
    counts = []
    for threshold in thresholds:
        predicted = prob >= threshold
        tp = int(np.count_nonzero(predicted & tissue))
        fp, fn = int(np.count_nonzero(predicted)) - tp, n_true - tp
        tn = prob.size - tp - fp - fn
        counts.append(PixelCounts(tp, fp, fn, tn, sum_p, float(n_true), sum_pg))
    return counts


def u8_block_counts(
    values: np.ndarray, tissue: np.ndarray, thresholds: tuple[float, ...], scale: float
) -> list[PixelCounts]:
    """`block_counts` of a uint8 block (p = value / `scale`) from one histogram of its values
    by mask: a value is predicted at a cut exactly when `to_probability` makes it so, and the
    soft sums are exact integer sums divided once. One pass, whatever the number of cuts."""
    index = np.left_shift(tissue.view(np.uint8), 8, dtype=np.uint16)  # 256 + value: tissue
    index |= values
    hist = np.bincount(index.ravel(), minlength=512)
    glass, inside = hist[:256], hist[256:]
    levels = np.arange(256, dtype=np.int64)
    as_prob = levels.astype(np.float64) / scale  # the float64 values to_probability gives
    n_true = int(inside.sum())
    sum_p = float(int((glass + inside) @ levels) / scale)
    sum_pg = float(int(inside @ levels) / scale)
    counts = []
    for threshold in thresholds:
        predicted = as_prob >= threshold
        tp, fp = int(inside[predicted].sum()), int(glass[predicted].sum())
        fn, tn = n_true - tp, int(glass.sum()) - fp
        counts.append(PixelCounts(tp, fp, fn, tn, sum_p, float(n_true), sum_pg))
    return counts


def check_threshold(threshold: float) -> None:
    """Raise EvaluationError unless 0 <= threshold <= 1 (and not NaN)."""
    if not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"threshold must be in [0, 1], got {threshold}")


def _check_block(prob: np.ndarray, source: str, rows: slice, cols: slice) -> None:
    where = f"block rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}"
    if np.isnan(prob).any():
        raise EvaluationError(f"{source}: NaN in prediction ({where})")
    low, high = float(prob.min(initial=0.0)), float(prob.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        raise EvaluationError(
            f"{source}: probabilities outside [0, 1] (min {low}, max {high}; {where})"
        )


def _check_u8_block(block: np.ndarray, source: str, rows: slice, cols: slice, scale: float):
    if scale < 255 and int(block.max(initial=0)) > scale:
        high = int(block.max()) / scale
        where = f"block rows {rows.start}:{rows.stop}, cols {cols.start}:{cols.stop}"
        raise EvaluationError(
            f"{source}: probabilities outside [0, 1] (min 0.0, max {high}; {where})"
        )


def evaluate_pair(
    pred: Any,
    mask: Any,
    threshold: float = DEFAULT_THRESHOLD,
    block_hw: tuple[int, int] | None = None,
    pred_name: str = "prediction",
    pred_scale: float = 255.0,
) -> PixelCounts:
    """Stream a prediction and a mask of the same (H, W) grid block by block.

    Memory is bounded by one block of each (float64 for the prediction), whatever (H, W).

    Args:
        pred: (H, W) sliceable probabilities (uint8 0-255, bool or float 0-1), e.g. a
            `WindowArray`, a zarr array or a numpy array.
        mask: (H, W) sliceable mask; any non-zero value is tissue.
        threshold: hard-prediction threshold in [0, 1]; p >= threshold is tissue.
        block_hw: (rows, cols) per block; default: the prediction's chunks grown to ~2048 px.
        pred_name: name for error messages.
        pred_scale: a uint8 prediction's value for p = 1 (255, or 1 for a 0/1 map).

    Returns:
        Summed `PixelCounts` of all blocks.

    Raises:
        EvaluationError: bad threshold, shapes differ, NaN or out-of-range probabilities.
    """
    return evaluate_thresholds(pred, mask, (threshold,), block_hw, pred_name, pred_scale)[0]


def evaluate_thresholds(
    pred: Any,
    mask: Any,
    thresholds: tuple[float, ...],
    block_hw: tuple[int, int] | None = None,
    pred_name: str = "prediction",
    pred_scale: float = 255.0,
) -> list[PixelCounts]:
    """`evaluate_pair` at each of `thresholds` in one read of both arrays: the summed counts
    in the order of `thresholds` (the soft sums do not depend on the threshold)."""
    for threshold in thresholds:
        check_threshold(threshold)
    pred_hw, mask_hw = tuple(pred.shape), tuple(mask.shape)
    if pred_hw != mask_hw:
        raise EvaluationError(f"shape mismatch: prediction {pred_hw} vs mask {mask_hw}")
    if block_hw is None:
        block_hw = aligned_block_hw(getattr(pred, "chunk_hw", None) or _chunks_hw(pred))
    totals = [PixelCounts() for _ in thresholds]
    for rows, cols in iter_blocks(pred_hw, block_hw):
        block = np.asarray(pred[rows, cols])
        tissue = np.asarray(mask[rows, cols]) != 0
        if block.dtype == np.uint8:
            _check_u8_block(block, pred_name, rows, cols, pred_scale)
            found = u8_block_counts(block, tissue, thresholds, pred_scale)
        else:
            prob = to_probability(block, pred_name, pred_scale)
            _check_block(prob, pred_name, rows, cols)
            found = block_counts(prob, tissue, thresholds)
        for total, counts in zip(totals, found, strict=True):
            total += counts
    logger.debug("%s: %d px, tp=%d fp=%d fn=%d", pred_name, totals[0].n_px, *astuple(totals[0])[:3])
    return totals


def _chunks_hw(array: Any) -> tuple[int, int]:
    chunks = getattr(array, "chunks", None)
    return tuple(chunks[:2]) if chunks and len(chunks) >= 2 else tuple(array.shape[:2])


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and sample std (ddof=1) of each metric over slides.

    Args:
        rows: one dict of metrics (as from `PixelCounts.metrics`) per slide.

    Returns:
        {metric: {"mean": m, "std": s, "n": n}}. The sample std of one slide is undefined:
        std is None for n = 1 (shown as "—"), and mean is None too for n = 0.
    """
    summary = {}
    for name in METRIC_NAMES:
        values = [row[name] for row in rows]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else None
        summary[name] = {"mean": mean, "std": std, "n": len(values)}
    return summary
