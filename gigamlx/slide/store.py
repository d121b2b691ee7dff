"""The on-disk slide store: OME-Zarr 0.5 (zarr v3), RGB pyramid plus a tissue label pyramid.

Arrays are (c, y, x) on disk as NGFF wants; callers get channels-last (H, W, 3) views. Writers
build the store under a hidden temporary name and rename it into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from gigamlx.core.arrays import WindowArray, axes_index, to_plane, to_rgb
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
from gigamlx.slide.chunks import direct_reader
from gigamlx.slide.written import (
    check_chunk_px,
    is_slide_store,
    settle_zarr_writes,
    written_kind,
)

log = logging.getLogger(__name__)

STORE_FORMAT = 1
MASK_NAME = "tissue"
# zstd level of every array written: level 1 compresses real H&E as well as 3 and decodes
# noisy pixels faster, which a step pays twice per window (docs/experiments.md)
ZSTD_LEVEL = 1


class StoreError(RuntimeError):
    """A path that is not a complete, readable slide store."""


def _chunk_hw(array, axes: str) -> tuple[int, int] | None:
    chunks = getattr(array, "chunks", None)
    return (chunks[axes.index("y")], chunks[axes.index("x")]) if chunks else None


def _getter(array, direct: bool) -> Callable:
    """`index -> array[index]`: by decoding chunks directly where the layout allows."""
    return (direct and direct_reader(array)) or array.__getitem__


def channels_last(array, axes: str, direct: bool = True) -> WindowArray:
    """Read-only (H, W, 3) view of an on-disk image array of any NGFF axis order; a window
    of a planar (c, y, x) array comes back as a strided view (`to_rgb(contiguous=False)`).
    `direct=False` reads through zarr only (what `slide.chunks` is measured against)."""
    hw = array.shape[axes.index("y")], array.shape[axes.index("x")]
    get = _getter(array, direct)

    def read(box: Box) -> np.ndarray:  # planar stores: a strided view, copied once by the caller
        return to_rgb(get(axes_index(axes, box)), axes, contiguous=False)

    return WindowArray((*hw, 3), array.dtype, read, _chunk_hw(array, axes))


def mask_view(array, axes: str, direct: bool = True) -> WindowArray:
    """Read-only (H, W) uint8 0/1 view of a label array (extra axes are size-1, taken at 0)."""
    hw = array.shape[axes.index("y")], array.shape[axes.index("x")]
    get = _getter(array, direct)

    def read(box: Box) -> np.ndarray:
        block = to_plane(get(axes_index(axes, box)), axes)
        return block if block.dtype == np.uint8 else (block != 0).view(np.uint8)

    return WindowArray(hw, np.uint8, read, _chunk_hw(array, axes))


class Level(NamedTuple):
    """One pyramid level: (H, W, 3) image view, (H, W) mask or None, downsample vs level 0."""

    image: WindowArray  # (H, W, 3)
    mask: WindowArray | None  # (H, W) uint8 0/1
    downsample: float  # vs level 0


class SlideStore:
    """An opened store. `image` (H, W, 3) and `mask` (H, W) are level 0."""

    def __init__(self, path: Path, levels: list[Level], attrs: dict):
        self.path, self.levels, self.attrs = path, levels, attrs
        self.image, self.mask = levels[0].image, levels[0].mask
        self.mpp: float | None = attrs.get("mpp")  # µm per pixel of level 0

    def level_mpp(self, n: int) -> float | None:
        """µm per pixel of level `n` (None when the store has no calibration)."""
        return self.mpp * self.levels[n].downsample if self.mpp else None

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def level(self, n: int) -> Level:
        return self.levels[n]


def _what_to_do(path: Path) -> str:
    if path.is_file():
        return f"if it is a slide, convert it first: `gigamlx ingest {path} OUT.zarr`"
    if ".partial-" in path.name:
        return "it is an interrupted write; delete it and run ingest/synth again"
    partial = sorted(path.parent.glob(f".{path.name}.partial-*"))
    hint = f" (interrupted writes left {', '.join(p.name for p in partial)}: delete them)"
    return f"create it with `gigamlx ingest SLIDE {path}` or `gigamlx synth {path}`" + (
        hint if partial else ""
    )


def _multiscale_levels(group) -> tuple[list, str]:
    arrays, names = ngff.multiscale_arrays(group)
    return arrays, "".join(names)


def _downsamples(ome: dict, widths_px: list[int]) -> list[float]:
    """Each level's downsample vs level 0: from the NGFF x scales, else from the widths."""
    scales, _ = ngff.level_scales_x(ome["multiscales"][0])
    if len(set(scales)) > 1 or len(scales) == 1:
        return [s / scales[0] for s in scales]
    return [widths_px[0] / w for w in widths_px]


def _mask_levels(group, direct: bool) -> list:
    try:
        labels = group["labels"]
        names = dict(labels.attrs).get("ome", dict(labels.attrs)).get("labels", [])
        name = MASK_NAME if MASK_NAME in names else names[0]
        label = labels[name]
    except (KeyError, IndexError):
        return []
    arrays, axes = _multiscale_levels(label)
    return [mask_view(a, axes, direct) for a in arrays]


