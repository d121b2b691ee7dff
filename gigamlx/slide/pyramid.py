"""Pyramids of 2x downsampled levels, built chunk by chunk: the level sizes, the chunk grid,
and the 2x2 step (a rounded mean for images, a pick for masks)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gigamlx.core.geometry import Box


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
