"""train/session.py: the closing line of `gigamlx train`, on the weights `best` holds."""

import json

import pytest

from gigamlx.train.session import best_row, closing_line

ROW = {
    "step": 20,
    "kind": "val",
    "val_dice": 0.9712,
    "val_threshold": 0.45,
    "val_threshold_dice": 0.9780,
    "val_dice_post": 0.9805,
    "val_otsu_dice": 0.9802,
    "val_morph_dice": 0.9925,
    "val_ema_dice": 0.9650,
    "val_ema_threshold": 0.6,
    "val_ema_threshold_dice": 0.9790,
    "val_ema_dice_post": 0.9931,
}


def test_closing_line_behind_the_morphological_detector():
    assert closing_line(ROW, "runs/quick") == (
        "tissue mask Dice 0.9805 at step 20 (model raw 0.9780 at p >= 0.45; Otsu 0.9802, "
        "morphological 0.9925 on the same pixels): ahead of Otsu, behind the morphological "
        "detector; see it: gigamlx report runs/quick"
    )


def test_closing_line_of_the_average_ahead_of_both():
    line = closing_line(ROW, "runs/quick", weights="ema")
    assert line.startswith("tissue mask Dice 0.9931 at step 20 (model EMA 0.9790 at p >= 0.6;")
    assert "): ahead of both; see it" in line


@pytest.mark.parametrize(
    ("post", "verdict"),
    [(0.97, "behind both"), (0.9802, "behind the morphological detector, level with Otsu")],
)
def test_closing_line_behind_both_or_level(post, verdict):
    assert f"): {verdict}; see it" in closing_line(ROW | {"val_dice_post": post}, "r")


def test_closing_line_without_tissue_mask_or_morphological_detector():
    """No µm/px: neither a post-processed mask nor the morphological detector was scored."""
    row = ROW | {"val_dice_post": None, "val_morph_dice": None}
    assert closing_line(row, "r") == (
        "model Dice 0.9780 at step 20 (raw weights at p >= 0.45; Otsu 0.9802 on the same "
        "pixels): behind Otsu; see it: gigamlx report r"
    )
    old = {"step": 5, "val_dice": 0.99, "val_otsu_dice": 0.98}  # logged before thresholds
    assert closing_line(old, "r").startswith("model Dice 0.9900 at step 5 (raw weights at p >= 0.5")
    assert "): ahead of Otsu;" in closing_line(old, "r")


def test_best_row_is_the_best_checkpoints_line(tmp_path):
    rows = [ROW | {"step": 10, "val_dice_post": 0.5}, ROW]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{cut")
    (tmp_path / "checkpoints" / "best").mkdir(parents=True)
    state = {"step": 10, "weights": "ema"}
    (tmp_path / "checkpoints" / "best" / "state.json").write_text(json.dumps(state))
    assert best_row(tmp_path, ROW) == (rows[0], "ema")
    state["step"] = 30  # its line is gone (a crash after it): the last, and its better weights
    (tmp_path / "checkpoints" / "best" / "state.json").write_text(json.dumps(state))
    assert best_row(tmp_path, ROW) == (ROW, "ema")