def open_store(path: str | os.PathLike, direct_chunks: bool = True) -> SlideStore:
    """Open a slide store for reading.

    Accepts gigamlx stores, other OME-Zarr images (any axis order over t, c, z, y, x) and a
    plain zarr array of shape (H, W, 3). `direct_chunks=False` reads every window through
    zarr instead of `slide.chunks` (same values; for benchmarks).

    Raises:
        StoreError: the path is missing, incomplete (an interrupted write) or not a slide store;
            the message names the path and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no slide store at {path}: {_what_to_do(path)}")
    try:
        node = zarr.open(path, mode="r")
    except Exception as err:  # zarr raises several types for non-stores
        raise StoreError(f"{path} is not a zarr store ({err}): {_what_to_do(path)}") from err
    if isinstance(node, zarr.Array):
        if node.ndim != 3 or node.shape[2] not in (1, 3, 4):
            raise StoreError(f"{path} holds a {node.shape} array, expected (H, W, 3) RGB")
        return SlideStore(path, [Level(channels_last(node, "yxc", direct_chunks), None, 1)], {})
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)
    if "multiscales" not in ome or attrs.get("gigamlx", {}).get("complete") is False:
        raise StoreError(f"{path} is an incomplete or foreign zarr group: {_what_to_do(path)}")
    if written_kind(path) == "prediction":
        raise StoreError(f"{path} is a probability map written by predict, not a slide store")
    try:
        arrays, axes = _multiscale_levels(node)
        masks = _mask_levels(node, direct_chunks)
    except (KeyError, IndexError, TypeError) as error:
        raise StoreError(f"{path}: unreadable OME-Zarr multiscale metadata ({error!r})") from None
    images = [_image_view(path, a, axes, direct_chunks) for a in arrays]
    downsamples = _downsamples(ome, [image.shape[1] for image in images])
    levels = [
        Level(image, masks[n] if n < len(masks) else None, downsamples[n])
        for n, image in enumerate(images)
    ]
    _check_mask_grid(path, levels[0])
    own = attrs.get("gigamlx", {})
    if own.get("mpp") is None:  # another tool's store: its calibration is in the NGFF scales
        own = own | {"mpp": ngff.multiscale_mpp(ome["multiscales"][0])}
    return SlideStore(path, levels, own)


def _image_view(path: Path, array, axes: str, direct: bool) -> WindowArray:
    """The channels-last view, once the axes are known to name every dimension, y and x."""
    if len(axes) != array.ndim or "y" not in axes or "x" not in axes:
        raise StoreError(
            f"{path}: image axes {axes!r} do not describe its {array.ndim}-D array "
            f"of shape {array.shape}; an RGB slide needs axes c, y, x (e.g. shape (3, H, W))"
        )
    if "c" in axes and array.shape[axes.index("c")] not in (1, 2, 3, 4):
        raise StoreError(f"{path}: {array.shape[axes.index('c')]} channels; expected RGB")
    return channels_last(array, axes, direct)


def _check_mask_grid(path: Path, level: Level) -> None:
    if level.mask is not None and tuple(level.mask.shape) != level.image.shape[:2]:
        mask_hw, image_hw = level.mask.shape, level.image.shape[:2]
        raise StoreError(
            f"{path}: tissue mask is {mask_hw[0]}x{mask_hw[1]} but the image is "
            f"{image_hw[0]}x{image_hw[1]} (HxW); re-ingest it with a mask on the image's grid"
        )


def pyramid_hws(image_hw: tuple[int, int], min_side_px: int = 1024) -> list[tuple[int, int]]:
    """Level sizes: level 0, then 2x downsamples (ceil) while the smaller side >= min_side_px."""
    hws = [tuple(image_hw)]
    while min(hws[-1]) >= min_side_px and min(hws[-1]) > 1:
        hws.append(tuple(-(-n // 2) for n in hws[-1]))
    return hws  # type: ignore[return-value]


def chunk_boxes(image_hw: tuple[int, int], chunk_px: int) -> Iterator[Box]:
    """Row-major chunk grid over an (H, W) image; edge chunks are clipped."""
    h, w = image_hw
    for y0 in range(0, h, chunk_px):
        for x0 in range(0, w, chunk_px):
            yield Box(y0, x0, min(y0 + chunk_px, h), min(x0 + chunk_px, w))


def downsample2(block: np.ndarray, out_hw: tuple[int, int], mean: bool) -> np.ndarray:
    """2x2 block mean (rounded) or top-left pick of (..., 2h, 2w); odd edges replicate."""
    h, w = out_hw
    if not mean:
        return block[..., ::2, ::2][..., :h, :w]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, 2 * h - block.shape[-2]), (0, 2 * w - block.shape[-1])]
    if any(after for _, after in pad):
        block = np.pad(block, pad, mode="edge")
    # four strided adds: a reduction over the reshaped 2x2 axes is several times slower
    summed = block[..., 0::2, 0::2].astype(np.uint16)
    summed += block[..., 1::2, 0::2]
    summed += block[..., 0::2, 1::2]
    summed += block[..., 1::2, 1::2]
    summed += 2
    summed //= 4
    return summed.astype(np.uint8)


def build_pyramid(
    arrays: list, hws: list[tuple[int, int]], chunk_px: int, mean: bool, on_chunk=None
) -> None:
    """The one pyramid builder: level n from level n-1, chunk by chunk (2x2 mean, or a pick
    for masks), for arrays shaped (..., H_n, W_n). `on_chunk()` is called after each chunk."""
    for n in range(1, len(arrays)):
        src, dst = arrays[n - 1], arrays[n]
        for box in chunk_boxes(hws[n], chunk_px):
            block = src[..., 2 * box.y0 : 2 * box.y1, 2 * box.x0 : 2 * box.x1]
            # contiguous: zarr copies a strided view (a mask's pick) more slowly than numpy
            dst[..., box.y0 : box.y1, box.x0 : box.x1] = np.ascontiguousarray(
                downsample2(block, box.hw, mean)
            )
            if on_chunk is not None:
                on_chunk()


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
