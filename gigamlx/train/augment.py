"""Per-region colour augmentation, exact for tiled training.

Every transform here maps one pixel's RGB to a new RGB with parameters drawn once per region,
so a tile's window transforms exactly as the same pixels of the whole region would: tiling
stays exact. The transform models how real slides differ from each other:

- stain variation: the optical density (OD = -log(I / I0)) is taken apart into haematoxylin,
  eosin and residual (Ruifrok & Johnston's HED vectors), each scaled and shifted, and put back:
  one 3x3 matrix and an offset in OD space;
- saturation (HSV-like): a mix with the pixel's grey level;
- brightness and contrast of the scanner;
- uneven illumination (`Illumination`): a smooth light factor over the region, dimmer towards
  its edges or along one side, as vignetting and a drifting lamp give. It depends on a
  pixel's place in the region, not on its neighbours, so a window still transforms exactly
  as the same pixels of the whole region would.

Blur is deliberately absent: a blurred pixel depends on its neighbours, so blurring each
window separately would differ from blurring the region near window edges (it would need its
own halo in every tile). Defocus is modelled in the synthetic benchmark instead.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box

# A region at least this large is transformed through a 256³ lookup table of the transform,
# built once per region: cheaper per pixel than the direct transform (docs/experiments.md)
LUT_MIN_REGION_PX = 64 * 2**20
APPLY_BLOCK_PX = 2**16  # pixels `ColorJitter.apply` transforms at a time (cache-sized temporaries)
LUT_RED_BLOCK = 16  # reds of the colour table built at a time (`lut32`)

# rows: the RGB optical density of one unit of haematoxylin, eosin and DAB (residual)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# spreads at strength 1: stain scale, stain shift (OD), saturation, brightness, contrast
SPREAD = {"scale": 0.25, "shift": 0.03, "saturation": 0.25, "brightness": 12.0, "contrast": 0.15}
# spreads of the illumination at strength 1: light lost at the region's edges by the curvature
# (a share, drawn in [0, curve]) and gained or lost along each axis by the tilt ([-tilt, tilt]);
# the synthetic slides' own vignette dims the corners by ~12 %
LIGHT_SPREAD = {"curve": 0.15, "tilt": 0.05}


class ColorJitter(NamedTuple):
    """One region's colour transform: RGB -> OD -> od @ matrix + offset -> RGB -> grey mix
    -> contrast/brightness. Stored as plain floats (it travels in a Region)."""

    od_matrix: tuple[float, ...]  # 3x3 row-major, applied as od_row @ matrix
    od_offset: tuple[float, float, float]
    saturation: float  # 1: unchanged, 0: grey
    brightness: float  # added to every channel, 8-bit levels
    contrast: float  # scale around mid-grey 128

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (h, w, 3) uint8, pixel by pixel.

        exp(-(od @ M + b)) factorises per input channel: out_c = 256 e^-b_c prod_k
        ((v_k + 1) / 256)^M_kc, so the OD step is 9 lookup tables and products (no log/exp
        per pixel); the saturation, contrast and brightness steps are one 3x3 mix. Pixels go
        through APPLY_BLOCK_PX at a time: the dozen float temporaries of a block stay in the
        CPU's cache, where a whole window's would stream through memory (the same bytes).
        """
        tables = self._tables()
        flat = np.ascontiguousarray(rgb).reshape(-1, 3)
        out = np.empty(flat.shape, np.uint8)
        for start in range(0, len(flat), APPLY_BLOCK_PX):
            block = slice(start, start + APPLY_BLOCK_PX)
            out[block] = _apply_block(flat[block], *tables)
        return out.reshape(rgb.shape)

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(luts (k, c, 256) float32, channel scales (3,), colour mix (in, out), shift)."""
        matrix = np.asarray(self.od_matrix, np.float64).reshape(3, 3)
        base = (np.arange(256, dtype=np.float64) + 1) / 256
        luts = (base[None, None, :] ** matrix[:, :, None]).astype(np.float32)  # (k, c, 256)
        scale = 256 * np.exp(-np.asarray(self.od_offset, np.float64))
        grey_share = (1 - self.saturation) / 3
        mix = self.contrast * (self.saturation * np.eye(3) + grey_share)  # (in, out)
        shift = 128 + self.brightness - 128 * self.contrast
        return luts, scale, mix, shift

    def apply_table(self, rgb: np.ndarray) -> np.ndarray:
        """`apply` through the lookup table of all 2^24 colours: the same bytes, faster on
        large windows once the table exists (`lut32`, one per jitter, the latest kept)."""
        return unpack_rgb(self.lookup(rgb))

    def lookup(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) uint8 -> (...) uint32, the transformed colours packed as bytes R, G, B, 0
        (`unpack_rgb` undoes it; a packed array turns faster than an (h, w, 3) one)."""
        index = rgb[..., 0].astype(np.uint32) << 16
        index |= rgb[..., 1].astype(np.uint32) << 8
        index |= rgb[..., 2]
        return np.take(lut32(self), index)


