"""Writers for predicted tissue probabilities: an OME-Zarr pyramid, a pyramidal OME-TIFF and a
PNG overlay thumbnail. Each streams chunk by chunk: nothing the size of the slide is in memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from gigamlx.core.progress import Progress
from gigamlx.runs.outputs import (
    file_written_atomically,
    hidden_sibling,
    name_the_path,
    remove_stale_siblings,
    remove_tree_or_file,
    replace_path,
)
from gigamlx.slide import ngff
from gigamlx.slide.pyramid import build_pyramid, chunk_boxes, pyramid_hws
from gigamlx.slide.written import settle_zarr_writes, written_kind

log = logging.getLogger(__name__)

CHUNK_PX = 512  # zarr chunk side = OME-TIFF tile side: each TIFF tile decodes one chunk
MIN_LEVEL_SIDE_PX = 512
OVERLAY_MAX_SIDE_PX = 2048
PYRAMID_CHUNK_PX = 2048  # levels 1.. are built in blocks of this side
TISSUE_RGB = np.array([0.0, 190.0, 90.0], np.float32)
OUTLINE_RGB = np.array([0.0, 110.0, 40.0], np.float32)
SOFTWARE = "gigamlx predict"  # the marker of the TIFF and PNG outputs (--overwrite checks it)


class ProbabilityMapWriter:
    """A (y, x) uint8 OME-Zarr probability pyramid, written under a hidden name until `finish`.

    Write level 0 through `level0` (an (H, W) uint8 zarr array, any boxes), then `finish`
    builds the 2x2-mean pyramid chunk by chunk, writes the NGFF metadata and renames into place.
    Used as a context manager, an exception deletes the partial store.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_hw: tuple[int, int],
        mpp: float | None = None,
        chunk_px: int = CHUNK_PX,
        min_side_px: int = MIN_LEVEL_SIDE_PX,
        provenance: dict | None = None,
    ):
        self.path, self.mpp, self.chunk_px = Path(path), mpp, chunk_px
        self.provenance = provenance or {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(self.path)
        self.tmp_path = hidden_sibling(self.path, "partial")
        self.hws = pyramid_hws(image_hw, min_side_px)
        try:
            marker = {"gigamlx": {"kind": "prediction", "format": 1, "complete": False}}
            self.group = zarr.open_group(self.tmp_path, mode="w-", zarr_format=3, attributes=marker)
            self.levels = [self._create(n, hw) for n, hw in enumerate(self.hws)]
        except BaseException as error:
            remove_tree_or_file(self.tmp_path)
            name_the_path(error, self.path)
            raise
        self.level0 = self.levels[0]

    def _create(self, level: int, hw: tuple[int, int]):
        return self.group.create_array(
            str(level),
            shape=hw,
            chunks=(self.chunk_px, self.chunk_px),
            dtype="uint8",
            fill_value=0,
            compressors=ZstdCodec(level=3),
            dimension_names=("y", "x"),
        )

    def finish(self, progress: Progress | None = None, before_rename=None) -> Path:
        """Build levels 1.. from level 0, write the metadata, rename into place.

        `before_rename(group, levels)`, if given, adds to the store while it is still hidden
        (the tissue label image, infer/postprocess.py): it appears whole or not at all.
        """
        total = sum(len(list(chunk_boxes(hw, PYRAMID_CHUNK_PX))) for hw in self.hws[1:])
        done = iter(range(1, total + 1))

        def tick() -> None:
            if progress is not None:
                progress("pyramid", next(done), total)

        build_pyramid(self.levels, self.hws, PYRAMID_CHUNK_PX, True, tick)
        self.group.update_attributes(ngff.probability_attrs(len(self.hws), self.mpp))
        self.group.update_attributes({"provenance": self.provenance | {"mpp": self.mpp}})
        if before_rename is not None:
            before_rename(self.group, self.levels)
        self.group.update_attributes({"gigamlx": {"kind": "prediction", "format": 1}})
        replace_path(self.tmp_path, self.path)
        log.info("wrote %s (%d levels)", self.path, len(self.hws))
        return self.path

    def __enter__(self) -> ProbabilityMapWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            settle_zarr_writes()
            remove_tree_or_file(self.tmp_path)
            name_the_path(exc, self.path)


def written_by_predict(path: str | os.PathLike) -> bool:
    """True when the output at `path` carries predict's marker (zarr attrs, TIFF/PNG tag,
    GeoJSON feature provenance)."""
    path = Path(path)
    if path.is_dir():
        return written_kind(path) == "prediction"
    try:
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return page.software == SOFTWARE or "tissue probability" in page.description
        if path.name.lower().endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                return image.text.get("Software") == SOFTWARE
        if path.name.lower().endswith(".geojson"):  # predict --geojson: provenance per feature
            return json.loads(path.read_text()).get("gigamlx", {}).get("kind") == "prediction"
    except Exception:  # noqa: BLE001 - unreadable as that format: not ours
        return False
    return False


def open_probability_levels(path: str | os.PathLike) -> list:
    """The (H, W) uint8 zarr arrays of a probability pyramid, finest first."""
    return ngff.multiscale_arrays(zarr.open_group(path, mode="r"))[0]


def _tiles(array, tile_px: int) -> Iterator[np.ndarray]:
    """Row-major (<= tile_px, <= tile_px) tiles of an (H, W) array, as TIFF stores them."""
    for box in chunk_boxes(tuple(array.shape), tile_px):
        yield np.asarray(array[box.y0 : box.y1, box.x0 : box.x1])


def write_ome_tiff(
    levels: list,
    path: str | os.PathLike,
    mpp: float | None = None,
    tile_px: int = CHUNK_PX,
    progress: Progress | None = None,
    provenance: dict | None = None,
    name: str = "tissue probability",
) -> Path:
    """Write a tiled, deflate-compressed pyramidal OME-TIFF of (H, W) uint8 `levels`, streamed.

    The reduced levels are stored twice: as SubIFDs of the full-resolution page (the OME-TIFF
    pyramid that QuPath/Bio-Formats and tifffile read) and as top-level reduced-resolution
    pages (the generic tiled-TIFF pyramid that OpenSlide reads). They add ~1/3 to the size.
    `provenance` goes into the OME image's Description (as JSON) and a MapAnnotation; `name`
    is the OME image's Name ("tissue mask" for a 0/1 label pyramid).
    """
    import tifffile

    path = Path(path)
    hw = tuple(levels[0].shape)
    ome = tifffile.OmeXml()
    meta = _ome_metadata(mpp, provenance)
    ome.addimage(np.uint8, hw, (1, 1, 1, *hw, 1), axes="YX", Name=name, **meta)
    options = {
        "dtype": np.uint8,
        "tile": (tile_px, tile_px),
        "compression": "zlib",
        "photometric": "minisblack",
        "metadata": None,
        "software": SOFTWARE,
    }
    if mpp:
        options |= {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    pages = [(levels[0], {"subifds": len(levels) - 1, "description": ome.tostring()})]
    pages += [(a, {"subfiletype": 1}) for a in levels[1:]] * 2
    with file_written_atomically(path) as tmp_path:
        with tifffile.TiffWriter(tmp_path, bigtiff=True) as writer:
            for done, (array, extra) in enumerate(pages, 1):
                writer.write(_tiles(array, tile_px), shape=array.shape, **options, **extra)
                if progress is not None:
                    progress("ome-tiff", done, len(pages))
    log.info("wrote %s (%d levels)", path, len(levels))
    return path


def _ome_metadata(mpp: float | None, provenance: dict | None) -> dict:
    """OME Image/Pixels attributes: physical pixel size and the provenance.

    No PhysicalSizeXUnit: the schema's default is µm, and TIFF descriptions must be ASCII.
    """
    meta = {}
    if mpp:
        meta |= {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    if provenance:
        meta["Description"] = json.dumps(provenance)
        text = {key: json.dumps(value) for key, value in provenance.items()}
        meta["MapAnnotation"] = {"Namespace": "gigamlx/provenance", "Value": text}
    return meta


def thumbnail_hw(image_hw: tuple[int, int], max_side_px: int) -> tuple[int, int]:
    """(h, w) of a thumbnail of `image_hw` with its longer side at most `max_side_px`."""
    scale = min(1.0, max_side_px / max(image_hw))
    return max(1, round(image_hw[0] * scale)), max(1, round(image_hw[1] * scale))


def _nearest(n_out: int, n_src: int) -> np.ndarray:
    """(n_out,) ascending source indices of the nearest source pixel centres."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_src / n_out).astype(np.int64), n_src - 1)


def sample_nearest(levels: list, target_hw: tuple[int, int], block_px: int = 2048) -> np.ndarray:
    """Nearest-neighbour thumbnail (h, w[, C]) of a pyramid, read block by block.

    Args:
        levels: (H, W[, C]) array-likes, finest first; the coarsest level at least `target_hw`
            in both sides is sampled (level 0 if none is).
        target_hw: thumbnail size.
    """
    array = levels[0]
    for level in levels:
        if level.shape[0] >= target_hw[0] and level.shape[1] >= target_hw[1]:
            array = level
    src_h, src_w = array.shape[:2]
    rows, cols = _nearest(target_hw[0], src_h), _nearest(target_hw[1], src_w)
    out = np.zeros(tuple(target_hw) + tuple(array.shape[2:]), np.dtype(array.dtype))
    for box in chunk_boxes((src_h, src_w), block_px):
        r0, r1 = np.searchsorted(rows, [box.y0, box.y1])
        c0, c1 = np.searchsorted(cols, [box.x0, box.x1])
        if r0 == r1 or c0 == c1:
            continue
        ys, xs = rows[r0:r1], cols[c0:c1]
        block = np.asarray(array[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1])
        out[r0:r1, c0:c1] = block[np.ix_(ys - ys[0], xs - xs[0])]
    return out


def _outline(tissue: np.ndarray, width_px: int = 2) -> np.ndarray:
    """Pixels of the (h, w) bool `tissue` within `width_px` of its border, (h, w) bool."""
    inner = tissue.copy()
    for _ in range(width_px):
        padded = np.pad(inner, 1, mode="edge")
        inner &= padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return tissue & ~inner


def _png_text(meta: dict | None, downsample: float):
    """PNG text chunk "gigamlx": provenance plus the thumbnail's own µm per pixel."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    meta = dict(meta or {})
    if meta.get("mpp"):
        meta["overlay_mpp"] = meta["mpp"] * downsample
    info.add_text("gigamlx", json.dumps(meta))
    return info


def write_overlay(
    slide_levels: list,
    prob_levels: list,
    path: str | os.PathLike,
    max_side_px: int = OVERLAY_MAX_SIDE_PX,
    threshold_u8: int = 128,
    meta: dict | None = None,
    compress_level: int = 6,
) -> Path:
    """PNG thumbnail of the slide with predicted tissue (p >= threshold) tinted and outlined.

    Args:
        slide_levels: (H, W, 3) uint8 array-likes of the slide, finest first.
        prob_levels: (H, W) uint8 probability arrays (round(255 p)), finest first.
        path: PNG to write.
        max_side_px: longer side of the thumbnail.
        threshold_u8: tissue where round(255 p) >= this.
        meta: provenance; written as the PNG's "gigamlx" text chunk with the thumbnail's µm/px.
        compress_level: PNG zlib level, 0-9 (slide grain compresses badly: 1 is much faster).
    """
    from PIL import Image

    target_hw = thumbnail_hw(tuple(slide_levels[0].shape[:2]), max_side_px)
    rgb = sample_nearest(slide_levels, target_hw).astype(np.float32)  # (h, w, 3)
    tissue = sample_nearest(prob_levels, target_hw) >= threshold_u8  # (h, w)
    rgb[tissue] = 0.7 * rgb[tissue] + 0.3 * TISSUE_RGB
    rgb[_outline(tissue)] = OUTLINE_RGB
    info = _png_text(meta, slide_levels[0].shape[1] / target_hw[1])
    info.add_text("Software", SOFTWARE)
    path = Path(path)
    with file_written_atomically(path) as tmp_path:
        image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        image.save(tmp_path, format="PNG", pnginfo=info, compress_level=compress_level)
    log.info("wrote %s (%dx%d px, HxW)", path, *target_hw)
    return Path(path)
