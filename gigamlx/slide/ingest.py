"""Convert a slide (OpenSlide formats, TIFF/OME-TIFF) and its mask into a slide store.

Reads the slide tile by tile, never a whole level; the store appears only when complete.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from gigamlx.core.progress import ChunkProgress
from gigamlx.runs.config import DEFAULT_CHUNK_PX
from gigamlx.runs.outputs import check_not_input
from gigamlx.slide.geojson import GeoJsonMask
from gigamlx.slide.masks import ImageMask, MaskSource, OtsuMask
from gigamlx.slide.pyramid import chunk_boxes
from gigamlx.slide.readers import SlideReader, open_slide
from gigamlx.slide.writer import StoreWriter
from gigamlx.slide.written import check_chunk_px

log = logging.getLogger(__name__)


def _file_mask(
    reader: SlideReader, level: int, mask, geojson, tissue_classes: list[str] | None
) -> MaskSource | None:
    """The mask read from a file (image or GeoJSON) on the ingested level's grid, if any."""
    hw = reader.level_hw(level)
    if mask is not None:
        return ImageMask(mask, hw)
    if geojson is not None:
        downsample = reader.level_hw(0)[1] / hw[1]
        return GeoJsonMask(geojson, hw, downsample, tissue_classes)
    return None


def ingest(
    slide_path: str | os.PathLike,
    out_path: str | os.PathLike,
    level: int = 0,
    mask: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    otsu: bool = False,
    chunk_px: int = DEFAULT_CHUNK_PX,
    progress: ChunkProgress | None = None,
    backend: str | None = None,
    overwrite: bool = False,
    tissue_classes: list[str] | None = None,
) -> Path:
    """Write one level of a slide, plus an optional tissue mask, as a slide store.

    Args:
        slide_path: an OpenSlide format or TIFF/OME-TIFF file.
        out_path: the store to create (atomic: a killed run leaves nothing there).
        level: the slide's pyramid level that becomes the store's level 0.
        mask: a mask image on that level's grid (any non-zero = tissue).
        geojson: GeoJSON polygons in level-0 pixel coordinates (QuPath export).
        otsu: compute the Otsu saturation baseline mask instead (`masks.OTSU_DEFINITION`,
            fitted on the store's own pyramid, as `eval --baseline otsu` does).
        chunk_px: tile side read from the slide and chunk side of the store.
        progress: optional callable(done_chunks, total_chunks).
        backend: force "openslide" or "tifffile"; None picks by file type.
        overwrite: replace an existing store at `out_path`.
        tissue_classes: GeoJSON classes that are tissue (None: all but `Ignore*`; see geojson.py).

    Returns:
        The store path; `open_store(out_path).image` is (H, W, 3) uint8 of that level.
    """
    asked = [n for n, v in (("mask", mask), ("geojson", geojson), ("otsu", otsu)) if v]
    if len(asked) > 1:
        raise ValueError(f"choose one mask source, got {', '.join(asked)}")
    check_chunk_px(chunk_px)
    check_not_input(out_path, [slide_path, mask, geojson], "output store")
    start = time.perf_counter()
    reader = open_slide(slide_path, backend)
    try:
        if not 0 <= level < reader.level_count:
            raise ValueError(f"{slide_path} has levels 0..{reader.level_count - 1}, not {level}")
        hw = reader.level_hw(level)
        # a bad mask file fails here, before any slow work
        source = _file_mask(reader, level, mask, geojson, tissue_classes)
        mpp = reader.mpp * reader.level_hw(0)[1] / hw[1] if reader.mpp else None
        attrs = {"source": str(Path(slide_path).resolve()), "source_level": level, "mpp": mpp}
        with StoreWriter(
            out_path, hw, chunk_px, bool(asked), attrs, overwrite, progress=progress
        ) as writer:
            for box in chunk_boxes(hw, chunk_px):
                writer.write_image(box, reader.read(level, box))
            if otsu:
                source = OtsuMask.fit(writer.image_pyramid(), source=str(slide_path))
                writer.attrs["otsu_threshold"] = source.threshold
            for box in chunk_boxes(hw, chunk_px) if source is not None else ():
                writer.write_mask(box, source.read(box))
            out = writer.finish()
    finally:
        reader.close()
    log.info("ingested %s -> %s in %.1f s", slide_path, out, time.perf_counter() - start)
    return out
