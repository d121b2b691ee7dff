"""Open a prediction or mask file as a lazily sliced 2-D (H, W) plane, whatever its format.

Formats: OME-Zarr / NGFF multiscale groups, plain zarr arrays, TIFF / OME-TIFF (streamed
through tifffile's zarr interface), PNG (read whole: small files only) and ingested gigamlx
stores (their mask, or their RGB image for the classical baseline).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import zarr

from gigamlx.core.arrays import WindowArray
from gigamlx.core.geometry import Box
from gigamlx.slide import ngff

logger = logging.getLogger(__name__)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
DEFAULT_BLOCK_PX = 2048
TISSUE_LABEL_NAME = "tissue"  # a prediction store's post-processed mask: labels/tissue
TISSUE_LABEL = f"labels/{TISSUE_LABEL_NAME}"


class ArrayReadError(ValueError):
    """A file that cannot be read as a 2-D plane (missing, unknown format, wrong axes)."""


def plane_view(
    source: str,
    array: Any,
    index_template: tuple[str | int, ...] = ("y", "x"),
    closer: Any = None,
    block_hint_hw: tuple[int, int] | None = None,
) -> WindowArray:
    """A 2-D (H, W) view of an on-disk array; slicing reads only the chunks it touches.

    Args:
        source: the path the plane came from (for messages).
        array: the underlying array (zarr array, numpy array, or anything sliceable).
        index_template: one entry per axis of `array`: "y", "x", or the integer to take on a
            size-1 axis (a channel, t or z axis).
        closer: its `close()` is called by the view's `close()` (e.g. a tifffile store).
        block_hint_hw: (rows, cols) to read at a time when `array` has no `chunks`.
    """
    full = tuple(array.shape)
    y_axis, x_axis = index_template.index("y"), index_template.index("x")
    chunks = getattr(array, "chunks", None)
    if chunks and len(chunks) == len(index_template):
        chunk_hw = chunks[y_axis], chunks[x_axis]
    else:
        chunk_hw = block_hint_hw or (full[y_axis], full[x_axis])

    def read(box: Box) -> np.ndarray:
        rows, cols = slice(box.y0, box.y1), slice(box.x0, box.x1)
        index = tuple(rows if a == "y" else cols if a == "x" else a for a in index_template)
        try:
            block = np.asarray(array[index])
        except Exception as err:  # a corrupt or missing chunk, from zarr or tifffile
            where = f"rows {box.y0}:{box.y1}, cols {box.x0}:{box.x1}"
            raise ArrayReadError(f"{source}: cannot read {where} ({err})") from err
        return block.T if y_axis > x_axis else block

    close = closer.close if closer is not None else None
    return WindowArray((full[y_axis], full[x_axis]), array.dtype, read, chunk_hw, source, close)


def iter_blocks(shape_hw: tuple[int, int], block_hw: tuple[int, int]):
    """Yield (rows, cols) slice pairs covering an (H, W) grid in row-major blocks.

    Edge blocks are cut short, so `block_hw` need not divide `shape_hw`.
    """
    height, width = shape_hw
    block_h, block_w = block_hw
    for y0 in range(0, height, block_h):
        for x0 in range(0, width, block_w):
            yield slice(y0, min(y0 + block_h, height)), slice(x0, min(x0 + block_w, width))


def aligned_block_hw(
    chunk_hw: tuple[int, int], target_px: int = DEFAULT_BLOCK_PX
) -> tuple[int, int]:
    """A (rows, cols) block of at most about `target_px`**2 pixels, aligned to chunks.

    Chunks within `target_px` on both sides grow to the largest multiple that fits. Wider or
    taller chunks (TIFF strips, a whole PNG) are read in bands of whole chunk width, as many
    rows as the pixel budget allows, so memory stays bounded whatever the grid.
    """
    chunk_h, chunk_w = chunk_hw
    if chunk_h <= target_px and chunk_w <= target_px:
        return (target_px // chunk_h) * chunk_h, (target_px // chunk_w) * chunk_w
    budget_px = target_px * target_px
    cols = chunk_w if chunk_w <= budget_px else target_px
    rows = max(1, budget_px // cols)
    return (rows // chunk_h) * chunk_h if rows >= chunk_h else rows, cols


def open_plane(path: str | Path, level: int = 0) -> WindowArray:
    """Open a prediction or mask file as a (H, W) plane at pyramid `level`.

    A slide store (see `gigamlx.slide.store`) opens as its tissue mask.

    Raises:
        ArrayReadError: missing file, unknown format, no such level, or not single-channel.
    """
    path = Path(path)
    if not path.exists():
        raise ArrayReadError(f"{path}: no such file or directory")
    _check_complete(path)
    suffix = path.suffix.lower()
    try:
        if suffix in PIL_SUFFIXES:
            return _open_pil(path, level)
        if suffix in TIFF_SUFFIXES:
            return _open_tiff(path, level)
        return _open_zarr(path, level)
    except ArrayReadError:
        raise
    except Exception as err:  # zarr, tifffile and PIL raise many types; report one line
        raise ArrayReadError(f"{path}: cannot read ({type(err).__name__}: {err})") from err


def open_store_image(path: str | Path, level: int = 0) -> Any:
    """The (H, W, 3) uint8 RGB image of a slide store at `level` (-1: coarsest), lazily sliced.

    Raises:
        ArrayReadError: `path` is not a slide store, or has no such level.
    """
    return _store_level(Path(path), level).image


def open_store_levels(path: str | Path) -> list:
    """(H, W, 3) uint8 image views of every level of the slide store at `path`, finest first.

    Raises:
        ArrayReadError: `path` is not a slide store.
    """
    from gigamlx.slide.store import StoreError, open_store

    try:
        return [level.image for level in open_store(path).levels]
    except StoreError as err:
        raise ArrayReadError(str(err)) from err


class PredictionInfo(NamedTuple):
    """What a prediction store of `gigamlx predict` says about itself."""

    threshold: float | None  # the cut its tissue mask, overlay and GeoJSON were drawn at
    tissue_label: Path | None  # its post-processed mask (labels/tissue), if it has one


def prediction_info(path: str | Path) -> PredictionInfo | None:
    """The recorded cut and tissue label of a prediction store; None for any other file."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    marker = attrs.get("gigamlx") if isinstance(attrs, dict) else None
    if not (isinstance(marker, dict) and marker.get("kind") == "prediction"):
        return None
    threshold = (attrs.get("provenance") or {}).get("threshold")
    label = path / TISSUE_LABEL
    return PredictionInfo(threshold, label if (label / "zarr.json").is_file() else None)


