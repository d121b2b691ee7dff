"""scripts/postprocess_ablation.py: it scores the grid on the slides and chooses the gentlest
of the best settings."""

from __future__ import annotations

import numpy as np
import postprocess_ablation as ablation  # scripts/, on pytest's pythonpath
from rich.console import Console

from gigamlx.runs.config import PostprocessConfig


def _slide(name: str, binary: np.ndarray, truth: np.ndarray, mpp: float = 1.0):
    slide = ablation.Slide.__new__(ablation.Slide)
    slide.name, slide.mpp, slide.binary, slide.truth = name, mpp, binary, truth
    slide.otsu = slide.morph = 0.5
    return slide


def test_ablation_fills_the_hole_and_drops_the_speck():
    truth = np.zeros((300, 300), bool)
    truth[50:250, 50:250] = True
    binary = truth.copy()
    binary[120:160, 120:160] = False  # a 1600 px² hole the network called glass
    binary[10:20, 270:280] = True  # a 100 px² speck on the glass
    slides = [_slide("a", binary, truth), _slide("b", binary, truth, mpp=0.5)]
    rows = ablation.ablate(slides, Console(quiet=True))
    assert len(rows) == len(ablation.CLOSING_UM) * len(ablation.FILL_HOLES_UM2) * len(
        ablation.MIN_OBJECT_UM2
    )
    off = next(r for r in rows if not any(r["config"].values()))
    assert off["mean"] == ablation.dice(binary, truth) < 1.0
    chosen = ablation.choose(rows)
    assert chosen["mean"] == 1.0 and chosen["above_both_baselines"] == 2
    config = PostprocessConfig(**chosen["config"])
    # the gentlest perfect settings: no closing, the smallest fill and speck areas that work
    # on both pixel sizes (a 1600 µm² hole at 1 µm/px; 400 µm² at 0.5 µm/px)
    assert config.closing_um == 0
    assert config.fill_holes_um2 == min(f for f in ablation.FILL_HOLES_UM2 if f >= 1600)
    assert config.min_object_um2 == min(m for m in ablation.MIN_OBJECT_UM2 if m > 100)


def test_choose_prefers_fewer_steps_within_the_tie():
    rows = [
        {"config": PostprocessConfig(1e4, 1e3, 8.0).to_dict(), "mean": 0.99},
        {"config": PostprocessConfig(1e4, 0.0, 0.0).to_dict(), "mean": 0.99 - 0.5e-4},
        {"config": PostprocessConfig(0.0, 0.0, 0.0).to_dict(), "mean": 0.98},
    ]
    assert ablation.choose(rows) is rows[1]
    rows[1]["mean"] = 0.98
    assert ablation.choose(rows) is rows[0]


def test_a_large_slide_is_scored_on_its_held_out_strip(synth_store):
    store = synth_store((400, 600))
    # the store's own mask as the "map": the strip must line up with the truth
    strip = ablation.Slide(store, store, 1, level=0, strip=True)
    assert strip.truth.shape == strip.binary.shape == (400, 60)  # the last 10 % of the width
    assert strip.post_dice(PostprocessConfig(0.0, 0.0, 0.0)) == 1.0
    assert strip.name.endswith("(held-out strip)")
    whole = ablation.Slide(store, store, 1)
    assert whole.truth.shape == (400, 600)
    np.testing.assert_array_equal(whole.truth[:, 540:], strip.truth)
