"""Tile planning: owned output windows that cover an image once, and their grown input windows.

Pure Python/numpy. Coordinates are (y, x) in full-resolution pixels of the image; boxes are
half-open. The image is conceptually zero-padded at the bottom/right to a multiple of the
model's total stride; padded pixels are never owned, so they never count in a loss or metric.
"""

from __future__ import annotations

from typing import NamedTuple

from gigamlx.core.spec import GIGAUNET_4492, Layer, halo_px, total_stride


class Box(NamedTuple):
    """Half-open pixel box [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def area(self) -> int:
        h, w = self.hw
        return h * w


class Tile(NamedTuple):
    """One unit of work for the scheduler.

    Attributes:
        out_box: real image pixels this tile owns (clipped to the unpadded image).
        in_box: input window the network runs on: the stride-aligned owned window grown by the
            halo on every side (not grown where the plan has one tile: then it is the padded
            image). It may reach past the image; those pixels read as zero.
    """

    out_box: Box
    in_box: Box

    @property
    def crop_yx(self) -> tuple[int, int]:
        """Offset of `out_box` inside the network's full-resolution output for `in_box`."""
        return self.out_box.y0 - self.in_box.y0, self.out_box.x0 - self.in_box.x0


class TilePlan(NamedTuple):
    image_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    halo_px: int
    tiles: tuple[Tile, ...]


def padded_hw(
    image_hw: tuple[int, int], spec: tuple[Layer, ...] = GIGAUNET_4492
) -> tuple[int, int]:
    """Image size rounded up to the model's total stride (the whole-image pass's input)."""
    stride = total_stride(spec)
    return tuple(-(-n // stride) * stride for n in image_hw)  # type: ignore[return-value]


def plan_tiles(
    image_hw: tuple[int, int],
    tile_hw: tuple[int, int] | int,
    spec: tuple[Layer, ...] = GIGAUNET_4492,
) -> TilePlan:
    """Split an image into tiles whose owned boxes cover every real pixel exactly once.

    Args:
        image_hw: (H, W) of the real image, any positive sizes.
        tile_hw: owned output size per tile (rows, cols), a multiple of the total stride. A tile
            larger than the padded image is shrunk to it (one tile).
        spec: layer table the halo and stride are derived from.

    Returns:
        A TilePlan, tiles in row-major order.
    """
    h, w = image_hw
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    stride = total_stride(spec)
    tile_h, tile_w = (tile_hw, tile_hw) if isinstance(tile_hw, int) else tile_hw
    if tile_h <= 0 or tile_w <= 0 or tile_h % stride or tile_w % stride:
        raise ValueError(
            f"tile size {tile_h}x{tile_w} must be a positive multiple of the total stride {stride}"
        )
    pad_h, pad_w = padded_hw(image_hw, spec)
    tile_h, tile_w = min(tile_h, pad_h), min(tile_w, pad_w)
    # one tile reads the padded image itself: a halo would bring in only zeros, which the
    # convolutions' own zero padding gives (the whole-image pass, ~27 % fewer pixels at 2048²)
    halo = 0 if (tile_h, tile_w) == (pad_h, pad_w) else halo_px(spec)
    tiles = []
    for y0 in range(0, pad_h, tile_h):
        for x0 in range(0, pad_w, tile_w):
            aligned = Box(y0, x0, min(y0 + tile_h, pad_h), min(x0 + tile_w, pad_w))
            owned = Box(y0, x0, min(aligned.y1, h), min(aligned.x1, w))
            grown = Box(aligned.y0 - halo, aligned.x0 - halo, aligned.y1 + halo, aligned.x1 + halo)
            tiles.append(Tile(owned, grown))
    return TilePlan((h, w), (pad_h, pad_w), (tile_h, tile_w), halo, tuple(tiles))


def inside_at_scale(in_box: Box, padded: tuple[int, int], scale: int) -> Box | None:
    """Part of a window that lies inside the padded image, at a tensor's own resolution.

    Returned in window-local indices at that resolution; None when the whole window is inside
    (the common case: nothing to zero). Positions outside this box must be zeroed after each
    layer so the next layer sees the same zero padding as a whole-image pass.
    """
    y0, x0 = in_box.y0 // scale, in_box.x0 // scale
    h, w = in_box.hw[0] // scale, in_box.hw[1] // scale
    lim_h, lim_w = padded[0] // scale, padded[1] // scale
    keep = Box(max(0, -y0), max(0, -x0), min(h, lim_h - y0), min(w, lim_w - x0))
    if keep == Box(0, 0, h, w):
        return None
    return keep
