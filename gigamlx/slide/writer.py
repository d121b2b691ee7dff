"""Writing a slide store: level 0 block by block, then both pyramids, the NGFF metadata last,
under a hidden sibling name renamed into place when complete (an error leaves nothing)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from gigamlx.core.arrays import WindowArray
from gigamlx.core.geometry import Box
from gigamlx.core.progress import ChunkProgress
from gigamlx.runs.config import DEFAULT_CHUNK_PX
from gigamlx.runs.outputs import (
    check_output_file,
    check_replaceable,
    hidden_sibling,
    name_the_path,
    remove_stale_siblings,
    replace_path,
)
from gigamlx.slide import ngff
from gigamlx.slide.pyramid import build_pyramid, chunk_boxes, pyramid_hws
from gigamlx.slide.store import MASK_NAME, STORE_FORMAT, ZSTD_LEVEL, channels_last
from gigamlx.slide.written import check_chunk_px, is_slide_store, settle_zarr_writes

log = logging.getLogger(__name__)


class StoreWriter:
    """Writes a store under a hidden sibling name; `finish` renames it into place.

    Write level 0 with `write_image` / `write_mask` (any boxes, ideally `chunk_boxes`), then
    call `finish`, which builds both pyramids chunk by chunk from level 0, writes the NGFF
    metadata last and renames. Used as a context manager, an exception deletes the partial store.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_hw: tuple[int, int],
        chunk_px: int = DEFAULT_CHUNK_PX,
        with_mask: bool = True,
        attrs: dict | None = None,
        overwrite: bool = False,
        min_side_px: int = 1024,
        progress: ChunkProgress | None = None,
    ):
        self.path = check_output_file(Path(path), "store")
        check_chunk_px(chunk_px)
        check_replaceable(self.path, overwrite, is_slide_store, "slide store")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_siblings(self.path)
        self.tmp_path = hidden_sibling(self.path, "partial")
        self.chunk_px, self.overwrite, self.progress = chunk_px, overwrite, progress
        self.attrs = {"format": STORE_FORMAT, **(attrs or {})}
        self.hws = pyramid_hws(image_hw, min_side_px)
        try:
            self._create_arrays(with_mask)
        except BaseException as error:
            self.abort()
            name_the_path(error, self.path)
            raise
        n_chunks = sum(len(list(chunk_boxes(hw, chunk_px))) for hw in self.hws)
        self.done, self.total = 0, n_chunks * (1 + with_mask)
        self._image_pyramid_built = False

    def _create_arrays(self, with_mask: bool) -> None:
        self.group = zarr.open_group(
            self.tmp_path, mode="w-", zarr_format=3, attributes={"gigamlx": {"complete": False}}
        )
        self.images = [self._create(self.group, n, (3, *hw)) for n, hw in enumerate(self.hws)]
        self.masks = []
        if with_mask:
            label = self.group.create_group("labels").create_group(MASK_NAME)
            self.masks = [self._create(label, n, hw) for n, hw in enumerate(self.hws)]

    def _create(self, group, level: int, shape: tuple[int, ...]):
        chunks = (shape[0],) * (len(shape) == 3) + (self.chunk_px, self.chunk_px)
        return group.create_array(
            str(level),
            shape=shape,
            chunks=chunks,
            dtype="uint8",
            fill_value=0,
            compressors=ZstdCodec(level=ZSTD_LEVEL),
            dimension_names=("c", "y", "x")[-len(shape) :],
        )

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def write_image(self, box: Box, rgb: np.ndarray) -> None:
        """Write an (h, w, 3) uint8 block of level 0 at `box`."""
        # zarr copies a strided (3, h, w) view of channels-last pixels more slowly than numpy
        planar = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
        self.images[0][:, box.y0 : box.y1, box.x0 : box.x1] = planar
        self._tick()

    def image_view(self, level: int = 0) -> WindowArray:
        """(H, W, 3) view of what has been written so far (e.g. to fit a mask on level 0)."""
        return channels_last(self.images[level], "cyx")

    def write_mask(self, box: Box, mask: np.ndarray) -> None:
        """Write an (h, w) block of the level-0 tissue mask (non-zero = tissue) at `box`."""
        self.masks[0][box.y0 : box.y1, box.x0 : box.x1] = (np.asarray(mask) != 0).view(np.uint8)
        self._tick()

    def _build_pyramid(self, arrays: list, mean: bool) -> None:
        build_pyramid(arrays, self.hws, self.chunk_px, mean, lambda: self._tick())

    def image_pyramid(self) -> list[WindowArray]:
        """Build the image pyramid from level 0 now (once); its (H, W, 3) views, finest first.

        For a mask fitted on the store's own levels (Otsu) before the mask is written.
        """
        if not self._image_pyramid_built:
            self._build_pyramid(self.images, mean=True)
            self._image_pyramid_built = True
        return [self.image_view(n) for n in range(len(self.images))]

    def finish(self) -> Path:
        """Build the pyramids, write the metadata and rename the store into place."""
        self.image_pyramid()
        self._build_pyramid(self.masks, mean=False)
        mpp, levels = self.attrs.get("mpp"), len(self.hws)
        self.group.update_attributes(ngff.image_attrs(levels, mpp))
        if self.masks:
            self.group["labels"].update_attributes(ngff.labels_attrs([MASK_NAME]))
            self.group["labels"][MASK_NAME].update_attributes(
                ngff.label_attrs(MASK_NAME, levels, mpp)
            )
        self.group.update_attributes({"gigamlx": self.attrs | {"complete": True}})
        self._rename_into_place()
        log.info("wrote %s (%d levels)", self.path, len(self.hws))
        return self.path

    def _rename_into_place(self) -> None:
        if os.path.lexists(self.path) and not self.overwrite:
            raise FileExistsError(f"{self.path} appeared while writing; kept it")
        replace_path(self.tmp_path, self.path)

    def abort(self) -> None:
        """Delete the partial store (once zarr's chunk writes still in flight are done)."""
        settle_zarr_writes()
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            name_the_path(exc, self.path)
