"""Tissue-mask post-processing streamed over planes of any size: a closing, hole filling up to
an area, small-object removal, with areas in µm² so a setting means the same at any level.

Exact, not approximated: the plane is read chunk by chunk, connected components are labelled
per chunk and joined across chunk borders through their border pixels (a graph of the
per-chunk labels, scipy.sparse.csgraph), so the result equals one whole-array pass. What it
costs: one read of the plane per step that needs components (three at most), and memory for
one chunk plus a few numbers per component. Connectivity is 4 (edge-sharing pixels) for
tissue and holes alike, as `scipy.ndimage.binary_fill_holes` floods the background. The
closing's disk is applied on rows of bits (`_dilate`): the pixels a Euclidean distance
transform cut at the radius reaches, without computing a distance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import zarr
from scipy import ndimage, sparse
from scipy.sparse import csgraph
from zarr.codecs import ZstdCodec
from zarr.storage import MemoryStore

from gigamlx.core.arrays import read_window
from gigamlx.core.bands import map_on_cores
from gigamlx.core.geometry import Box
from gigamlx.runs.config import PostprocessConfig
from gigamlx.slide.pyramid import chunk_boxes

BLOCK_PX = 2048  # side of the blocks components are labelled in (memory: a few bytes/px)
CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
CLOSING_CACHE_MAX_PX = 2**30  # closings of planes up to this are kept (1 bit/px) between reads


class PixelSettings(NamedTuple):
    """`PostprocessConfig` at one pixel size: lengths and areas in pixels."""

    closing_px: float  # disk radius: pixels within this distance of the centre
    fill_holes_px: float  # holes of at most this many pixels are filled
    min_object_px: float  # tissue pieces of fewer pixels are dropped


def pixel_settings(config: PostprocessConfig, mpp: float) -> PixelSettings:
    """`config` (µm, µm²) at `mpp` µm per pixel."""
    if not mpp or mpp <= 0:
        raise ValueError("post-processing in µm needs the map's pixel size (mpp)")
    area_um2 = mpp * mpp
    return PixelSettings(
        closing_px=config.closing_um / mpp,
        fill_holes_px=config.fill_holes_um2 / area_um2,
        min_object_px=config.min_object_um2 / area_um2,
    )


def _disk_half_widths(radius_px: float) -> list[tuple[int, int]]:
    """(dy, half width) for each row of the disk of `radius_px`: the largest dx with
    sqrt(dx² + dy²) <= radius_px, computed in float64 as a Euclidean distance transform
    computes it, so the disk holds exactly the offsets such a transform puts within reach."""
    reach = math.floor(radius_px) + 1
    dy = np.arange(-reach, reach + 1)[:, None]
    dx = np.arange(reach + 1)[None, :]
    widths = (np.sqrt((dx * dx + dy * dy).astype(np.float64)) <= radius_px).sum(axis=1) - 1
    return [(int(y), int(n)) for y, n in zip(dy[:, 0], widths, strict=True) if n >= 0]


def _shifted(words: np.ndarray, k: int) -> np.ndarray:
    """Rows of little-endian bit-packed pixels (h, n) uint64, moved `k` pixels along x: bit
    x of the result is bit x - k of `words` (k > 0: towards larger x), 0 where that is off
    the row."""
    q, r = divmod(abs(k), 64)
    out = np.zeros_like(words)
    n = words.shape[1]
    if q >= n:
        return out
    src = words[:, : n - q] if k > 0 else words[:, q:]
    if r == 0:
        moved = src
    elif k > 0:
        moved = src << np.uint64(r)
        moved[:, 1:] |= src[:, :-1] >> np.uint64(64 - r)
    else:
        moved = src >> np.uint64(r)
        moved[:, :-1] |= src[:, 1:] << np.uint64(64 - r)
    if k > 0:
        out[:, q:] = moved
    else:
        out[:, : n - q] = moved
    return out


def _dilate(block: np.ndarray, radius_px: float) -> np.ndarray:
    """(h, w) bool: pixels within `radius_px` (Euclidean) of a True pixel of `block`.

    On rows of bits, 64 pixels a word: each row grown sideways by every half width the disk
    has, then each output row the union of the input rows within reach, each grown by its
    row's half width of the disk. The same pixels as a distance transform cut at the radius,
    at a small fraction of its cost (no distances are computed)."""
    if not block.any():
        return np.zeros_like(block)
    h, w = block.shape
    packed = np.packbits(block, axis=1, bitorder="little")
    padded = np.zeros((h, -(-packed.shape[1] // 8) * 8), np.uint8)
    padded[:, : packed.shape[1]] = packed
    words = padded.view("<u8")
    rows = _disk_half_widths(radius_px)
    grown, by_width = words.copy(), {0: words}
    for k in range(1, max(width for _, width in rows) + 1):
        grown |= _shifted(words, k)
        grown |= _shifted(words, -k)
        by_width[k] = grown.copy()
    out = np.zeros_like(words)
    for dy, width in rows:  # out[y] |= grown rows y + dy
        src = by_width[width]
        if abs(dy) < h:
            out[max(0, -dy) : h - max(0, dy)] |= src[max(0, dy) : h + min(0, dy)]
    bits = np.unpackbits(out.view(np.uint8), axis=1, count=w, bitorder="little")
    return bits.view(bool)


def _erode(block: np.ndarray, radius_px: float) -> np.ndarray:
    """(h, w) bool: pixels whose whole disk of `radius_px` lies in `block` (the array's
    outside counts as neither tissue nor glass, as in a distance transform)."""
    if block.all():
        return block.copy()
    return ~_dilate(~block, radius_px)


def closed_block(binary, box: Box, radius_px: float) -> np.ndarray:
    """(h, w) bool: the (H, W) bool plane `binary` at `box`, closed with a disk.

    Dilation sees nothing beyond the plane; the erosion counts beyond it as tissue, so the
    closing never takes tissue away at the plane's edge. Read with a halo of twice the radius:
    each chunk equals the same window of a whole-plane closing.
    """
    if radius_px <= 0:
        return read_window(binary, box).astype(bool, copy=False)
    halo = 2 * math.ceil(radius_px)
    grown = Box(box.y0 - halo, box.x0 - halo, box.y1 + halo, box.x1 + halo)
    dilated = _dilate(read_window(binary, grown).astype(bool), radius_px)
    h, w = binary.shape[:2]
    dilated[: max(0, -grown.y0)] = True  # beyond the plane: tissue for the erosion
    dilated[dilated.shape[0] - max(0, grown.y1 - h) :] = True
    dilated[:, : max(0, -grown.x0)] = True
    dilated[:, dilated.shape[1] - max(0, grown.x1 - w) :] = True
    return _erode(dilated, radius_px)[halo:-halo, halo:-halo]


class Components(NamedTuple):
    """Connected components of a plane labelled chunk by chunk (`components`)."""

    offsets: list[int]  # per chunk: added to its local labels to give node ids
    counts: list[int]  # per chunk: how many labels it has
    component: np.ndarray  # node id -> component index (node 0: no component)
    area_px: np.ndarray  # component index -> pixels
    at_edge: np.ndarray  # component index -> touches the plane's border

    def pick(self, block: np.ndarray, chunk: int, keep: np.ndarray) -> np.ndarray:
        """(h, w) bool: pixels of `block` (chunk number `chunk`, the same pixels labelled
        before) in a component with `keep[component]` True."""
        n = self.counts[chunk]
        first = self.offsets[chunk] + 1  # node ids of this chunk: first .. first + n - 1
        kept = keep[self.component[first : first + n]]
        if not kept.any():  # nothing to label: the common case of hole filling
            return np.zeros_like(block, bool)
        if kept.all():  # nor here: the common case of small-object removal
            return block.astype(bool, copy=True)
        labels, n = ndimage.label(block, CROSS)
        decided = np.zeros(n + 1, bool)  # local label -> kept (0: not in a component)
        decided[1:] = kept
        return decided[labels]


def _touching_pairs(a: np.ndarray, b: np.ndarray, pairs: list) -> None:
    """Node ids of two facing border lines (same length) that are both in a component."""
    both = (a > 0) & (b > 0)
    if both.any():
        pairs.append(np.stack([a[both], b[both]]))


class _Sides(NamedTuple):
    """Node ids (0: none) along the four sides of a chunk."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, offset: int) -> _Sides:
        lines = labels[0], labels[-1], labels[:, 0], labels[:, -1]
        return cls(*(np.where(a > 0, a.astype(np.int64) + offset, 0) for a in lines))

    def on_border(self, box: Box, hw: tuple[int, int]) -> np.ndarray:
        """Node ids on the plane's border."""
        lines = [self.top] * (box.y0 == 0) + [self.bottom] * (box.y1 == hw[0])
        lines += [self.left] * (box.x0 == 0) + [self.right] * (box.x1 == hw[1])
        return np.concatenate(lines) if lines else np.zeros(0, np.int64)


