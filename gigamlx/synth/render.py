"""The pixels of a reproducible H&E-like synthetic slide and its known tissue mask, for any
window (synth/slide.py writes whole slides chunk by chunk).

Every pixel is a pure function of (seed, y, x): the same seed gives the same bytes whatever
the window, so a slide's chunks render independently and memory stays bounded by one chunk.

What each part models, and its label (mask 1 = tissue):
- tissue pieces: lobed shapes with noisy edges, eosin fibres and haematoxylin nuclei;
  some pale, some (the slide's `faint_share`) barely stained: tissue.
- slide style (drawn from the seed): stain strength and hue, glass tint, dust density and
  how much of the slide is out of focus: a threshold tuned on one slide fails on another.
- holes (tears, lumina): glass inside tissue, within the tissue region a pathologist outlines:
  tissue (the network cannot see across a wide one; the tissue mask's hole filling does).
- fat: white cells with thin stained septa inside tissue: tissue (artefacts.py).
- folds: tissue folded over itself, twice the stain: tissue.
- defocus: patches with soft nuclei, faded fibres and wide edges: labels unchanged.
- bubbles: dark rims and brighter insides: labelled by what is under them.
- dust and pen marks: dark specks and coloured strokes painted on top: labels unchanged
  (background on glass, which is where most of them lie).
- background: tinted glass, uneven illumination and sensor grain: background.

The mask drawn here is the tissue region as each window sees it. A slide's stored mask also
fills the glass the region encloses, between touching pieces too (synth/slide.py): that needs
the whole slide, so it is not a function of one window.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box
from gigamlx.synth.artefacts import bubble_shade, defocus
from gigamlx.synth.discs import dust, nuclei
from gigamlx.synth.fields import sample_window
from gigamlx.synth.noise import fbm, uniform, value_noise
from gigamlx.synth.scene import Scene, Stroke
from gigamlx.synth.tissue import Tissue, tissue_layer

SYNTH_VERSION = 5  # 2: styles, faint tissue, fat, bubbles, defocus; 3: holes labelled tissue;
# 4: loose margins (fibres with glass between, all tissue); 5: the stored mask fills every
# white space the tissue encloses (synth/slide.py), glass between touching pieces included
DUST_RGB = np.array([70.0, 66.0, 62.0], np.float32)
F32 = np.float32


def _stroke_alpha(stroke: Stroke, ys, xs, ysf, xsf):
    """Coverage of a pen stroke: (window, alpha) with alpha the (rows, cols) float32 coverage
    inside `window` (a pair of slices of the sampled grid) and 0 outside; None if it misses."""
    hw, segments = stroke.half_width_px, []
    for (y0, x0), (y1, x1) in zip(stroke.points[:-1], stroke.points[1:], strict=True):
        box = Box(
            int(min(y0, y1) - hw - 2),
            int(min(x0, x1) - hw - 2),
            int(max(y0, y1) + hw + 2),
            int(max(x0, x1) + hw + 2),
        )
        win = sample_window(ys, xs, box)
        if win is not None:
            segments.append(((y0, x0), (y1, x1), win))
    if not segments:
        return None
    top, left = min(w[0].start for *_, w in segments), min(w[1].start for *_, w in segments)
    bottom, right = max(w[0].stop for *_, w in segments), max(w[1].stop for *_, w in segments)
    alpha = np.zeros((bottom - top, right - left), F32)
    for (y0, x0), (y1, x1), win in segments:
        vy, vx = F32(y1 - y0), F32(x1 - x0)
        py, px = ysf[win[0]][:, None] - F32(y0), xsf[win[1]][None, :] - F32(x0)
        t = np.clip((py * vy + px * vx) * F32(1 / max(float(vy * vy + vx * vx), 1e-6)), 0, 1)
        ey, ex = py - t * vy, px - t * vx
        cover = np.clip(F32(hw) - np.sqrt(ey * ey + ex * ex) + F32(0.5), 0, 1) * F32(0.8)
        rows = slice(win[0].start - top, win[0].stop - top)
        cols = slice(win[1].start - left, win[1].stop - left)
        alpha[rows, cols] = np.maximum(alpha[rows, cols], cover)
    return (slice(top, bottom), slice(left, right)), alpha


def _illumination(scene: Scene, ys, xs, ysf, xsf) -> np.ndarray:
    """Uneven illumination: vignette plus a slow drift, about 0.85-1.0. (h, w) float32."""
    h, w = scene.image_hw
    ry = ysf * F32(2 / h) - F32(1)
    rx = xsf * F32(2 / w) - F32(1)
    drift_px = int(2 ** max(6, round(np.log2(max(min(h, w), 2) / 2))))
    light = fbm(scene.seed * 977 + 7, ys, xs, drift_px, 2)
    light *= F32(0.03)
    light += (F32(1) - F32(0.06) * (ry * ry))[:, None] - F32(0.06) * (rx * rx)[None, :]
    return light


def _nonzero_window(values: np.ndarray) -> tuple[slice, slice] | None:
    """Smallest window of `values` (h, w) holding all its nonzero pixels, or None."""
    rows, cols = np.flatnonzero(values.any(axis=1)), np.flatnonzero(values.any(axis=0))
    if not len(rows):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


class _Stain(NamedTuple):
    """Eosin and haematoxylin amounts, (h', w') float32 each, over `window` of the grid."""

    window: tuple[slice, slice]
    eosin: np.ndarray
    hema: np.ndarray


def _stain(scene: Scene, ys, xs, ysf, xsf, tissue: Tissue) -> _Stain | None:
    """The dyes where the tissue's density is nonzero; None where it is 0 all over (dye 0
    leaves the glass colour exactly, so no pixel outside the window needs it)."""
    inner = _nonzero_window(tissue.density)
    if inner is None:
        return None
    (rows, cols), (inner_rows, inner_cols) = tissue.window, inner
    window = (
        slice(rows.start + inner_rows.start, rows.start + inner_rows.stop),
        slice(cols.start + inner_cols.start, cols.start + inner_cols.stop),
    )
    ys, xs, ysf, xsf = ys[window[0]], xs[window[1]], ysf[window[0]], xsf[window[1]]
    blur, density, fold = tissue.blur[inner], tissue.density[inner], tissue.fold[inner]
    fiber = value_noise(scene.seed * 977 + 9, ys, xs, (5, 37))
    eosin = density * fold * (F32(0.45) + F32(0.55) * fiber * (F32(1) - F32(0.8) * blur))
    hema = density * fold * (F32(0.08) + F32(0.9) * nuclei(scene, ys, xs, ysf, xsf, blur))
    return _Stain(window, eosin, hema)


class _Debris(NamedTuple):
    """What is painted over the glass and tissue: dust specks, then pen strokes."""

    specks: np.ndarray  # flat indices of the pixels a speck covers (elsewhere blending is a no-op)
    speck_weight: np.ndarray  # their blend weight, coverage * 0.85
    strokes: list  # (ink_rgb, window, alpha) of each stroke that reaches the grid, in order


def _debris(scene: Scene, ys, xs, ysf, xsf) -> _Debris:
    coverage = dust(scene, ys, xs, ysf, xsf).ravel()
    specks = np.flatnonzero(coverage)
    strokes = []
    for stroke in scene.strokes:
        covered = _stroke_alpha(stroke, ys, xs, ysf, xsf)
        if covered:
            strokes.append((stroke.ink_rgb, *covered))
    return _Debris(specks, coverage[specks] * F32(0.85), strokes)


def _channel(scene: Scene, c: int, stain, light, grain, debris: _Debris) -> np.ndarray:
    """Colour channel `c` of the slide, (h, w) float32 before rounding: glass, dyes, light,
    grain, then dust and pen blended over."""
    style = scene.style
    plane = np.full(light.shape, np.array(style.background_rgb, F32)[c], F32)
    if stain:
        plane[stain.window] -= stain.eosin * np.array(style.eosin_od, F32)[c]
        plane[stain.window] -= stain.hema * np.array(style.hema_od, F32)[c]
    plane *= light
    plane += grain
    flat = plane.ravel()
    flat[debris.specks] += debris.speck_weight * (DUST_RGB[c] - flat[debris.specks])
    for ink_rgb, window, alpha in debris.strokes:
        plane[window] += alpha * (np.array(ink_rgb, F32)[c] - plane[window])
    return plane


def _full(shape: tuple[int, int], window, values: np.ndarray | None) -> np.ndarray:
    """`values` placed at `window` of a zero (h, w) array of their dtype."""
    out = np.zeros(shape, values.dtype)
    if window is not None:
        out[window] = values
    return out


def render(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render the slide at sampled global coordinates.

    Args:
        scene: layout from `make_scene`.
        ys: (h,) ascending row coordinates, ints >= 0 (a chunk's rows, or a strided preview).
        xs: (w,) ascending column coordinates.

    Returns:
        rgb (h, w, 3) uint8 and tissue region (h, w) uint8 (0/1), before the slide's
        enclosed glass is filled (synth/slide.py).
    """
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    ysf, xsf = ys.astype(np.float32), xs.astype(np.float32)
    tissue = tissue_layer(scene, ys, xs, ysf, xsf)
    stain = _stain(scene, ys, xs, ysf, xsf, tissue) if tissue.window else None
    grain = uniform(scene.seed * 977 + 11, ys[:, None], xs[None, :])
    grain -= F32(0.5)
    grain *= F32(12)
    light = _illumination(scene, ys, xs, ysf, xsf) * bubble_shade(scene, ysf, xsf)
    debris = _debris(scene, ys, xs, ysf, xsf)
    rgb = np.empty((len(ys), len(xs), 3), np.uint8)
    for c in range(3):  # one (h, w) plane at a time: numpy is slow over a last axis of 3
        plane = _channel(scene, c, stain, light, grain, debris)
        np.rint(plane, out=plane)
        rgb[..., c] = np.clip(plane, 0, 255, out=plane)
    mask = _full(grain.shape, tissue.window, tissue.region)
    return rgb, mask.view(np.uint8)


