"""Validation during training: held-out slides and/or a held-out strip of each training slide,
predicted with the exact tiled predictor and scored with the streamed metrics.

Validation areas are whole images (a held-out store, or the last `fraction` of a training
slide's long side, zero-padded at its edges like any image); the sampler never draws training
regions that overlap a held-out strip. The Otsu detector and the morphological detector
(eval/baseline.py) are scored once on the same pixels, so every validation line carries the
classical baselines beside the model; and the model's tissue mask (the map at the chosen cut,
post-processed with the defaults, infer/postprocess.py) is scored beside its raw map.

Each validation also picks the decision threshold: the cut of p (0.10 … 0.90) with the best
pooled Dice on these pixels, or the cut nearest 0.5 within `THRESHOLD_TOLERANCE` of it. A
model trained with BCE puts ambiguous pixels (faint tissue, fat) at their base rate, below
0.5, so 0.5 is often not its best cut. Where the areas have a pixel size the tissue mask
decides among that cut, 0.5 and the cut midway between them (`best_mask`): the mask is what
`predict` writes; at the map's low cut a calibrated map's faint noise on the glass, harmless
to the map, is joined by the closing into solid tissue, while at 0.5 the mask loses a loose
margin's faint outer pixels. The chosen cut is kept with the weights (`best` and the
checkpoint of that step) and `gigamlx predict` cuts there.

The tissue mask's hole filling is chosen the same way, from `FILL_CHOICES_UM2`: the default
limit unless the other scores more than `THRESHOLD_TOLERANCE` better on the pooled pixels. No
one limit suits every slide: where pieces are large, the white spaces inside them are large
too, while a bubble whose dark rim the map takes for tissue encloses glass
(docs/postprocessing.md). It is kept beside the cut (`best`'s "postprocess") and `gigamlx
predict` fills holes up to it.

With a moving average of the weights (train/ema.py) each validation scores it too, on the
same pixels with its own cut (`val_ema_*`). `best` keeps the weights whose tissue mask scores
highest (the map at its cut where no area has a pixel size).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gigamlx.core.arrays import crop_view
from gigamlx.core.bands import map_on_cores
from gigamlx.core.geometry import Box
from gigamlx.core.normalise import InputNorm
from gigamlx.eval.baseline import held_plane, mask_plane, morph_plane
from gigamlx.eval.metrics import PixelCounts, evaluate_pair, evaluate_thresholds
from gigamlx.infer.annotations import threshold_u8
from gigamlx.infer.export import write_overlay
from gigamlx.infer.postprocess import tissue_plane
from gigamlx.runs.config import DEFAULT_THRESHOLD, POSTPROCESS
from gigamlx.slide.masks import OtsuMask
from gigamlx.slide.morphology import pixel_settings, postprocessed_array
from gigamlx.tiling.scheduler import tiled_predict

log = logging.getLogger(__name__)

AUTO_VAL_FRACTION = 0.1
VAL_DIR = "val"  # RUN/val/: the overlays of the last validation
BLOCK_HW = (1024, 1024)  # metric blocks: bounded float64 memory whatever the area
OVERLAY_SIDE_PX = 1024  # validation overlays: small and fast to write, every validation
IN_MEMORY_MAX_PX = 2**28  # validation maps beyond this many pixels go to zarr scratch arrays
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 19))  # the cuts validation may choose
THRESHOLD_TOLERANCE = 0.001  # Dice a cut nearer 0.5 may give up (below: best_threshold)
# the hole-filling limits validation may choose, the preferred first: the default (the
# morphological detector's "every hole inside the tissue", up to 1 mm²), and 0.01 mm² for
# slides where the large holes in the mask are glass (a bubble whose rim the map outlines)
SMALL_FILL_UM2 = 10_000.0
FILL_CHOICES_UM2 = (POSTPROCESS.fill_holes_um2, SMALL_FILL_UM2)


def midway(cut: float) -> float:
    """The cut of `THRESHOLDS` nearest halfway between `cut` and 0.5 (of two as near, the
    nearer 0.5): where the tissue mask is scored besides its ends (`Validator.best_mask`)."""
    half = (cut + DEFAULT_THRESHOLD) / 2
    return min(THRESHOLDS, key=lambda t: (round(abs(t - half), 6), abs(t - DEFAULT_THRESHOLD)))


class ValArea(NamedTuple):
    name: str  # the slide's name: overlays go to RUN/val/<name>_overlay.png
    image: Any  # (H, W, 3) uint8 array-like
    mask: Any  # (H, W) array-like, non-zero is tissue
    norm: InputNorm = InputNorm()  # the input standardisation of its slide
    mpp: float | None = None  # µm per pixel (post-processing and morph need it)


def split_hw(slide_hw: tuple[int, int], fraction: float) -> tuple[tuple[int, int], Box | None]:
    """(training (H, W), held-out Box): the last `fraction` of the long side is held out.

    The training part keeps the origin, so regions drawn in it never reach the strip.
    """
    h, w = slide_hw
    if fraction <= 0:
        return slide_hw, None
    if w >= h:
        cut = max(1, round(w * fraction))
        return (h, w - cut), Box(0, w - cut, h, w)
    cut = max(1, round(h * fraction))
    return (h - cut, w), Box(h - cut, 0, h, w)


def resolve_val_fraction(
    fraction: float | None, has_val_stores: bool, slide_hws, region_hw: tuple[int, int]
) -> float:
    """The held-out share to use: as given, else 0.1 when no --val stores are given and the
    region still fits in every slide's training part (else 0: no held-out strip)."""
    if fraction is not None:
        return fraction
    if has_val_stores:
        return 0.0
    fits = all(
        split_hw(hw, AUTO_VAL_FRACTION)[0][0] >= region_hw[0]
        and split_hw(hw, AUTO_VAL_FRACTION)[0][1] >= region_hw[1]
        for hw in slide_hws
    )
    if not fits:
        log.info("no validation: the region leaves no room for a held-out strip; use --val")
    return AUTO_VAL_FRACTION if fits else 0.0


