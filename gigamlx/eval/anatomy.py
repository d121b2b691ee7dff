"""Where a prediction's errors on a synthetic slide come from.

Each wrong pixel is attributed to what the synthetic scene drew there (fat, a loose margin,
glass the tissue encloses (tissue in the slide's mask, synth/slide.py), faint stain, a pen
stroke, dust, a bubble's rim, or nothing special), and split by its distance to the true
tissue boundary. Costs are shares of Dice: since 1 − Dice = (FP + FN) / (|G| + |P|), the costs
of all categories add up to exactly one minus the pooled Dice, so a table of them says what
the remaining Dice is made of.

Streamed in square blocks, each read with a margin so that distances to the boundary up to
the margin are exact: memory stays around one block whatever the slide size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gigamlx.eval.metrics import EvaluationError, check_threshold, to_probability
from gigamlx.eval.scale import resolve_pred_scale
from gigamlx.runs.config import DEFAULT_THRESHOLD
from gigamlx.slide.planes import ArrayReadError, iter_blocks, open_plane
from gigamlx.slide.store import StoreError, open_store
from gigamlx.synth.render import SYNTH_VERSION, Layers, scene_layers
from gigamlx.synth.scene import make_scene

# attribution order: a pixel counts for the first layer that covers it
MISSED = ("fat", "loose", "enclosed", "faint", "pen", "dust", "bubble_rim")
FALSE = ("pen", "dust", "bubble_rim")
PROFILE_PX = 12  # the boundary profile covers signed distances -12 … +12 px
BLOCK_PX = 2048


@dataclass
class Anatomy:
    """Error pixels of one or more slides by cause, and the error rate near the boundary.

    Attributes:
        errors: {"missed: fat": (at the boundary, away from it), ...}, pixel counts.
        profile: {d: (pixels, wrong pixels)} for whole-pixel distances d to the true
            boundary: 0, 1, 2 … the glass pixels outward from it, −1, −2 … the tissue pixels
            inward.
        tissue_px, predicted_px: |G| and |P| at the threshold.
    """

    edge_px: int
    errors: dict[str, list[int]] = field(default_factory=dict)
    profile: dict[int, list[int]] = field(default_factory=dict)
    tissue_px: int = 0
    predicted_px: int = 0

    def add(self, other: Anatomy) -> Anatomy:
        for name, (near, away) in other.errors.items():
            mine = self.errors.setdefault(name, [0, 0])
            mine[0] += near
            mine[1] += away
        for d, (n, wrong) in other.profile.items():
            mine = self.profile.setdefault(d, [0, 0])
            mine[0] += n
            mine[1] += wrong
        self.tissue_px += other.tissue_px
        self.predicted_px += other.predicted_px
        return self

    @property
    def dice(self) -> float:
        wrong = sum(near + away for near, away in self.errors.values())
        total = self.tissue_px + self.predicted_px
        return 1.0 - wrong / total if total else 1.0

    def cost(self, pixels: int) -> float:
        """A share of Dice: what `pixels` wrong pixels take from it."""
        total = self.tissue_px + self.predicted_px
        return pixels / total if total else 0.0

    def to_json(self) -> dict:
        return {
            "dice": self.dice,
            "tissue_px": self.tissue_px,
            "predicted_px": self.predicted_px,
            "edge_px": self.edge_px,
            "errors": {
                name: {
                    "boundary_px": near,
                    "away_px": away,
                    "dice_cost": self.cost(near + away),
                }
                for name, (near, away) in self.errors.items()
            },
            "boundary_profile": [
                {"distance_px": d, "pixels": n, "error_rate": wrong / n if n else None}
                for d, (n, wrong) in sorted(self.profile.items())
            ],
        }


def _scene_of(slide_path: str | Path):
    """The scene a synthetic slide store was rendered from (its seed and size)."""
    try:
        store = open_store(slide_path)
    except StoreError as err:
        raise EvaluationError(str(err)) from err
    attrs = store.attrs
    if attrs.get("source") != "synth" or "seed" not in attrs:
        raise EvaluationError(
            f"{slide_path}: not a synthetic slide (source {attrs.get('source')!r}); the error "
            "anatomy needs the scene a slide was drawn from: make slides with `gigamlx synth`"
        )
    if attrs.get("synth_version") != SYNTH_VERSION:
        raise EvaluationError(
            f"{slide_path}: drawn by synth version {attrs.get('synth_version')}, this gigamlx "
            f"draws version {SYNTH_VERSION}: make the slide again with `gigamlx synth`"
        )
    return make_scene(tuple(store.mask.shape[:2]), int(attrs["seed"])), store


def _dilate(region: np.ndarray, diagonal: bool) -> np.ndarray:
    """`region` grown by one pixel: to the 4 neighbours, or the 8 with `diagonal`."""
    padded = np.pad(region, 1)
    h, w = region.shape
    out = region.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)) + (
        ((-1, -1), (-1, 1), (1, -1), (1, 1)) if diagonal else ()
    ):
        out |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return out


def _rings(region: np.ndarray, cap: int) -> np.ndarray:
    """For each pixel outside `region`, which ring around it holds it: 0 for the pixels next to
    it, 1 for the next ring, … up to `cap`, and cap + 1 beyond (inside: 0). Rings grow by 4 and 8
    neighbours in turn, an octagon close to a Euclidean distance."""
    out = np.full(region.shape, cap + 1, np.int16)
    grown = region
    for ring in range(cap + 1):
        wider = _dilate(grown, diagonal=ring % 2 == 1)
        out[wider & ~grown] = ring
        grown = wider
    out[region] = 0
    return out


def _boundary_steps(tissue: np.ndarray, cap: int) -> np.ndarray:
    """Whole pixels from the tissue boundary: 0, 1, 2 … the glass pixels outward from it, −1,
    −2 … the tissue pixels inward; ±(cap + 1) and beyond clipped there."""
    return np.where(tissue, -1 - _rings(~tissue, cap), _rings(tissue, cap)).astype(np.int16)


def _block_anatomy(
    pred: np.ndarray, layers: Layers, enclosed: np.ndarray, step: np.ndarray, edge_px: int
) -> Anatomy:
    """`layers.tissue`: the slide's label; `enclosed`: its glass the tissue encloses."""
    cover = layers._asdict() | {"enclosed": enclosed}
    tissue = layers.tissue
    missed, false = tissue & ~pred, ~tissue & pred
    near = (step >= -edge_px) & (step < edge_px)
    out = Anatomy(edge_px, tissue_px=int(tissue.sum()), predicted_px=int(pred.sum()))
    for kind, wrong, causes in (("missed", missed, MISSED), ("false", false, FALSE)):
        left = wrong
        for cause in causes:
            here = left & cover[cause]
            left = left & ~here
            out.errors[f"{kind}: {cause}"] = [int((here & near).sum()), int((here & ~near).sum())]
        rest = "other tissue" if kind == "missed" else "other glass"
        out.errors[f"{kind}: {rest}"] = [int((left & near).sum()), int((left & ~near).sum())]
    wrong = missed | false
    for d in range(-PROFILE_PX, PROFILE_PX + 1):
        at = step == d
        out.profile[d] = [int(at.sum()), int((at & wrong).sum())]
    return out


