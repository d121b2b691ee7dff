"""How a uint8 prediction is read: round(255 p) (what `predict` writes) or a hard 0/1 map.

`--pred-scale auto` reads gigamlx's own probability maps as 0-255 without looking; any other
uint8 map whose values are only 0 and 1 is read as 0/1 (1 = tissue), and the run says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gigamlx.core.arrays import WindowArray
from gigamlx.eval.metrics import EvaluationError
from gigamlx.slide.planes import aligned_block_hw, iter_blocks
from gigamlx.slide.written import written_kind

logger = logging.getLogger(__name__)

PRED_SCALES = ("auto", "255", "1")


def check_pred_scale(option: str) -> str:
    if option not in PRED_SCALES:
        raise EvaluationError(f"--pred-scale must be one of {', '.join(PRED_SCALES)}, got {option}")
    return option


def uint8_max_at_most_1(pred: WindowArray, block_hw: tuple[int, int] | None = None) -> bool:
    """True when no pixel of the uint8 plane exceeds 1 and some pixel is 1.

    Streams block by block and stops at the first value above 1, so a 0-255 map with tissue
    costs about one block; a true 0/1 map costs one extra read of the prediction.
    """
    block_hw = block_hw or aligned_block_hw(pred.chunk_hw or tuple(pred.shape[:2]))
    seen_one = False
    for rows, cols in iter_blocks(tuple(pred.shape[:2]), block_hw):
        high = int(np.asarray(pred[rows, cols]).max(initial=0))
        if high > 1:
            return False
        seen_one |= high == 1
    return seen_one


def resolve_pred_scale(
    pred: WindowArray, option: str = "auto", block_hw: tuple[int, int] | None = None
) -> tuple[int, str | None]:
    """The divisor for the prediction's uint8 values, and a note when auto chose 0/1.

    Returns:
        (255 or 1, None or one line saying how the map was read). Non-uint8 maps: (255, None),
        the scale is not used.
    """
    check_pred_scale(option)
    if pred.dtype != np.uint8:
        return 255, None
    if option != "auto":
        return int(option), None
    if written_kind(Path(pred.source)) == "prediction":
        return 255, None
    if not uint8_max_at_most_1(pred, block_hw):
        return 255, None
    note = (
        f"{pred.source}: uint8 with values 0 and 1 only, read as a 0/1 map (1 = tissue); "
        "pass --pred-scale 255 to read it as round(255 p)"
    )
    logger.debug(note)
    return 1, note