def is_store_group(group: zarr.Group) -> bool:
    """True for an ingested gigamlx store (or an OME-Zarr image with a `labels` group)."""
    marker = group.attrs.get("gigamlx")
    if isinstance(marker, dict) and marker.get("kind") == "prediction":
        return False
    return marker is not None or "labels" in group


def _check_complete(path: Path) -> None:
    """Refuse a write still in progress or interrupted: a hidden `.NAME.partial-*` sibling,
    or a store whose gigamlx marker says it is not complete."""
    if any(part.startswith(".") and ".partial-" in part for part in path.parts):
        raise ArrayReadError(
            f"{path}: an unfinished write (in progress, or left by a killed run); "
            "score the finished output instead"
        )
    try:
        marker = json.loads((path / "zarr.json").read_text()).get("attributes", {})["gigamlx"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if isinstance(marker, dict) and marker.get("complete") is False:
        raise ArrayReadError(f"{path}: an unfinished gigamlx store (its write did not complete)")


def _store_level(path: Path, level: int) -> Any:
    """`Level` (image, mask, downsample) `level` of the slide store at `path`."""
    from gigamlx.slide.store import StoreError, open_store

    try:
        store = open_store(path)
    except StoreError as err:
        raise ArrayReadError(str(err)) from err
    if not -store.level_count <= level < store.level_count:
        raise ArrayReadError(f"{path}: no pyramid level {level} ({store.level_count} levels)")
    return store.level(level)


def _open_pil(path: Path, level: int) -> WindowArray:
    from PIL import Image

    if level != 0:
        raise ArrayReadError(f"{path}: {path.suffix} files have no pyramid level {level}")
    with Image.open(path) as image:
        if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            raise ArrayReadError(
                f"{path}: {image.mode} image; expected a single-channel (grayscale) file"
            )
        pixels = np.asarray(image.getchannel(0) if image.mode in ("LA", "PA") else image)
    logger.debug("read %s whole: %s %s", path, pixels.shape, pixels.dtype)
    return plane_view(str(path), pixels)


def _open_tiff(path: Path, level: int) -> WindowArray:
    import tifffile

    store = tifffile.imread(str(path), aszarr=True)
    try:
        node = zarr.open(store, mode="r")
        array, axes = _level_of(node, level, path, "single-level TIFF")
        return plane_view(str(path), array, _index_template(array.shape, axes, str(path)), store)
    except BaseException:
        store.close()
        raise


def _open_zarr(path: Path, level: int) -> WindowArray:
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group) and is_store_group(node):
        return _open_store_mask(path, level)
    array, axes = _level_of(node, level, path, "plain zarr array")
    return plane_view(str(path), array, _index_template(array.shape, axes, str(path)))


