"""Classical tissue detector scored beside the model: Otsu on HSV saturation.

The detector is `gigamlx.slide.masks.OtsuMask`, the one `gigamlx ingest --otsu` uses, fitted
the same way on the store's own pyramid (`masks.OTSU_DEFINITION`); it needs the slide's RGB
image, so masks must be slide stores.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gigamlx.core.arrays import WindowArray
from gigamlx.eval.metrics import EvaluationError
from gigamlx.slide.planes import (
    DEFAULT_BLOCK_PX,
    ArrayReadError,
    open_store_image,
    open_store_levels,
)

logger = logging.getLogger(__name__)

BASELINES = ("otsu",)


def baseline_plane(
    name: str,
    store_path: str | Path,
    level: int = 0,
    chunk_hw: tuple[int, int] = (DEFAULT_BLOCK_PX,) * 2,
) -> WindowArray:
    """The (H, W) bool prediction of baseline `name` for the slide store at `store_path`.

    Args:
        name: "otsu": `masks.OTSU_DEFINITION`, applied at `level`.
        store_path: a slide store (image + mask), as from `gigamlx ingest`.
        level: pyramid level to predict at.
        chunk_hw: (rows, cols) per read.

    Raises:
        EvaluationError: unknown baseline, or `store_path` is not a slide store.
    """
    if name not in BASELINES:
        raise EvaluationError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    from gigamlx.slide.masks import OtsuMask  # only runs that ask for the baseline need it

    try:
        image = open_store_image(store_path, level)
        levels = open_store_levels(store_path)
    except ArrayReadError as err:
        raise EvaluationError(
            f"--baseline {name} needs masks given as slide stores (image + mask): {err}"
        ) from err
    masker = OtsuMask(image, OtsuMask.fit(levels, source=str(store_path)).threshold)
    logger.info("%s: Otsu saturation threshold %d", store_path, masker.threshold)
    return WindowArray(masker.image_hw, bool, lambda box: masker.read(box) != 0, chunk_hw)