def _label(block: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """(labels, how many, each label's pixels) of a chunk's True pixels, 4-connected. A chunk
    all True or all False (most of a slide: open glass, the inside of a section) is one label
    or none without labelling its pixels."""
    if not block.any():
        return np.broadcast_to(np.int32(0), block.shape), 0, np.zeros(0, np.int64)
    if block.all():
        return np.broadcast_to(np.int32(1), block.shape), 1, np.array([block.size], np.int64)
    labels, n = ndimage.label(block, CROSS)
    return labels, n, np.bincount(labels.ravel(), minlength=n + 1)[1:]


def components(
    read: Callable[[int, Box], np.ndarray], boxes: list[Box], hw: tuple[int, int]
) -> Components:
    """Label the True pixels of a plane given chunk by chunk (`read(chunk, box)`, boxes of one
    row-major `chunk_boxes` grid) and join labels that touch across chunk borders."""
    areas, edges, pairs, offsets, counts = [np.zeros(1, np.int64)], [], [], [], []
    bottom: dict[int, np.ndarray] = {}  # x0 of a chunk column -> node ids of its last row
    right = np.zeros(0, np.int64)  # node ids of the last column of the chunk to the left
    first = 1
    for chunk, box in enumerate(boxes):
        labels, n, area = _label(read(chunk, box))
        sides = _Sides.of(labels, first - 1)
        offsets.append(first - 1)
        counts.append(n)
        areas.append(area)
        edges.append(sides.on_border(box, hw))
        if box.y0 > 0:
            _touching_pairs(bottom[box.x0], sides.top, pairs)
        if box.x0 > 0:
            _touching_pairs(right, sides.left, pairs)
        bottom[box.x0], right = sides.bottom, sides.right
        first += n
    # one edge per touching pair of labels (a long shared border repeats a pair many times)
    joined = np.unique(np.concatenate(pairs, axis=1), axis=1) if pairs else np.zeros((2, 0), int)
    graph = sparse.coo_matrix(
        (np.ones(joined.shape[1], np.int32), (joined[0], joined[1])), shape=(first, first)
    )
    count, component = csgraph.connected_components(graph, directed=False)
    area_px = np.bincount(component, weights=np.concatenate(areas), minlength=count)
    at_edge = np.zeros(count, bool)
    at_edge[component[np.concatenate(edges)]] = True
    return Components(offsets, counts, component, area_px, at_edge)


def postprocessed_blocks(
    binary, settings: PixelSettings, block_px: int = BLOCK_PX
) -> Iterator[tuple[Box, np.ndarray]]:
    """(box, (h, w) bool) chunks of the post-processed (H, W) bool plane `binary`: closed
    (`closing_px`), holes enclosed by tissue of at most `fill_holes_px` pixels filled, then
    tissue pieces of fewer than `min_object_px` pixels dropped. Equal to a whole-plane pass.

    Args:
        binary: (H, W) bool array-like (numpy, zarr, `WindowArray`), sliced chunk by chunk.
        settings: from `pixel_settings`.
        block_px: chunk side; any value gives the same result.
    """
    hw = tuple(binary.shape[:2])
    boxes = list(chunk_boxes(hw, block_px))
    kept: dict[int, np.ndarray] = {}  # chunk -> its closing, bit-packed (read up to 3 times)
    cache = settings.closing_px > 0 and hw[0] * hw[1] <= CLOSING_CACHE_MAX_PX

    def closed(chunk: int, box: Box) -> np.ndarray:
        if chunk in kept:
            return np.unpackbits(kept[chunk], count=box.area()).reshape(box.hw).view(bool)
        block = closed_block(binary, box, settings.closing_px)
        if cache:
            kept[chunk] = np.packbits(block)
        return block

    if cache:  # every chunk's closing up front, the cores side by side (see _close_all)
        kept.update(enumerate(_close_all(binary, boxes, settings.closing_px)))

    filled = closed
    if settings.fill_holes_px > 0:
        holes = components(lambda chunk, box: ~closed(chunk, box), boxes, hw)
        fill = ~holes.at_edge & (holes.area_px <= settings.fill_holes_px)

        def filled(chunk: int, box: Box) -> np.ndarray:
            tissue = closed(chunk, box)
            return tissue | holes.pick(~tissue, chunk, fill)

    final = filled
    if settings.min_object_px > 0:
        objects = components(filled, boxes, hw)
        keep = objects.area_px >= settings.min_object_px

        def final(chunk: int, box: Box) -> np.ndarray:
            return objects.pick(filled(chunk, box), chunk, keep)

    for chunk, box in enumerate(boxes):
        yield box, final(chunk, box)


def fill_every_hole(plane, block_px: int = BLOCK_PX) -> int:
    """Fill, in place, every hole of the (H, W) uint8 0/1 array `plane` (zarr or numpy): each
    4-connected component of 0s that does not reach the plane's border becomes 1s, however
    large. Reads the plane twice and writes back only the chunks that hold a hole.

    Returns:
        How many pixels were filled.
    """
    hw = tuple(plane.shape[:2])
    boxes = list(chunk_boxes(hw, block_px))

    def glass(chunk: int, box: Box) -> np.ndarray:
        return read_window(plane, box) == 0

    holes = components(glass, boxes, hw)
    enclosed = ~holes.at_edge
    filled = 0
    for chunk, box in enumerate(boxes):
        first = holes.offsets[chunk] + 1
        if not enclosed[holes.component[first : first + holes.counts[chunk]]].any():
            continue  # the common case: no hole here, nothing to read or write
        block = read_window(plane, box) != 0
        hole = holes.pick(~block, chunk, enclosed)
        filled += int(hole.sum())
        plane[box.y0 : box.y1, box.x0 : box.x1] = (block | hole).view(np.uint8)
    return filled


def _close_all(binary, boxes: list[Box], radius_px: float) -> list[np.ndarray]:
    """Each box's closing (`closed_block`), bit-packed, computed on all usable cores: each
    reads its own halo, so they are independent, and the whole-array numpy operations on
    rows of bits that dominate them release the GIL."""
    return map_on_cores(lambda box: np.packbits(closed_block(binary, box, radius_px)), boxes)


def postprocess_array(binary: np.ndarray, settings: PixelSettings) -> np.ndarray:
    """(H, W) bool: `postprocessed_blocks` of an in-memory plane, in one chunk."""
    out = np.zeros(binary.shape[:2], bool)
    for box, block in postprocessed_blocks(binary, settings, max(1, *binary.shape[:2])):
        out[box.y0 : box.y1, box.x0 : box.x1] = block
    return out


def postprocessed_array(binary, settings: PixelSettings, block_px: int = BLOCK_PX):
    """The post-processed plane as an (H, W) uint8 0/1 zarr array held in memory, compressed
    (a mask is mostly long runs: little memory even for a gigapixel plane), chunked like
    `block_px`: readable box by box in any order, as the metrics read."""
    out = _memory_plane(tuple(binary.shape[:2]), block_px)
    write_postprocessed(binary, out, settings, block_px)
    return out


def held_array(binary, block_px: int = BLOCK_PX):
    """The (H, W) bool array-like `binary` read once, block by block on all usable cores (a
    plane computed from a slide's pixels, read again by every pass over it otherwise), and
    held as `postprocessed_array` holds its result: (H, W) uint8 0/1 zarr in memory."""
    hw = tuple(binary.shape[:2])
    out = _memory_plane(hw, block_px)

    def copy(box: Box) -> None:  # blocks are whole chunks of `out`: no two write one chunk
        out[box.y0 : box.y1, box.x0 : box.x1] = read_window(binary, box).astype(bool).view(np.uint8)

    map_on_cores(copy, list(chunk_boxes(hw, block_px)))
    return out


def _memory_plane(hw: tuple[int, int], block_px: int):
    """An (H, W) uint8 zarr array in memory, zstd-compressed, in chunks of `block_px`."""
    return zarr.create_array(
        store=MemoryStore(),
        shape=hw,
        chunks=(min(block_px, hw[0]), min(block_px, hw[1])),
        dtype="uint8",
        fill_value=0,
        compressors=ZstdCodec(level=1),
    )


def write_postprocessed(
    binary, out, settings: PixelSettings, block_px: int = BLOCK_PX, on_chunk=None
) -> None:
    """Write the post-processed plane into `out` ((H, W) uint8 array-like: numpy, zarr) as 0/1,
    chunk by chunk; `on_chunk(done, total)` after each."""
    total = len(list(chunk_boxes(tuple(binary.shape[:2]), block_px)))
    for done, (box, block) in enumerate(postprocessed_blocks(binary, settings, block_px), 1):
        out[box.y0 : box.y1, box.x0 : box.x1] = block.view(np.uint8)
        if on_chunk is not None:
            on_chunk(done, total)
