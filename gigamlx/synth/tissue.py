"""The tissue layer of a synthetic slide: lobed pieces with noisy edges, holes, fat and folds,
computed only over the window of the grid that some piece's lobe can reach.

- tissue pieces: unions of lobes (ellipses) whose edges the boundary noise roughens; each
  piece's `stain` scales its dye uptake.
- holes (tears, lumina): glass inside tissue, within the tissue region a pathologist outlines:
  no stain, yet labelled tissue.
- fat: white cells with thin stained septa inside tissue: tissue (artefacts.py).
- folds: tissue folded over itself, up to twice the stain.
- loose margins: where a piece frays, wavy stained fibres with glass between them, on the piece
  and out beyond its edge: all of the patch is tissue, as a pathologist outlines it (the glass
  between the fibres reaches the open glass, so no hole filling recovers it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gigamlx.synth.artefacts import defocus, fat
from gigamlx.synth.fields import max_field
from gigamlx.synth.noise import fbm, value_noise
from gigamlx.synth.scene import BOUNDARY_NOISE, Scene

F32 = np.float32
EDGE_FADE = 0.015  # stain fades in over this normalized distance inside the edge
FAT_REACH = -0.05  # fat counts as tissue where the lobes' strength exceeds this
# Where the lobes' max field is at or below this, even the largest boundary noise leaves the
# strength below FAT_REACH: nothing there is tissue, stained or fat, whatever the field's value
LOBE_FLOOR = FAT_REACH - BOUNDARY_NOISE
HALF_NOISE_FLOOR = -BOUNDARY_NOISE / 2  # holes and fat need field > -noise / 2 to show
# loose fibres: the level lines of a value noise on this lattice (rows, cols), FIBRE_LEVELS of
# them per unit of noise, each FIBRE_SHARE of the spacing between two wide
FIBRE_LATTICE_PX = (36, 110)
FIBRE_LEVELS = 3
FIBRE_SHARE = 0.25
RIM_DEPTH = 0.1  # the outline's fibre: this far inside the patch, in its normalized radius
RIM_PIECE_PX = (40, 40)  # lattice of the noise that breaks the outline into pieces


class Tissue(NamedTuple):
    """The tissue layer over `window` of the sampled grid; outside it there is only glass."""

    window: tuple[slice, slice] | None  # (rows, cols); None: no tissue on the grid
    region: np.ndarray  # (h', w') bool: the label, holes and fat included
    density: np.ndarray  # (h', w') float32 stain density, 0 on glass and in holes
    fold: np.ndarray  # (h', w') float32 stain factor of folds, 1 where none
    fat: np.ndarray  # (h', w') bool fat patches
    blur: np.ndarray  # (h', w') float32 defocus (artefacts.defocus)
    loose: np.ndarray  # (h', w') bool loose margin patches (fibres and the glass between)


def _no_tissue() -> Tissue:
    empty = np.zeros((0, 0), F32)
    return Tissue(None, empty.astype(bool), empty, empty, empty.astype(bool), empty, empty > 0)


def _holes_and_fat(scene: Scene, ys, xs, ysf, xsf, noise, strength):
    """Fat patches (h, w) bool, and hole interiors (h, w) bool, over the lobes' window."""
    in_fat = np.zeros(strength.shape, bool)
    fat_field = max_field(scene.fat, ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE / 2, HALF_NOISE_FLOOR)
    if fat_field:
        win = fat_field.window
        in_fat[win] = (fat_field.best + noise[win] * F32(0.5) > 0) & (strength[win] > F32(-0.05))
    in_hole = np.zeros(strength.shape, bool)
    holes = max_field(scene.holes, ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE / 2, HALF_NOISE_FLOOR)
    if holes:
        in_hole[holes.window] = holes.best - noise[holes.window] * F32(0.5) > 0
    return in_fat, in_hole


