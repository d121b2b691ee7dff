"""The layout of a synthetic slide: tissue pieces, holes, folds, fat, bubbles and pen strokes
as shapes, plus the slide's style (stain, background tint, focus, dust).

A scene is a short list of parameters in slide coordinates, drawn once from the seed; the
renderer (render.py) evaluates it per chunk, so pixels never depend on the chunking.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box

BOUNDARY_NOISE = 0.35  # amplitude of the boundary noise, in units of normalized ellipse radius


class Ellipse(NamedTuple):
    """Rotated ellipse: center (cy, cx) px, semi-axes (a, b) px, rotation as (cos, sin)."""

    cy: float
    cx: float
    a: float
    b: float
    cos: float
    sin: float

    def distance(self, y: float, x: float) -> float:
        """Normalized distance of point (y, x) to the centre (1 on the outline), in float64."""
        dy, dx = y - self.cy, x - self.cx
        return math.hypot(
            (dy * self.cos + dx * self.sin) / self.a, (dx * self.cos - dy * self.sin) / self.b
        )

    def bbox(self, grow: float = 1.0) -> Box:
        """Box outside which the normalized distance is >= `grow`."""
        r = max(self.a, self.b) * grow + 1
        return Box(
            math.floor(self.cy - r),
            math.floor(self.cx - r),
            math.ceil(self.cy + r),
            math.ceil(self.cx + r),
        )


class Piece(NamedTuple):
    """One tissue fragment: the union of lobes; `stain` scales dye uptake (pale < 0.5)."""

    lobes: tuple[Ellipse, ...]
    stain: float


class Stroke(NamedTuple):
    """A pen mark: polyline vertices (y, x) px, half width px, ink RGB."""

    points: tuple[tuple[float, float], ...]
    half_width_px: float
    ink_rgb: tuple[float, float, float]


class Bubble(NamedTuple):
    """An air bubble under the coverslip: centre (cy, cx) px, radius px, dark rim width px."""

    cy: float
    cx: float
    radius_px: float
    rim_px: float


class Style(NamedTuple):
    """What differs between slides as a whole (scanner, lab, staining batch)."""

    eosin_od: tuple[float, float, float]  # RGB removed per unit of eosin
    hema_od: tuple[float, float, float]  # RGB removed per unit of haematoxylin
    background_rgb: tuple[float, float, float]  # glass colour: white with a tint
    defocus: float  # 0: sharp everywhere; 1: out-of-focus patches fully blurred
    dust: float  # share of 64 px cells holding a dust speck
    faint_share: float  # share of tissue pieces stained very faintly


class Scene(NamedTuple):
    image_hw: tuple[int, int]
    seed: int
    boundary_px: int
    pieces: tuple[Piece, ...]
    holes: tuple[Ellipse, ...]
    folds: tuple[Ellipse, ...]
    strokes: tuple[Stroke, ...]
    style: Style
    fat: tuple[Ellipse, ...]  # adipose patches: white cells inside tissue, labelled tissue
    bubbles: tuple[Bubble, ...]
    loose: tuple[Ellipse, ...] = ()  # loose margins: stained fibres with glass between, tissue


INKS = (
    (40.0, 70.0, 170.0),
    (30.0, 120.0, 60.0),
    (35.0, 35.0, 45.0),
    (170.0, 40.0, 60.0),
    (120.0, 60.0, 150.0),
)
FAT_LOBULE_PX = (30.0, 90.0)  # semi-axes of a fat lobule
# a loose margin patch's semi-axes along the edge and across it: shares of its lobe's shorter
# semi-axis (across, at most a quarter: the patch stays within the window tissue.py evaluates
# around the lobes), and at most LOOSE_PATCH_PX
LOOSE_ALONG_SHARE = (0.3, 0.8)
LOOSE_ACROSS_SHARE = (0.12, 0.25)
LOOSE_PATCH_PX = (800.0, 300.0)
EOSIN_OD = np.array([22.0, 110.0, 55.0])
HEMATOXYLIN_OD = np.array([125.0, 150.0, 70.0])


def _style(rng: np.random.Generator) -> Style:
    """The slide's look: stain strength and hue, glass tint, focus, dust (see render.py)."""
    strength = rng.uniform(0.6, 1.2)
    eosin = EOSIN_OD * strength * rng.uniform(0.8, 1.2, size=3)
    hema = HEMATOXYLIN_OD * strength * rng.uniform(0.8, 1.2, size=3)
    tint = rng.uniform(-9.0, 6.0, size=3) + rng.uniform(-12.0, 4.0)
    background = np.clip(np.array([243.0, 241.0, 245.0]) + tint, 200, 252)
    return Style(
        tuple(float(v) for v in eosin),
        tuple(float(v) for v in hema),
        tuple(float(v) for v in background),
        float(rng.uniform(0.0, 1.0)),
        float(rng.uniform(0.02, 0.12)),
        float(rng.uniform(0.1, 0.35)),
    )