def _level_of(node, level: int, path: Path, kind: str) -> tuple[Any, list | None]:
    """Pyramid `level` of a multiscale group, or a single array (`kind`), which has only 0."""
    if isinstance(node, zarr.Group):
        return _multiscale_level(node, level, str(path))
    if level != 0:
        raise ArrayReadError(f"{path}: {kind} has no pyramid level {level}")
    return node, None


def _open_store_mask(path: Path, level: int) -> WindowArray:
    """The tissue mask of a slide store, through `gigamlx.slide.store.open_store`."""
    mask = _store_level(path, level).mask
    if mask is None:
        raise ArrayReadError(f"{path}: slide store has no tissue mask at level {level}")
    hint = mask.chunk_hw or (DEFAULT_BLOCK_PX, DEFAULT_BLOCK_PX)
    return plane_view(str(path), mask, block_hint_hw=hint)


def _multiscale_level(group: zarr.Group, level: int, source: str) -> tuple[Any, list | None]:
    """Array at pyramid `level` of an NGFF group (v0.4 or v0.5 metadata, or bare "0", "1")."""
    if ngff.first_multiscale(dict(group.attrs)) is not None:
        arrays, names = ngff.multiscale_arrays(group)
        if not 0 <= level < len(arrays):
            raise ArrayReadError(f"{source}: no pyramid level {level} ({len(arrays)} levels)")
        return arrays[level], names
    if str(level) in group:
        return group[str(level)], None
    members = sorted(group.keys())
    raise ArrayReadError(f"{source}: zarr group without level {level} (members: {members})")


def _index_template(shape: tuple[int, ...], axes: list | None, source: str):
    """Which axes are y and x; every other axis must have size 1 and is indexed at 0."""
    if axes is not None and "y" in axes and "x" in axes and len(axes) == len(shape):
        y_axis, x_axis = axes.index("y"), axes.index("x")
    else:
        big = [i for i, n in enumerate(shape) if n != 1]
        if len(shape) < 2 or len(big) > 2:
            raise ArrayReadError(f"{source}: shape {tuple(shape)} is not a single-channel plane")
        spatial = big if len(big) == 2 else sorted(set(big) | {len(shape) - 2, len(shape) - 1})
        y_axis, x_axis = spatial[-2], spatial[-1]
    others = [n for i, n in enumerate(shape) if i not in (y_axis, x_axis)]
    if any(n != 1 for n in others):
        raise ArrayReadError(
            f"{source}: shape {tuple(shape)} (axes {axes}) has a non-y/x axis of size > 1"
        )
    return tuple("y" if i == y_axis else "x" if i == x_axis else 0 for i in range(len(shape)))
