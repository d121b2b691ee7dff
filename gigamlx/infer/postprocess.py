"""The tissue mask of a prediction: the probability map cut at the threshold and post-processed
(slide/morphology.py), written as the NGFF label image `labels/tissue` of the prediction store.

The raw probability map stays as it is beside it; the overlay, the OME-TIFF and the GeoJSON
are drawn from the label image when there is one (infer/predict.py), and `gigamlx eval`
scores it (`--raw`: the map at the recorded cut).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from gigamlx.core.arrays import WindowArray
from gigamlx.core.progress import Progress
from gigamlx.runs.config import PostprocessConfig
from gigamlx.slide import ngff
from gigamlx.slide.morphology import pixel_settings, write_postprocessed
from gigamlx.slide.planes import TISSUE_LABEL, TISSUE_LABEL_NAME
from gigamlx.slide.pyramid import build_pyramid

log = logging.getLogger(__name__)

LABEL_NAME, LABEL_PATH = TISSUE_LABEL_NAME, TISSUE_LABEL


def postprocess_record(
    config: PostprocessConfig | None, mpp: float | None, threshold: float
) -> dict:
    """What the prediction's provenance says about its post-processing (JSON-ready)."""
    if config is None:
        return {"applied": False, "reason": "turned off (--no-postprocess)"}
    if not mpp:
        return {"applied": False, "reason": "the slide has no pixel size (mpp)"}
    return {"applied": True, "label": LABEL_PATH, "threshold": threshold} | config.to_dict()


def tissue_plane(prob, cut_u8: int) -> WindowArray:
    """(H, W) bool view of a uint8 probability array: round(255 p) >= cut_u8."""
    chunks = getattr(prob, "chunks", None)
    return WindowArray(
        tuple(prob.shape),
        bool,
        lambda box: np.asarray(prob[box.y0 : box.y1, box.x0 : box.x1]) >= cut_u8,
        tuple(chunks) if chunks else None,
    )


def write_tissue_label(
    group: zarr.Group,
    prob_levels: list,
    cut_u8: int,
    mpp: float,
    config: PostprocessConfig,
    record: dict,
    chunk_px: int,
    progress: Progress | None = None,
) -> list:
    """Write `labels/tissue` (uint8 0/1, the grid and levels of `prob_levels`) into `group`.

    Args:
        group: the prediction store's root group (still under its hidden name).
        prob_levels: its (H, W) uint8 probability arrays, finest first.
        cut_u8: tissue where round(255 p) >= cut_u8, before post-processing.
        mpp: µm per pixel of level 0.
        config: the post-processing settings.
        record: `postprocess_record`, stored in the label image's attributes.
        chunk_px: zarr chunk side (the probability map's).

    Returns:
        The label's (H, W) uint8 arrays, finest first.
    """
    hws = [tuple(a.shape) for a in prob_levels]
    labels = group.require_group("labels")
    label = labels.create_group(LABEL_NAME)
    arrays = [
        label.create_array(
            str(n),
            shape=hw,
            chunks=(chunk_px, chunk_px),
            dtype="uint8",
            fill_value=0,
            compressors=ZstdCodec(level=3),
            dimension_names=("y", "x"),
        )
        for n, hw in enumerate(hws)
    ]

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress("tissue mask", done, total)

    settings = pixel_settings(config, mpp)
    write_postprocessed(tissue_plane(prob_levels[0], cut_u8), arrays[0], settings, on_chunk=tick)
    build_pyramid(arrays, hws, 2048, False)  # a pick per 2x2: labels stay 0/1
    labels.update_attributes(ngff.labels_attrs([LABEL_NAME]))
    label.update_attributes(ngff.label_attrs(LABEL_NAME, len(hws), mpp))
    label.update_attributes({"postprocess": record})
    log.info("tissue mask: %s", record)
    return arrays


def open_tissue_label(path: str | os.PathLike) -> list | None:
    """The (H, W) uint8 0/1 arrays of a prediction's `labels/tissue`, finest first; None
    when the prediction has none (post-processing was off)."""
    group = zarr.open_group(Path(path), mode="r")
    if "labels" not in group or LABEL_NAME not in group["labels"]:
        return None
    return ngff.multiscale_arrays(group["labels"][LABEL_NAME])[0]