def heldout_areas(names: list[str], slides, fraction: float) -> list[ValArea]:
    """The held-out strip of every training slide (none when `fraction` is 0), standardised
    as its slide is (`slide.norm`)."""
    areas = []
    for name, slide in zip(names, slides, strict=True):
        _, box = split_hw(slide.image_hw, fraction)
        if box is not None:
            image, mask = crop_view(slide.image, box), crop_view(slide.mask, box)
            areas.append(ValArea(name, image, mask, slide.norm, slide.mpp))
    return areas


def _prob_buffer(hw: tuple[int, int], scratch: Path, in_memory: bool):
    """A (H, W) uint8 array to predict into: numpy, or a zarr array on disk."""
    if in_memory:
        return np.zeros(hw, np.uint8)
    import zarr

    shutil.rmtree(scratch, ignore_errors=True)
    return zarr.create_array(store=str(scratch), shape=hw, chunks=BLOCK_HW, dtype="uint8")


def best_threshold(counts: list[PixelCounts]) -> tuple[float, float]:
    """(threshold, Dice): of the cuts in `THRESHOLDS` (`counts` in their order) whose pooled
    Dice is within `THRESHOLD_TOLERANCE` of the best, the nearest 0.5. A model trained on
    Dice alone gives near-binary maps whose Dice hardly moves between 0.1 and 0.9: without
    the tolerance, noise would send the cut to either end from one validation to the next."""
    scored = [(t, c.metrics()["dice"]) for t, c in zip(THRESHOLDS, counts, strict=True)]
    floor = max(dice for _, dice in scored) - THRESHOLD_TOLERANCE
    near_best = [(t, dice) for t, dice in scored if dice >= floor]
    return min(near_best, key=lambda td: (abs(td[0] - 0.5), -td[1]))