def _apply_block(
    pixels: np.ndarray, luts: np.ndarray, scale: np.ndarray, mix: np.ndarray, shift: float
) -> np.ndarray:
    """(n, 3) uint8 -> (n, 3) uint8: `ColorJitter.apply` on a block of pixels."""
    lit = []
    for c in range(3):
        channel = luts[0, c][pixels[:, 0]]
        channel *= luts[1, c][pixels[:, 1]]
        channel *= luts[2, c][pixels[:, 2]] * np.float32(scale[c])
        lit.append(_lit(channel))
    out = np.empty(pixels.shape, np.uint8)
    mixed = np.empty(len(pixels), np.float32)
    for c in range(3):
        out[:, c] = _mixed(lit, mix, shift, c, mixed)
    return out


def _lit(channel: np.ndarray) -> np.ndarray:
    """A channel's transmitted light, in place: no brighter than I0 (OD >= 0), less one."""
    np.minimum(channel, np.float32(256), out=channel)
    channel -= np.float32(1)
    return channel


def _mixed(lit, mix: np.ndarray, shift: float, c: int, out: np.ndarray) -> np.ndarray:
    """Output channel c from the three lit channels, into `out` (float32, rounded half to even
    and clipped to 0..255): the saturation, contrast and brightness mix, in the one order both
    `ColorJitter.apply` and its table (`lut32`) use, so the two give the same bytes."""
    np.multiply(lit[0], np.float32(mix[0, c]), out=out)
    out += np.float32(shift)
    out += lit[1] * np.float32(mix[1, c])
    out += lit[2] * np.float32(mix[2, c])
    np.rint(out, out=out)
    return np.clip(out, 0, 255, out=out)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(...) uint32 of bytes R, G, B, 0 -> (..., 3) uint8, contiguous (one copy per channel:
    faster than copying the 3-of-4-byte view at once)."""
    source = packed.view(np.uint8).reshape(*packed.shape, 4)
    out = np.empty((*packed.shape, 3), np.uint8)
    for c in range(3):
        out[..., c] = source[..., c]
    return out


@lru_cache(maxsize=1)
def lut32(jitter: ColorJitter) -> np.ndarray:
    """(2^24,) uint32: the transformed RGB of every colour (R << 16 | G << 8 | B), as bytes
    R, G, B, 0 in one word, so a window's lookup is one gather.

    `ColorJitter.apply`'s float32 operations in its order, over the colour cube as outer
    products of the per-channel factors (red x green, then x blue) instead of nine gathers
    per colour from a list of pixels: the same bytes. Built LUT_RED_BLOCK reds at a time
    (~20 MB of temporaries instead of ~500 MB) on the calling thread: freed blocks stay with
    the process (core.memory.keep_freed_memory), so a large transient would stay in its RSS,
    as would the heaps of a pool's threads (docs/experiments.md).
    """
    luts, scale, mix, shift = jitter._tables()
    blue = [luts[2, c] * np.float32(scale[c]) for c in range(3)]  # as `apply` multiplies
    table = np.zeros((256, 256, 256, 4), np.uint8)  # [R, G, B, byte]
    lit = np.empty((3, LUT_RED_BLOCK, 256, 256), np.float32)  # per channel, before the mix
    mixed = np.empty(lit.shape[1:], np.float32)
    for red in range(0, 256, LUT_RED_BLOCK):
        reds = slice(red, red + LUT_RED_BLOCK)
        for c in range(3):
            red_green = luts[0, c][reds, None] * luts[1, c][None, :]
            _lit(np.multiply(red_green[:, :, None], blue[c], out=lit[c]))
        for c in range(3):
            table[reds, :, :, c] = _mixed(lit, mix, shift, c, mixed)
    return table.view(np.uint32).ravel()


def draw_jitter(rng: np.random.Generator, strength: float) -> ColorJitter:
    """A random ColorJitter; `strength` scales every spread (0 gives the identity)."""
    s = {k: v * strength for k, v in SPREAD.items()}
    scale = rng.uniform(1 - s["scale"], 1 + s["scale"], size=3)
    shift = rng.uniform(-s["shift"], s["shift"], size=3)
    matrix = HED_FROM_RGB @ np.diag(scale) @ RGB_FROM_HED
    offset = shift @ RGB_FROM_HED
    return ColorJitter(
        tuple(float(v) for v in matrix.ravel()),
        tuple(float(v) for v in offset),
        float(rng.uniform(1 - s["saturation"], 1 + s["saturation"])),
        float(rng.uniform(-s["brightness"], s["brightness"])),
        float(rng.uniform(1 - s["contrast"], 1 + s["contrast"])),
    )


class Illumination(NamedTuple):
    """One region's uneven light: pixel (y, x) is scaled by g(y) * h(x), where
    g = 1 - curve * r**2 + tilt * r with r running from -1 at the region's first row to 1 at
    its last (h likewise along the columns). Stored as plain floats (it travels in a Region)."""

    curve_yx: tuple[float, float]
    tilt_yx: tuple[float, float]

    def gains(self, box: Box, region_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """float32 (box rows,) and (box cols,) factors of the window `box` of the region."""
        return (
            _axis_gain(box.y0, box.y1, region_hw[0], self.curve_yx[0], self.tilt_yx[0]),
            _axis_gain(box.x0, box.x1, region_hw[1], self.curve_yx[1], self.tilt_yx[1]),
        )


def _axis_gain(start: int, stop: int, length: int, curve: float, tilt: float) -> np.ndarray:
    r = np.arange(start, stop, dtype=np.float64) * (2 / max(length - 1, 1)) - 1
    return (1 - curve * r * r + tilt * r).astype(np.float32)


def apply_gains(rgb: np.ndarray, gain_y: np.ndarray, gain_x: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 times gain_y[y] * gain_x[x] (float32), rounded half to even, clipped to
    0..255: the arithmetic of the native window turn (backends' WindowTurner), bit for bit.
    A few rows at a time (about APPLY_BLOCK_PX pixels), so the float temporaries stay in cache.
    """
    out = np.empty(rgb.shape, np.uint8)
    rows = max(1, APPLY_BLOCK_PX // max(rgb.shape[1], 1))
    for y0 in range(0, rgb.shape[0], rows):
        gain = gain_y[y0 : y0 + rows, None] * gain_x[None, :]
        block = rgb[y0 : y0 + rows] * gain[..., None]  # float32: uint8 times float32
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[y0 : y0 + rows] = block  # as astype(np.uint8)
    return out


def draw_illumination(rng: np.random.Generator, strength: float) -> Illumination:
    """A random Illumination; `strength` scales both spreads (0 gives uniform light)."""
    curve = rng.uniform(0, LIGHT_SPREAD["curve"] * strength, size=2)
    tilt = rng.uniform(-LIGHT_SPREAD["tilt"] * strength, LIGHT_SPREAD["tilt"] * strength, size=2)
    return Illumination((float(curve[0]), float(curve[1])), (float(tilt[0]), float(tilt[1])))
