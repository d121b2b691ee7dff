"""Fields of rotated ellipses over a sampled pixel grid (1 - normalized distance to the centre),
and their maximum, evaluated only where an ellipse can change what the caller makes of it.

Which pixels are skipped is decided in float64 from the ellipse's geometry, with a margin far
wider than the float32 rounding of a field, so the pixels that matter get the same bits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box
from gigamlx.synth.scene import Ellipse

F32 = np.float32
MARGIN = 1e-3  # normalized distance; a float32 field is off by ~1e-5 at most


def sample_window(ys: np.ndarray, xs: np.ndarray, box: Box) -> tuple[slice, slice] | None:
    """Index window of the sampled coordinates that fall inside `box`, or None."""
    r0, r1 = np.searchsorted(ys, [box.y0, box.y1])
    c0, c1 = np.searchsorted(xs, [box.x0, box.x1])
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None


def ellipse_field(e: Ellipse, ysf: np.ndarray, xsf: np.ndarray) -> np.ndarray:
    """1 - normalized distance to the ellipse center: > 0 inside. (h, w) float32."""
    dy, dx = ysf[:, None] - F32(e.cy), xsf[None, :] - F32(e.cx)
    u = dy * F32(e.cos) + dx * F32(e.sin)
    u *= F32(1 / e.a)
    v = dx * F32(e.cos) - dy * F32(e.sin)
    v *= F32(1 / e.b)
    u *= u
    v *= v
    u += v
    np.sqrt(u, out=u)
    return np.subtract(F32(1), u, out=u)


def _reach_box(e: Ellipse, reach: float) -> Box:
    """Axis-aligned box holding every point within normalized distance `reach` of `e`."""
    half_y = reach * math.hypot(e.a * e.cos, e.b * e.sin)
    half_x = reach * math.hypot(e.a * e.sin, e.b * e.cos)
    return Box(
        math.floor(e.cy - half_y) - 1,
        math.floor(e.cx - half_x) - 1,
        math.ceil(e.cy + half_y) + 2,
        math.ceil(e.cx + half_x) + 2,
    )


def _nearest_on_segment(e: Ellipse, fixed: float, lo: float, hi: float, along_x: bool) -> float:
    """Least normalized distance on the segment y = fixed, x in [lo, hi] (or x = fixed, y in
    [lo, hi]): the squared distance is a convex quadratic there, least at its clamped vertex."""
    ca, sa, cb, sb = e.cos / e.a, e.sin / e.a, e.cos / e.b, e.sin / e.b
    if along_x:  # u = dy*ca + dx*sa, v = dx*cb - dy*sb with dy fixed
        d = fixed - e.cy
        t = -(d * ca * sa - d * sb * cb) / (sa * sa + cb * cb)
        x = min(max(e.cx + t, lo), hi)
        return e.distance(fixed, x)
    d = fixed - e.cx
    t = -(d * sa * ca - d * cb * sb) / (ca * ca + sb * sb)
    y = min(max(e.cy + t, lo), hi)
    return e.distance(y, fixed)


def distance_range(e: Ellipse, rect: Box) -> tuple[float, float]:
    """Least and greatest normalized distance to `e` over the closed rectangle
    [y0, y1] x [x0, x1] (corners inclusive here), in float64."""
    corners = [(y, x) for y in (rect.y0, rect.y1) for x in (rect.x0, rect.x1)]
    far = max(e.distance(y, x) for y, x in corners)  # convex: greatest at a corner
    if rect.y0 <= e.cy <= rect.y1 and rect.x0 <= e.cx <= rect.x1:
        return 0.0, far
    near = min(
        _nearest_on_segment(e, rect.y0, rect.x0, rect.x1, True),
        _nearest_on_segment(e, rect.y1, rect.x0, rect.x1, True),
        _nearest_on_segment(e, rect.x0, rect.y0, rect.y1, False),
        _nearest_on_segment(e, rect.x1, rect.y0, rect.y1, False),
    )
    return near, far


class MaxField(NamedTuple):
    """The max of some ellipse fields over `window` of the sampled grid."""

    window: tuple[slice, slice]  # (rows, cols) of the sampled grid
    best: np.ndarray  # (h', w') float32 max field, -2 where no ellipse was evaluated
    chosen: np.ndarray | None  # (h', w') float32 value of the first ellipse at the max, or 0


class _Candidate(NamedTuple):
    index: int
    ellipse: Ellipse
    window: tuple[slice, slice]
    rect: Box  # first and last sampled coordinates of the window, both inclusive
    near: float  # least normalized distance over rect


def _contains(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner, strict=True))


def _dominated(c: _Candidate, others: list[_Candidate]) -> bool:
    """True if another ellipse, evaluated wherever `c` is, is strictly larger all over it."""
    return any(
        o is not c
        and _contains(o.window, c.window)
        and distance_range(o.ellipse, c.rect)[1] + MARGIN < c.near
        for o in others
    )


def _candidates(ellipses, ys, xs, grow: float, floor: float) -> list[_Candidate]:
    """Ellipses whose field can exceed `floor` on the grid, each with its window there."""
    reach = 1 - floor + MARGIN  # beyond this normalized distance the field is below floor
    out = []
    for i, e in enumerate(ellipses):
        a, b = e.bbox(grow), _reach_box(e, reach)
        box = Box(max(a.y0, b.y0), max(a.x0, b.x0), min(a.y1, b.y1), min(a.x1, b.x1))
        win = sample_window(ys, xs, box)
        if win is None:
            continue
        rows, cols = win
        rect = Box(ys[rows.start], xs[cols.start], ys[rows.stop - 1], xs[cols.stop - 1])
        near = distance_range(e, rect)[0]
        if near < reach:
            out.append(_Candidate(i, e, win, rect, near))
    return out


def max_field(
    ellipses, ys, xs, ysf, xsf, grow: float, floor: float, values=None
) -> MaxField | None:
    """Max of the ellipse fields, each within normalized distance `grow` of its ellipse, and
    optionally the `values` entry of the first ellipse reaching the max.

    Exact wherever the max exceeds `floor`; elsewhere it is some value <= floor and the chosen
    value arbitrary: the caller must not look there. That lets an ellipse be skipped where its
    field stays below floor, or below another's all over its window.

    Args:
        ellipses: sequence of `Ellipse`.
        ys, xs: (h,), (w,) ascending sampled coordinates; ysf, xsf: the same as float32.

    Returns:
        The max over the union of the windows evaluated, or None if no field exceeds floor.
    """
    candidates = _candidates(ellipses, ys, xs, grow, floor)
    kept = [c for c in candidates if not _dominated(c, candidates)]
    if not kept:
        return None
    top, left = min(c.window[0].start for c in kept), min(c.window[1].start for c in kept)
    bottom, right = max(c.window[0].stop for c in kept), max(c.window[1].stop for c in kept)
    best = np.full((bottom - top, right - left), -2.0, F32)
    chosen = None if values is None else np.zeros_like(best)
    for c in kept:  # in the ellipses' order: the first to reach the max is chosen
        rows, cols = c.window
        local = (
            slice(rows.start - top, rows.stop - top),
            slice(cols.start - left, cols.stop - left),
        )
        field = ellipse_field(c.ellipse, ysf[rows], xsf[cols])
        view = best[local]
        if chosen is not None:
            np.copyto(chosen[local], F32(values[c.index]), where=field > view)
        np.maximum(view, field, out=view)
    return MaxField((slice(top, bottom), slice(left, right)), best, chosen)