def slide_anatomy(
    pred_path: str | Path,
    slide_path: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    edge_px: int = 4,
    block_px: int = BLOCK_PX,
) -> Anatomy:
    """The error anatomy of one probability map against the synthetic slide it predicts.

    Args:
        pred_path: probability map (what `gigamlx predict` writes, or any plane `gigamlx eval`
            reads), the slide's size.
        slide_path: the synthetic slide store (`gigamlx synth`); its scene is drawn again from
            its seed, so the layers are exact.
        threshold: p >= threshold is predicted tissue.
        edge_px: errors within this many pixels of the true boundary, on either side, count
            as "at the boundary".

    Raises:
        EvaluationError: a slide that is not synthetic or from another synth version, sizes that
            differ, an unreadable prediction.
    """
    check_threshold(threshold)
    if not 0 <= edge_px <= PROFILE_PX:
        raise EvaluationError(f"--edge-px must be in 0..{PROFILE_PX}, got {edge_px}")
    scene, store = _scene_of(slide_path)
    try:
        plane = open_plane(pred_path)
    except ArrayReadError as err:
        raise EvaluationError(str(err)) from err
    try:
        shape_hw = tuple(store.mask.shape[:2])
        if tuple(plane.shape[:2]) != shape_hw:
            raise EvaluationError(
                f"{pred_path}: {tuple(plane.shape[:2])} px but {slide_path} is {shape_hw}: "
                "give each prediction with the slide it predicts, in the same order"
            )
        scale, _ = resolve_pred_scale(plane)
        total = Anatomy(edge_px)
        margin = PROFILE_PX + 2  # rings up to the profile's reach are exact in a block
        h, w = shape_hw
        for rows, cols in iter_blocks(shape_hw, (block_px, block_px)):
            r0, r1 = max(rows.start - margin, 0), min(rows.stop + margin, h)
            c0, c1 = max(cols.start - margin, 0), min(cols.stop + margin, w)
            core = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
            label = np.asarray(store.mask[r0:r1, c0:c1]) != 0
            steps = _boundary_steps(label, PROFILE_PX)[core]
            ys, xs = np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)
            layers = scene_layers(scene, ys, xs)
            drawn, label = layers.tissue, label[core]
            if (drawn & ~label).any():  # the mask holds the drawn region and what it encloses
                raise EvaluationError(
                    f"{slide_path}: its mask differs from the scene its seed draws at rows "
                    f"{rows.start}-{rows.stop}: the store was edited after `gigamlx synth`"
                )
            layers = layers._replace(tissue=label)
            prob = to_probability(np.asarray(plane[rows, cols]), str(pred_path), scale)
            total.add(_block_anatomy(prob >= threshold, layers, label & ~drawn, steps, edge_px))
        return total
    except ArrayReadError as err:
        raise EvaluationError(str(err)) from err
    finally:
        plane.close()