def _loose(scene: Scene, ys, xs, ysf, xsf, noise) -> tuple[np.ndarray, np.ndarray] | None:
    """Loose margin patches (h, w) bool, and their fibres (h, w) bool, or None if none here."""
    patches = max_field(scene.loose, ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE / 2, HALF_NOISE_FLOOR)
    if not patches:
        return None
    in_loose = np.zeros(noise.shape, bool)
    win = patches.window
    inside = patches.best + noise[win] * F32(0.5)
    in_loose[win] = inside > 0
    level = value_noise(scene.seed * 977 + 29, ys[win[0]], xs[win[1]], FIBRE_LATTICE_PX)
    level *= F32(FIBRE_LEVELS)
    # the patch's outline drawn too, in pieces: where the fibres end is in the image, and the
    # glass between them still reaches the open glass through the breaks
    rim = value_noise(scene.seed * 977 + 31, ys[win[0]], xs[win[1]], RIM_PIECE_PX) > F32(0.4)
    rim &= inside < F32(RIM_DEPTH)
    fibres = np.zeros(noise.shape, bool)
    fibres[win] = ((level - np.floor(level) < F32(FIBRE_SHARE)) | rim) & in_loose[win]
    return in_loose, fibres


def _fold(scene: Scene, ys, xs, ysf, xsf) -> np.ndarray:
    """Stain factor (h, w) float32 of the folds: 1, up to 1.9 inside a fold."""
    factor = np.ones((len(ys), len(xs)), F32)
    folds = max_field(scene.folds, ys, xs, ysf, xsf, 1.0, 0.0)  # field <= 0: factor 1
    if folds:
        fold = np.clip(folds.best * F32(4), 0, 1)
        factor[folds.window] = F32(1) + F32(0.9) * fold
    return factor


def tissue_layer(scene: Scene, ys, xs, ysf, xsf) -> Tissue:
    """Tissue region, stain density, fold factor and fat patches: fat is tissue, its cells
    unstained and its membranes stained; holes are glass in the image (no stain) and tissue in
    the region, as a pathologist outlines it.

    Args:
        ys, xs: (h,), (w,) ascending sampled coordinates; ysf, xsf: the same as float32.
    """
    lobes = [(lobe, p.stain) for p in scene.pieces for lobe in p.lobes]
    grow = 1 + BOUNDARY_NOISE
    field = max_field(
        [e for e, _ in lobes], ys, xs, ysf, xsf, grow, LOBE_FLOOR, [s for _, s in lobes]
    )
    if field is None:
        return _no_tissue()
    rows, cols = field.window
    ys, xs, ysf, xsf = ys[rows], xs[cols], ysf[rows], xsf[cols]
    noise = fbm(scene.seed * 977 + 1, ys, xs, scene.boundary_px, 5)
    noise *= F32(BOUNDARY_NOISE)
    strength = field.best
    strength += noise
    in_fat, in_hole = _holes_and_fat(scene, ys, xs, ysf, xsf, noise, strength)
    region = (strength > 0) | in_fat
    tissue = region & ~in_hole | in_fat
    loose = _loose(scene, ys, xs, ysf, xsf, noise)
    if loose is not None:  # the glass between the fibres is in the region, not in the image
        in_loose, fibres = loose
        region |= in_loose
        tissue &= ~in_loose | in_fat
    blur = defocus(scene, ys, xs)
    density = F32(4) * blur  # fade: out of focus, softer edges
    density += F32(1)
    density *= F32(EDGE_FADE)
    np.divide(strength, density, out=density)
    np.clip(density, 0, 1, out=density)
    density *= field.chosen
    density *= tissue
    if in_fat.any():  # fat: its membranes stained, its cells not
        septa = fat(scene, ys, xs, in_fat)[in_fat]
        density[in_fat] = np.maximum(field.chosen[in_fat], F32(0.5)) * F32(0.7) * septa
    if loose is not None:  # the fibres stained as strongly as their piece, edge or not
        density[fibres] = np.maximum(field.chosen[fibres], F32(0.4)) * F32(0.8)
    fold = _fold(scene, ys, xs, ysf, xsf)
    in_loose = np.zeros(region.shape, bool) if loose is None else loose[0]
    return Tissue(field.window, region, density, fold, in_fat, blur, in_loose)
