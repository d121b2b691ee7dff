"""The on-disk slide store: OME-Zarr 0.5 (zarr v3), RGB pyramid plus a tissue label pyramid.

Arrays are (c, y, x) on disk as NGFF wants; callers get channels-last (H, W, 3) views. The
writer (slide/writer.py) builds a store under a hidden temporary name and renames it into place
only when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr

from gigamlx.core.arrays import WindowArray, axes_index, to_plane, to_rgb
from gigamlx.core.geometry import Box
from gigamlx.slide import ngff
from gigamlx.slide.chunks import direct_reader
from gigamlx.slide.written import (
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