def _ellipse(rng: np.random.Generator, cy: float, cx: float, a: float, b: float) -> Ellipse:
    angle = rng.uniform(0, math.pi)
    return Ellipse(cy, cx, a, b, math.cos(angle), math.sin(angle))


def _piece(
    rng: np.random.Generator, cy: float, cx: float, radius_px: float, faint_share: float
) -> Piece:
    lobes = []
    for _ in range(int(rng.integers(3, 8))):
        offset, angle = rng.uniform(0, 0.55 * radius_px), rng.uniform(0, 2 * math.pi)
        a, b = rng.uniform(0.4, 0.8, size=2) * radius_px
        lobes.append(
            _ellipse(rng, cy + offset * math.sin(angle), cx + offset * math.cos(angle), a, b)
        )
    kind = rng.random()
    if kind < faint_share:  # faint: barely stained, a threshold misses it
        stain = rng.uniform(0.14, 0.28)
    elif kind < faint_share + 0.2:  # pale
        stain = rng.uniform(0.3, 0.45)
    else:
        stain = rng.uniform(0.75, 1.1)
    return Piece(tuple(lobes), float(stain))


def _holes_and_folds(rng: np.random.Generator, piece: Piece, radius_px: float):
    holes = []
    for _ in range(int(rng.integers(0, 4))):
        lobe = piece.lobes[int(rng.integers(len(piece.lobes)))]
        a, b = rng.uniform(0.05, 0.16, size=2) * radius_px
        holes.append(
            _ellipse(
                rng, lobe.cy + rng.normal(0, lobe.b / 3), lobe.cx + rng.normal(0, lobe.a / 3), a, b
            )
        )
    folds = []
    if rng.random() < 0.6:
        lobe = piece.lobes[0]
        folds.append(
            _ellipse(rng, lobe.cy, lobe.cx, 0.7 * radius_px, rng.uniform(0.02, 0.05) * radius_px)
        )
    fat = []  # small lobules of fat (a few cells across), in pixels whatever the slide size
    for _ in range(int(rng.integers(0, 6))):
        lobe = piece.lobes[int(rng.integers(len(piece.lobes)))]
        a, b = np.minimum(rng.uniform(FAT_LOBULE_PX[0], FAT_LOBULE_PX[1], size=2), radius_px / 4)
        cy, cx = lobe.cy + rng.normal(0, lobe.b / 3), lobe.cx + rng.normal(0, lobe.a / 3)
        fat.append(_ellipse(rng, cy, cx, a, b))
    return holes, folds, fat


def _loose_margins(rng: np.random.Generator, piece: Piece, count: int) -> list[Ellipse]:
    """Patches of loose tissue centred on the piece's outline (a lobe's edge no other lobe
    covers), long along it: half on the piece, half out on the glass, where the fibres fray."""
    patches = []
    for _ in range(20 * count):
        if len(patches) == count:
            break
        lobe = piece.lobes[int(rng.integers(len(piece.lobes)))]
        phi = rng.uniform(0, 2 * math.pi)
        u, v = lobe.a * math.cos(phi), lobe.b * math.sin(phi)  # on the lobe's edge
        cy = lobe.cy + u * lobe.cos - v * lobe.sin
        cx = lobe.cx + u * lobe.sin + v * lobe.cos
        if any(other.distance(cy, cx) < 0.97 for other in piece.lobes if other is not lobe):
            continue  # inside another lobe: not the outline
        du, dv = -lobe.a * math.sin(phi), lobe.b * math.cos(phi)  # the edge's direction
        ty, tx = du * lobe.cos - dv * lobe.sin, du * lobe.sin + dv * lobe.cos
        norm = math.hypot(ty, tx)
        short = min(lobe.a, lobe.b)
        along = min(rng.uniform(*LOOSE_ALONG_SHARE) * short, LOOSE_PATCH_PX[0])
        across = min(rng.uniform(*LOOSE_ACROSS_SHARE) * short, LOOSE_PATCH_PX[1])
        patches.append(Ellipse(cy, cx, along, across, ty / norm, tx / norm))
    return patches


