"""Soft discs, one per lattice cell at a hashed position: haematoxylin nuclei in tissue and
dust specks anywhere. Each disc's radius and centre are drawn per cell, so a pixel's coverage
depends only on (seed, y, x).
"""

from __future__ import annotations

import numpy as np

from gigamlx.synth.noise import uniform, value_noise
from gigamlx.synth.scene import Scene

F32 = np.float32
NUCLEUS_CELL_PX = 16
DUST_CELL_PX = 64


def _discs(
    key: int, ys, xs, ysf, xsf, cell_px: int, radius_px: tuple[float, float], presence, soft=1
):
    """One soft disc per cell at a hashed position, kept with probability `presence` (a float,
    or a function of the cells' (ly, lx) giving (ny, nx)); `soft` (scalar or (h, w)) widens
    the disc's edge, 1 = one pixel (defocus).

    Returns:
        (h, w) float32 coverage in [0, 1].
    """
    cy, cx = ys // cell_px, xs // cell_px
    ly, lx = np.arange(cy[0], cy[-1] + 1), np.arange(cx[0], cx[-1] + 1)
    per_row, per_col = np.bincount(cy - cy[0]), np.bincount(cx - cx[0])  # pixels per cell

    def draw(salt: int) -> np.ndarray:
        return uniform(key + salt, ly[:, None], lx[None, :])  # (ny, nx): one value per cell

    # Each cell's radius and centre, computed once per cell rather than once per pixel
    r = F32(radius_px[0]) + F32(radius_px[1] - radius_px[0]) * draw(1)  # (ny, nx)
    span = F32(cell_px) - F32(2) * r
    oy = (ly * cell_px).astype(np.float32)[:, None] + r + span * draw(2)
    ox = (lx * cell_px).astype(np.float32)[None, :] + r + span * draw(3)
    # r * r - dy * dy varies along x only from cell to cell, and dx * dx along y: each is
    # evaluated at (h, nx) or (ny, w) and repeated out to (h, w)
    dy = ysf[:, None] - np.repeat(oy, per_row, axis=0)  # (h, nx)
    reach = np.repeat(r * r, per_row, axis=0) - dy * dy
    dx = xsf[None, :] - np.repeat(ox, per_col, axis=1)  # (ny, w)
    disc = np.repeat(reach, per_col, axis=1)  # (h, w)
    disc -= np.repeat(dx * dx, per_row, axis=0)
    edge = _per_pixel(F32(2) * r, per_row, per_col)
    if not np.isscalar(soft):
        edge *= soft
    disc /= edge
    disc += F32(0.5)
    np.clip(disc, 0, 1, out=disc)
    keep = draw(4) < (presence(ly, lx) if callable(presence) else F32(presence))
    disc *= _per_pixel(keep, per_row, per_col)
    return disc


def _per_pixel(per_cell: np.ndarray, per_row: np.ndarray, per_col: np.ndarray) -> np.ndarray:
    """(ny, nx) cell values repeated out to the (h, w) pixels: `per_row` pixels per cell row."""
    return np.repeat(np.repeat(per_cell, per_row, axis=0), per_col, axis=1)


def nuclei(scene: Scene, ys, xs, ysf, xsf, blur) -> np.ndarray:
    """Nuclei-like purple texture in [0, 1], denser in 'cellular' regions. (h, w) float32."""
    key = scene.seed * 977 + 5
    cell = NUCLEUS_CELL_PX

    def presence(ly, lx):  # cellularity sampled at cell centers, so a nucleus is whole or absent
        cellular = value_noise(key + 2, ly * cell + cell // 2, lx * cell + cell // 2, (384, 384))
        return F32(0.15) + F32(0.75) * cellular  # (ny, nx)

    soft = F32(1) + F32(5) * blur
    disc = _discs(key, ys, xs, ysf, xsf, cell, (2.5, 5.5), presence, soft)
    chromatin = F32(0.7) + F32(0.3) * uniform(key + 3, ys[:, None], xs[None, :])
    return disc * chromatin / (F32(1) + F32(0.6) * blur)


def dust(scene: Scene, ys, xs, ysf, xsf) -> np.ndarray:
    """Coverage (h, w) in [0, 1] of the dust specks."""
    return _discs(
        scene.seed * 977 + 13, ys, xs, ysf, xsf, DUST_CELL_PX, (1.5, 6.0), scene.style.dust
    )
