"""Counter-based noise: every value is a pure function of (key, global integer coordinates).

No sequential random stream is involved, so a slide rendered chunk by chunk gives the same
bytes whatever the chunking. Only exactly rounded float ops (+, -, *, /) touch pixel values.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_GOLDEN = 0x9E3779B9


def _mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer finalizer (uint32 -> uint32, wraps), in place on `x` (returned)."""
    shifted = np.empty_like(x)  # one scratch array: the five steps allocate nothing else
    with np.errstate(over="ignore"):  # wrapping is the point; 0-d arrays would warn
        x ^= np.right_shift(x, np.uint32(16), out=shifted)
        x *= _M1
        x ^= np.right_shift(x, np.uint32(15), out=shifted)
        x *= _M2
        x ^= np.right_shift(x, np.uint32(16), out=shifted)
    return x


def hash32(key: int, *coords: np.ndarray) -> np.ndarray:
    """Hash of an integer key and integer coordinate arrays (broadcast together) to uint32."""
    h = _mix(np.array((key * _GOLDEN) & 0xFFFFFFFF, dtype=np.uint32))
    for c in coords:
        h = _mix(h ^ np.asarray(c).astype(np.uint32))  # coordinates are >= 0, < 2**32
    return h


def uniform(key: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform float32 in [0, 1) per coordinate tuple (24 random bits, exact in float32)."""
    bits = hash32(key, *coords)
    bits >>= np.uint32(8)
    out = bits.astype(np.float32)
    out *= np.float32(2.0**-24)
    return out


def _smooth_weights(coords: np.ndarray, spacing_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index and smoothstep weight of each integer coordinate (1-D)."""
    cell = coords // spacing_px
    frac = (coords - cell * spacing_px).astype(np.float32) / np.float32(spacing_px)
    return cell, frac * frac * (np.float32(3.0) - np.float32(2.0) * frac)


def value_noise(
    key: int, ys: np.ndarray, xs: np.ndarray, spacing_yx: tuple[int, int]
) -> np.ndarray:
    """Smooth value noise in [0, 1) on a lattice of `spacing_yx` pixels.

    Args:
        key: selects an independent noise field.
        ys: (h,) global row coordinates (int, ascending, >= 0).
        xs: (w,) global column coordinates (int, ascending, >= 0).
        spacing_yx: lattice spacing in pixels along (y, x).

    Returns:
        (h, w) float32. Each value depends only on (key, y, x).
    """
    cy, wy = _smooth_weights(ys, spacing_yx[0])
    cx, wx = _smooth_weights(xs, spacing_yx[1])
    ly = np.arange(cy[0], cy[-1] + 2)
    lx = np.arange(cx[0], cx[-1] + 2)
    lattice = uniform(key, ly[:, None], lx[None, :])  # (ny, nx)
    per_col = np.bincount(cx - cx[0])  # pixels per lattice column: np.repeat beats a gather
    left = np.repeat(lattice[:, :-1], per_col, axis=1)  # (ny, w)
    rows = left + (np.repeat(lattice[:, 1:], per_col, axis=1) - left) * wx
    # top + (bottom - top) * wy, one band of pixel rows per lattice row: each row difference
    # is taken once and nothing (h, w) is gathered
    steps = rows[1:] - rows[:-1]
    out = np.empty((len(ys), len(xs)), np.float32)
    per_row = np.bincount(cy - cy[0])
    stops = np.cumsum(per_row)
    for j in np.flatnonzero(per_row):
        band = slice(stops[j] - per_row[j], stops[j])
        np.multiply(steps[j], wy[band, None], out=out[band])
        out[band] += rows[j]
    return out


def fbm(key: int, ys: np.ndarray, xs: np.ndarray, spacing_px: int, octaves: int) -> np.ndarray:
    """Fractal sum of `octaves` value noises (spacing halving, weight halving), in [-1, 1).

    Returns:
        (h, w) float32.
    """
    total = value_noise(key, ys, xs, (spacing_px, spacing_px))  # 0 + 1 * noise, exactly
    weight, norm = np.float32(0.5), np.float32(1.0)
    for octave in range(1, octaves):
        spacing = max(1, spacing_px >> octave)
        octave_noise = value_noise(key + 7919 * octave, ys, xs, (spacing, spacing))
        octave_noise *= weight
        total += octave_noise
        norm += weight
        weight *= np.float32(0.5)
    total *= np.float32(2.0) / norm
    total -= np.float32(1.0)
    return total