class Layers(NamedTuple):
    """Where the renderer drew each kind of thing, (h, w) bool each: what a model's errors on a
    synthetic slide can be attributed to (scripts/error_anatomy.py)."""

    tissue: np.ndarray  # the label
    fat: np.ndarray  # fat patches: tissue, most of it as white as glass
    loose: np.ndarray  # loose margins: tissue, fibres with glass between them
    faint: np.ndarray  # tissue outside fat and loose margins with stain density < FAINT_DENSITY
    # (pale pieces, edges, holes)
    pen: np.ndarray  # under a pen stroke (coverage >= 5 %)
    dust: np.ndarray  # under a dust speck (coverage >= 5 %)
    bubble_rim: np.ndarray  # under a bubble's dark rim (light dimmed by >= 3 %)
    defocus: np.ndarray  # in an out-of-focus patch (blur >= 0.5)


FAINT_DENSITY = 0.1  # below this stain density tissue differs from glass by a few grey levels


def scene_layers(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> Layers:
    """The layers of `scene` at sampled global coordinates, like `render` (same arguments)."""
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    ysf, xsf = ys.astype(np.float32), xs.astype(np.float32)
    hw = (len(ys), len(xs))
    tissue = tissue_layer(scene, ys, xs, ysf, xsf)
    faint = tissue.region & ~tissue.fat & ~tissue.loose & (tissue.density < F32(FAINT_DENSITY))
    pen = np.zeros(hw, bool)
    for stroke in scene.strokes:
        covered = _stroke_alpha(stroke, ys, xs, ysf, xsf)
        if covered:
            pen[covered[0]] |= covered[1] >= F32(0.05)
    return Layers(
        tissue=_full(hw, tissue.window, tissue.region),
        fat=_full(hw, tissue.window, tissue.fat),
        loose=_full(hw, tissue.window, tissue.loose),
        faint=_full(hw, tissue.window, faint),
        pen=pen,
        dust=dust(scene, ys, xs, ysf, xsf) >= F32(0.05),
        bubble_rim=bubble_shade(scene, ysf, xsf) <= F32(0.97),
        defocus=defocus(scene, ys, xs) >= F32(0.5),
    )
