"""Classical tissue detectors scored beside the model, on the same pixels.

otsu: Otsu on HSV saturation, `gigamlx.slide.masks.OtsuMask`, the one `gigamlx ingest --otsu`
uses, fitted the same way on the store's own pyramid (`masks.OTSU_DEFINITION`).

morph: the morphological tissue detector as histolab and TIAToolbox build it, on top of that
Otsu mask. histolab's `TissueMask` (slide filters) turns RGB to grey, thresholds at Otsu,
dilates (a disk), fills holes below an area and removes objects below an area; TIAToolbox's
`MorphologicalMasker` turns RGB to grey, thresholds at Otsu (fitted on a low-resolution
thumbnail), drops regions below a minimum area and dilates with an ellipse scaled by the pixel
size (32 µm across). Here: the otsu mask (saturation rather than grey, so the two baselines
differ by the morphology alone), closed with a disk (a dilation then an erosion: a dilation
alone would grow every edge outwards by its radius), holes inside tissue filled and small
pieces removed, by the same streamed, exact steps as the model's post-processing
(`gigamlx.slide.morphology`) with `runs.config.MORPH_POSTPROCESS`. Our own implementation:
neither library installs as a light wheel (OpenCV, scikit-image and more).

Both need the slide's RGB image, so masks must be slide stores.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from gigamlx.core.arrays import WindowArray
from gigamlx.eval.metrics import EvaluationError
from gigamlx.runs.config import MORPH_POSTPROCESS, PostprocessConfig
from gigamlx.slide.planes import (
    DEFAULT_BLOCK_PX,
    ArrayReadError,
    open_store_image,
    open_store_levels,
)

logger = logging.getLogger(__name__)

BASELINES = ("otsu", "morph")


def baseline_plane(
    name: str,
    store_path: str | Path,
    level: int = 0,
    chunk_hw: tuple[int, int] = (DEFAULT_BLOCK_PX,) * 2,
) -> WindowArray:
    """The (H, W) bool prediction of baseline `name` for the slide store at `store_path`.

    Args:
        name: "otsu": `masks.OTSU_DEFINITION`, applied at `level`; "morph": that mask,
            post-processed with `MORPH_POSTPROCESS` at the level's pixel size.
        store_path: a slide store (image + mask), as from `gigamlx ingest`.
        level: pyramid level to predict at.
        chunk_hw: (rows, cols) per read.

    Raises:
        EvaluationError: unknown baseline, `store_path` is not a slide store, or (morph) it
            has no pixel size.
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
    plane = mask_plane(masker, chunk_hw)
    if name == "otsu":
        return plane
    return morph_plane(plane, _store_mpp(store_path, level), chunk_hw, str(store_path))


def _store_mpp(store_path: str | Path, level: int) -> float | None:
    from gigamlx.slide.store import open_store

    return open_store(store_path).level_mpp(level)


def morph_plane(
    otsu: WindowArray,
    mpp: float | None,
    chunk_hw: tuple[int, int],
    source: str = "slide",
    config: PostprocessConfig = MORPH_POSTPROCESS,
) -> WindowArray:
    """(H, W) bool view of the morphological detector: the (H, W) bool `otsu` plane closed,
    holes filled, small pieces removed (`config`, in µm at `mpp` µm/px); computed once,
    streamed, and held compressed in memory.

    Raises:
        EvaluationError: no pixel size (the areas are in µm²).
    """
    from gigamlx.slide.morphology import pixel_settings, postprocessed_array

    if not mpp:
        raise EvaluationError(f"--baseline morph needs the pixel size (mpp) of {source}")
    mask = postprocessed_array(otsu, pixel_settings(config, mpp))
    return WindowArray(
        otsu.shape,
        bool,
        lambda box: np.asarray(mask[box.y0 : box.y1, box.x0 : box.x1]) != 0,
        chunk_hw,
    )


def held_plane(plane: WindowArray) -> WindowArray:
    """`plane` ((H, W) bool) computed once, on all cores, and held compressed in memory: for
    a plane read by several passes (scored, then closed chunk by chunk with halos)."""
    from gigamlx.slide.morphology import held_array

    held = held_array(plane)
    return WindowArray(
        plane.shape,
        bool,
        lambda box: np.asarray(held[box.y0 : box.y1, box.x0 : box.x1]) != 0,
        plane.chunk_hw,
    )


def mask_plane(masker: Any, chunk_hw: tuple[int, int]) -> WindowArray:
    """(H, W) bool view of a masker (anything with `image_hw` and `read(Box)`)."""
    return WindowArray(masker.image_hw, bool, lambda box: masker.read(box) != 0, chunk_hw)
