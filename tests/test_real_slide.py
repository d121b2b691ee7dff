"""The real slide (data/real/): its reference tissue region and the scoring against it
(scripts/real_slide_reference.py, scripts/real_slide_dice.py)."""

from __future__ import annotations

import numpy as np
import pytest
import real_slide_dice as dice_script
import real_slide_reference as ref
from PIL import Image

from gigamlx.slide.readers import open_slide

needs_slide = pytest.mark.skipif(
    dice_script.missing() is not None, reason=f"no real slide: {dice_script.missing()}"
)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return dice_script.reference_store(tmp_path_factory.mktemp("real"))


@needs_slide
def test_reference_png_is_on_the_slide_level0_grid():
    reader = open_slide(ref.SLIDE)
    try:
        slide_hw = reader.level_hw(0)
    finally:
        reader.close()
    mask = ref.read_mask_png(ref.REFERENCE)
    assert mask.shape == slide_hw
    assert Image.open(ref.REFERENCE).mode == "1"  # 1-bit: compact in the repository
    assert 0.2 < mask.mean() < 0.8  # neither glass nor all tissue


@needs_slide
def test_score_mask_reference_itself_is_dice_1(store):
    result = dice_script.score_mask(ref.REFERENCE, store)
    assert result == {"dice": 1.0, "precision": 1.0, "recall": 1.0}


@needs_slide
def test_score_mask_hand_made_mask(store, tmp_path):
    reference = ref.read_mask_png(ref.REFERENCE)
    hand = np.zeros_like(reference)
    hand[: reference.shape[0] // 2, 300:1500] = True  # a rectangle over half the tissue
    path = tmp_path / "hand.png"
    ref.write_mask_png(hand, path)
    result = dice_script.score_mask(path, store)
    assert result["dice"] == pytest.approx(_dice(hand, reference), abs=1e-9)
    assert result["precision"] == pytest.approx((hand & reference).sum() / hand.sum())
    assert result["recall"] == pytest.approx((hand & reference).sum() / reference.sum())


@needs_slide
def test_score_prediction_scores_map_mask_and_both_baselines(store):
    """A map that is the reference itself (a PNG: no tissue mask, so both rows score it)."""
    result = dice_script.score_prediction(ref.REFERENCE, store)
    assert result["dice"] == result["dice_post"] == 1.0
    assert result["post_recall"] == result["precision"] == 1.0
    for key in ("otsu_dice", "morph_dice", "otsu_recall", "morph_precision"):
        assert 0.0 < result[key] < 1.0, key
    assert "dice" in dice_script.format_result(result)


def test_hysteresis_keeps_faint_pieces_that_reach_a_strong_pixel():
    values = np.zeros((20, 20), np.float32)
    values[2:6, 2:10] = 0.2  # faint, touches a strong pixel
    values[3, 3] = 1.0
    values[12:16, 12:16] = 0.2  # faint alone: noise
    kept = ref.hysteresis(values, low=0.1, high=0.5)
    assert kept[2:6, 2:10].all() and not kept[12:16, 12:16].any()
    assert kept.sum() == 32


def test_reference_mask_fills_enclosed_glass_and_drops_specks():
    rgb = np.full((240, 240, 3), 240, np.uint8)  # glass
    rgb[40:200, 40:200] = (150, 60, 140)  # a stained piece ...
    rgb[90:150, 90:150] = 240  # ... enclosing a lumen of glass
    rgb[10:14, 220:224] = (100, 40, 100)  # a speck on the glass
    settings = ref.ReferenceSettings(min_area_um2=2000.0)
    mask = ref.reference_mask(rgb, mpp=2.0, settings=settings)
    assert mask[90:150, 90:150].all()  # the lumen is tissue region
    assert not mask[5:20, 215:230].any()  # the speck is not
    assert not mask[:30, :30].any() and mask[45:195, 45:195].all()


def test_mask_png_round_trip(tmp_path):
    mask = np.random.default_rng(0).random((31, 17)) > 0.5
    ref.write_mask_png(mask, tmp_path / "m.png")
    assert np.array_equal(ref.read_mask_png(tmp_path / "m.png"), mask)


@needs_slide
@pytest.mark.slow  # draws the reference at full resolution (seconds)
def test_committed_reference_is_what_the_script_draws():
    rgb, mpp = ref.read_slide(ref.SLIDE)
    drawn = ref.reference_mask(rgb, mpp, ref.ReferenceSettings())
    assert np.array_equal(drawn, ref.read_mask_png(ref.REFERENCE))


@needs_slide
def test_predict_and_score_replaces_single_postprocessing_settings(tmp_path):
    """A wider closing replaces one of the bundled model's settings: the map is the same, and
    the tissue mask can only grow (a closing adds pixels, holes and pieces only grow with it)."""
    checkpoint = dice_script.default_checkpoint()
    own = dice_script.predict_and_score(checkpoint, tmp_path / "own")
    wider = own["postprocess"]["closing_um"] + 8.0
    closed = dice_script.predict_and_score(
        checkpoint, tmp_path / "closed", postprocess={"closing_um": wider}
    )
    assert closed["postprocess"] == own["postprocess"] | {"closing_um": wider}
    assert closed["dice"] == own["dice"]  # the raw map at the same cut
    assert closed["post_recall"] > own["post_recall"]
    with pytest.raises(ValueError, match="closing"):
        dice_script.predict_and_score(checkpoint, tmp_path / "bad", postprocess={"closing_um": -1})