class Validator:
    """Scores the model on the validation areas; writes overlays under RUN/val/."""

    def __init__(self, areas: list[ValArea], run_dir: Path, tile, budget_bytes: int | None):
        self.areas, self.tile, self.budget_bytes = areas, tile, budget_bytes
        self.out_dir = Path(run_dir) / VAL_DIR
        self._baselines: dict | None = None

    def baselines(self) -> dict:
        """Dice of the Otsu and the morphological detectors on the validation pixels (computed
        once: they do not learn); morph None when no area has a pixel size."""
        if self._baselines is None:
            otsu, morph = PixelCounts(), PixelCounts()
            for area in self.areas:
                otsu_mask = OtsuMask.fit([area.image], source=area.name)
                plane = held_plane(mask_plane(otsu_mask, BLOCK_HW))  # scored, then closed
                otsu += evaluate_pair(plane, area.mask, block_hw=BLOCK_HW)
                if area.mpp:
                    morph_mask = morph_plane(plane, area.mpp, BLOCK_HW, area.name)
                    morph += evaluate_pair(morph_mask, area.mask, block_hw=BLOCK_HW)
            has_mpp = any(area.mpp for area in self.areas)
            morph_dice = morph.metrics()["dice"] if has_mpp else None
            self._baselines = {"otsu": otsu.metrics()["dice"], "morph": morph_dice}
        return self._baselines

    def post_dice(self, probs: list, cut_u8: int, fill_um2: float | None = None) -> float | None:
        """Pooled Dice of the tissue masks: each map at `cut_u8`, post-processed with the
        defaults (`POSTPROCESS`, holes filled up to `fill_um2` if given) at its area's pixel
        size; None when no area has one."""
        return self._post_dice(self._closed(probs, cut_u8), fill_um2)

    def _closed(self, probs: list, cut_u8: int) -> list:
        """Per area: its map at `cut_u8` closed with the default closing, held compressed in
        memory (None where the area has no pixel size). The closing is the costly step of
        the post-processing and the same for every hole-filling limit: done once."""
        closed = []
        for area, prob in zip(self.areas, probs, strict=True):
            if not area.mpp:
                closed.append(None)
                continue
            settings = pixel_settings(POSTPROCESS, area.mpp)
            only_closing = settings._replace(fill_holes_px=0.0, min_object_px=0.0)
            closed.append(postprocessed_array(tissue_plane(prob, cut_u8), only_closing))
        return closed

    def _post_dice(self, closed: list, fill_um2: float | None) -> float | None:
        """`post_dice` from the closed planes of `_closed`."""
        config = POSTPROCESS
        if fill_um2 is not None:
            config = dataclasses.replace(config, fill_holes_um2=fill_um2)
        counts, scored = PixelCounts(), False
        for area, plane in zip(self.areas, closed, strict=True):
            if plane is not None:
                settings = pixel_settings(config, area.mpp)._replace(closing_px=0.0)
                mask = postprocessed_array(plane, settings)
                counts += evaluate_pair(mask, area.mask, 0.5, BLOCK_HW, pred_scale=1)
                scored = True
        return counts.metrics()["dice"] if scored else None

    def best_fill(self, probs: list, cut_u8: int) -> tuple[float, float | None]:
        """(hole-filling limit in µm², pooled tissue-mask Dice there): of `FILL_CHOICES_UM2`,
        the first within `THRESHOLD_TOLERANCE` of the best (the default, unless the other
        is clearly better); (the default, None) when no area has a pixel size."""
        closed = self._closed(probs, cut_u8)  # its chunks on all cores (morphology._close_all)
        # the limits side by side: the labelling that dominates them releases the GIL, and
        # the cores are otherwise idle while a validation scores its maps
        dice = map_on_cores(lambda fill: self._post_dice(closed, fill), FILL_CHOICES_UM2)
        scored = list(zip(FILL_CHOICES_UM2, dice, strict=True))
        if scored[0][1] is None:
            return POSTPROCESS.fill_holes_um2, None
        floor = max(dice for _, dice in scored) - THRESHOLD_TOLERANCE
        return next((fill, dice) for fill, dice in scored if dice >= floor)

    def best_mask(self, probs: list, map_cut: float) -> tuple[float, float, float | None]:
        """(cut, hole-filling limit, pooled tissue-mask Dice): the tissue mask is what
        `predict` writes, so the cut is chosen where it scores best of the map's own best cut
        `map_cut`, 0.5 and the cut `midway` between them, the nearest 0.5 within
        `THRESHOLD_TOLERANCE` of the best. A calibrated map (BCE) puts faint noise on the glass
        just above its own best cut, harmless to the map's Dice, which the closing joins into
        solid tissue; at 0.5 the mask loses a loose margin's faint outer pixels; midway it
        can keep the margin without the noise. (map_cut, the default limit, None) when no
        area has a pixel size."""
        candidates = {map_cut, midway(map_cut), DEFAULT_THRESHOLD}
        cuts = sorted(candidates, key=lambda t: abs(t - DEFAULT_THRESHOLD))
        found = [(cut, *self.best_fill(probs, threshold_u8(cut))) for cut in cuts]
        if found[0][2] is None:
            return map_cut, POSTPROCESS.fill_holes_um2, None
        floor = max(dice for _, _, dice in found) - THRESHOLD_TOLERANCE
        return next(choice for choice in found if choice[2] >= floor)

    def score(self, backend, model, overlays: bool = True) -> Scores:
        """Predict every area with `model` and score the maps at every cut; `overlays`: write
        RUN/val/NAME_overlay.png at the chosen cut."""
        start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        scratch = self.out_dir / ".scratch"
        pooled = [PixelCounts() for _ in THRESHOLDS]
        per_slide, probs, in_memory_px = {}, [], 0
        for index, area in enumerate(self.areas):
            hw = area.mask.shape[:2]
            in_memory = in_memory_px + hw[0] * hw[1] <= IN_MEMORY_MAX_PX
            in_memory_px += hw[0] * hw[1] if in_memory else 0
            prob = _prob_buffer(hw, scratch / f"{index}.zarr", in_memory)
            model.input_norm = area.norm  # the loop sets each region's own before its step
            tiled_predict(backend, model, area.image, self.tile, self.budget_bytes, out=prob)
            area_counts = evaluate_thresholds(prob, area.mask, THRESHOLDS, block_hw=BLOCK_HW)
            for total, counts in zip(pooled, area_counts, strict=True):
                total += counts
            per_slide[area.name] = area_counts
            probs.append(prob)  # kept (in memory up to IN_MEMORY_MAX_PX) for the overlays
        map_cut, _ = best_threshold(pooled)
        threshold, fill_um2, post = self.best_mask(probs, map_cut)
        cut = threshold_u8(threshold)
        for area, prob in zip(self.areas, probs, strict=True) if overlays else ():
            overlay = self.out_dir / f"{area.name}_overlay.png"
            write_overlay([area.image], [prob], overlay, OVERLAY_SIDE_PX, cut, compress_level=1)
        shutil.rmtree(scratch, ignore_errors=True)
        at_cut = THRESHOLDS.index(threshold)  # each slide's Dice as its overlay shows it
        return Scores(
            at_half=pooled[THRESHOLDS.index(DEFAULT_THRESHOLD)].metrics(),
            threshold=threshold,
            threshold_dice=pooled[at_cut].metrics()["dice"],
            post_dice=post,
            fill_holes_um2=fill_um2,
            slides={name: c[at_cut].metrics()["dice"] for name, c in per_slide.items()},
            seconds=time.perf_counter() - start,
        )

    def __call__(self, backend, model, step: int, seconds: float, ema_model=None) -> dict:
        """One validation: the metrics line for metrics.jsonl (pooled over all areas), with
        the threshold it chooses (`val_threshold`) and the Dice there (`val_threshold_dice`).

        Args:
            ema_model: the moving average of the weights (train/ema.py), scored on the same
                pixels into the `val_ema_*` keys (no overlays); `model` itself when the two
                are equal (scored once); None: no moving average kept.
        """
        raw = self.score(backend, model)
        row = {"step": step, "kind": "val"}
        for name in ("dice", "soft_dice", "precision", "recall"):
            row[f"val_{name}"] = raw.at_half[name]
        row["val_threshold"], row["val_threshold_dice"] = raw.threshold, raw.threshold_dice
        row["val_dice_post"], row["val_fill_holes_um2"] = raw.post_dice, raw.fill_holes_um2
        row["val_otsu_dice"] = self.baselines()["otsu"]
        row["val_morph_dice"] = self.baselines()["morph"]
        row["val_slides"] = raw.slides
        val_seconds = raw.seconds
        if ema_model is not None:
            ema = raw if ema_model is model else self.score(backend, ema_model, overlays=False)
            row["val_ema_dice"] = ema.at_half["dice"]
            row["val_ema_threshold"] = ema.threshold
            row["val_ema_threshold_dice"] = ema.threshold_dice
            row["val_ema_dice_post"] = ema.post_dice
            row["val_ema_fill_holes_um2"] = ema.fill_holes_um2
            val_seconds += ema.seconds if ema is not raw else 0.0
        row["val_seconds"] = val_seconds  # both passes: the moving average doubles it
        row["seconds"] = seconds + val_seconds
        return row


