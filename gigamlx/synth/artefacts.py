"""Slide artefacts a threshold gets wrong, each a pure function of (scene, y, x).

- defocus: patches of the slide out of focus (a slow noise field times the slide's `defocus`);
  the renderer softens nuclei, fibres and tissue edges there. Modelled analytically rather than
  by convolving, so a pixel never depends on its chunk's neighbours.
- fat: adipose tissue, white cells separated by thin eosin septa (a Voronoi pattern of
  jittered cell centres); labelled tissue, although most of its pixels are as white as glass.
- bubbles: air under the coverslip, a dark refracting rim and a slightly brighter inside;
  labelled by what lies under them.
"""

from __future__ import annotations

import numpy as np

from gigamlx.synth.noise import uniform, value_noise
from gigamlx.synth.scene import Scene

F32 = np.float32
FAT_CELL_PX = 26  # mean adipocyte spacing
SEPTUM_PX = 2.0  # membrane thickness
DEFOCUS_PATCH_PX = 1024  # scale of the out-of-focus patches


def defocus(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Blur amount per pixel in [0, 1]: 0 in focus. (h, w) float32."""
    if scene.style.defocus <= 0:
        return np.zeros((len(ys), len(xs)), F32)
    patch = value_noise(scene.seed * 977 + 21, ys, xs, (DEFOCUS_PATCH_PX, DEFOCUS_PATCH_PX))
    return np.clip((patch - F32(0.45)) * F32(4), 0, 1) * F32(scene.style.defocus)


def _worley_gap(key: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """F2 - F1 of a jittered-grid Voronoi pattern: ~0 on cell borders. (h, w) float32."""
    ysf, xsf = ys.astype(F32)[:, None], xs.astype(F32)[None, :]
    cy, cx = (ys // FAT_CELL_PX)[:, None], (xs // FAT_CELL_PX)[None, :]
    first = np.full((len(ys), len(xs)), np.inf, F32)
    second = first.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = cy + dy, cx + dx
            oy = (ny * FAT_CELL_PX).astype(F32) + F32(FAT_CELL_PX) * uniform(key, ny + 1, nx + 1)
            ox = (nx * FAT_CELL_PX).astype(F32) + F32(FAT_CELL_PX) * uniform(
                key + 1, ny + 1, nx + 1
            )
            d = np.sqrt((ysf - oy) ** 2 + (xsf - ox) ** 2)
            second = np.minimum(second, np.maximum(first, d))
            first = np.minimum(first, d)
    return second - first


def fat(scene: Scene, ys: np.ndarray, xs: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Septum coverage in [0, 1] where `inside` (the fat patches), else 0. (h, w) float32.

    Args:
        inside: (h, w) bool, the pixels in a fat patch (from the scene's `fat` ellipses).
    """
    out = np.zeros(inside.shape, F32)
    if not inside.any():
        return out
    rows, cols = np.nonzero(inside.any(axis=1))[0], np.nonzero(inside.any(axis=0))[0]
    win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    gap = _worley_gap(scene.seed * 977 + 23, ys[win[0]], xs[win[1]])
    out[win] = np.clip(F32(SEPTUM_PX) - gap + F32(0.5), 0, 1) * inside[win]
    return out


def bubble_shade(scene: Scene, ysf: np.ndarray, xsf: np.ndarray) -> np.ndarray:
    """Multiplicative light factor of the air bubbles, about 0.5-1.03. (h, w) float32."""
    shade = np.ones((len(ysf), len(xsf)), F32)
    for b in scene.bubbles:
        # beyond radius + rim / 2 + 0.5 px both ramps are 0 and the factor is exactly 1: only
        # the bubble's bounding square (a px of slack for float32 distances) is evaluated
        reach = b.radius_px + b.rim_px / 2 + 2
        r0, r1 = np.searchsorted(ysf, [b.cy - reach, b.cy + reach])
        c0, c1 = np.searchsorted(xsf, [b.cx - reach, b.cx + reach])
        if r0 >= r1 or c0 >= c1:
            continue
        dy, dx = ysf[r0:r1, None] - F32(b.cy), xsf[None, c0:c1] - F32(b.cx)
        d = np.sqrt(dy * dy + dx * dx)
        ring = np.clip(F32(b.rim_px / 2) - np.abs(d - F32(b.radius_px)) + F32(0.5), 0, 1)
        inside = np.clip(F32(b.radius_px) - d + F32(0.5), 0, 1)
        shade[r0:r1, c0:c1] *= F32(1) + F32(0.03) * inside - F32(0.45) * ring
    return shade