def _bubble(rng: np.random.Generator, image_hw: tuple[int, int], short_px: int) -> Bubble:
    radius = rng.uniform(0.03, 0.12) * short_px
    cy, cx = rng.uniform(0, image_hw[0]), rng.uniform(0, image_hw[1])
    return Bubble(
        float(cy), float(cx), float(radius), float(max(2.0, rng.uniform(0.03, 0.06) * radius))
    )


def _stroke(rng: np.random.Generator, image_hw: tuple[int, int], short_px: int) -> Stroke:
    y, x = rng.uniform(0, image_hw[0]), rng.uniform(0, image_hw[1])
    heading = rng.uniform(0, 2 * math.pi)
    points = [(y, x)]
    for _ in range(int(rng.integers(2, 6))):
        heading += rng.normal(0, 0.6)
        step = rng.uniform(0.05, 0.15) * short_px
        y, x = y + step * math.sin(heading), x + step * math.cos(heading)
        points.append((y, x))
    half_width = max(2.0, rng.uniform(0.004, 0.01) * short_px)
    return Stroke(tuple(points), half_width, INKS[int(rng.integers(len(INKS)))])


def make_scene(image_hw: tuple[int, int], seed: int) -> Scene:
    """Draw the slide layout from `seed`: about 30-60 % of the area is tissue.

    Args:
        image_hw: (H, W) of the slide in pixels.
        seed: any non-negative int; the same seed and size give the same scene.
    """
    h, w = image_hw
    short, long = min(h, w), max(h, w)
    rng = np.random.default_rng([seed, h, w])
    style = _style(rng)
    slots = max(1, round(1.4 * long / short))
    pieces, holes, folds, fat = [], [], [], []
    for slot in range(slots):
        along = (slot + 0.5 + rng.uniform(-0.2, 0.2)) * long / slots
        across = short * rng.uniform(0.4, 0.6)
        radius = short * rng.uniform(0.3, 0.42)
        cy, cx = (across, along) if w >= h else (along, across)
        pieces.append(_piece(rng, cy, cx, radius, style.faint_share))
        piece_holes, piece_folds, piece_fat = _holes_and_folds(rng, pieces[-1], radius)
        holes += piece_holes
        folds += piece_folds
        fat += piece_fat
    for _ in range(2 * slots):  # small fragments anywhere
        radius = short * rng.uniform(0.03, 0.08)
        pieces.append(_piece(rng, rng.uniform(0, h), rng.uniform(0, w), radius, style.faint_share))
    strokes = [_stroke(rng, image_hw, short) for _ in range(1 + slots // 2)]
    bubbles = [_bubble(rng, image_hw, short) for _ in range(int(rng.integers(1, 2 + slots)))]
    # drawn from their own stream, so that the rest of the scene is the one version 3 drew
    loose_rng = np.random.default_rng([seed, h, w, 4])
    loose = [
        patch
        for piece in pieces[:slots]
        for patch in _loose_margins(loose_rng, piece, int(loose_rng.integers(1, 5)))
    ]
    boundary_px = int(2 ** np.clip(round(math.log2(max(short, 1) / 6)), 4, 11))
    return Scene(
        (h, w),
        seed,
        boundary_px,
        tuple(pieces),
        tuple(holes),
        tuple(folds),
        tuple(strokes),
        style,
        tuple(fat),
        tuple(bubbles),
        tuple(loose),
    )