class Scores(NamedTuple):
    """One model's validation: pooled over every area."""

    at_half: dict  # PixelCounts.metrics() at p >= 0.5
    threshold: float  # the cut chosen (best_mask; best_threshold where no area has an mpp)
    threshold_dice: float  # the map's pooled Dice there
    post_dice: float | None  # the tissue mask (post-processed at that cut); None: no mpp
    fill_holes_um2: float  # the hole-filling limit chosen for it (best_fill)
    slides: dict[str, float]  # each area's Dice at the chosen cut
    seconds: float


class BestChoice(NamedTuple):
    """Which weights of a validation `best` would keep, the Dice they are kept for (their
    tissue mask's, else their map's at its cut), the cut, and the hole-filling limit chosen
    for their tissue mask."""

    weights: str  # "raw" (the trained weights) or "ema" (their moving average)
    dice: float
    threshold: float
    fill_holes_um2: float = POSTPROCESS.fill_holes_um2
    of_mask: bool = False  # `dice` is the tissue mask's (else the map's at the cut)

    def postprocess(self) -> dict:
        """The tissue mask's post-processing for these weights (a checkpoint records it)."""
        return dataclasses.replace(POSTPROCESS, fill_holes_um2=self.fill_holes_um2).to_dict()


def best_choice(row: dict) -> BestChoice:
    """Of the raw and the moving-average weights a validation line scored, the one whose
    tissue mask scored higher (what `predict` writes and the closing line leads with; the map
    at its own cut where no area has a pixel size), raw on a tie: it is what the run continues
    from. Lines logged before validation chose the fill keep the default."""
    raw = raw_choice(row)
    if row.get("val_ema_threshold_dice") is None:
        return raw
    ema = _choice(row, "ema", "val_ema")
    return ema if ema.dice > raw.dice else raw


def raw_choice(row: dict) -> BestChoice:
    """The trained weights' Dice, cut and fill in a validation line (what their checkpoint
    keeps)."""
    return _choice(row, "raw", "val")


def _choice(row: dict, weights: str, prefix: str) -> BestChoice:
    """One set of weights in a validation line, kept for its tissue mask's Dice, else for its
    map's at its chosen cut."""
    fill = row.get(f"{prefix}_fill_holes_um2", POSTPROCESS.fill_holes_um2)
    mask = row.get(f"{prefix}_dice_post")
    if isinstance(mask, int | float):
        return BestChoice(weights, mask, row[f"{prefix}_threshold"], fill, of_mask=True)
    return BestChoice(weights, row[f"{prefix}_threshold_dice"], row[f"{prefix}_threshold"], fill)
