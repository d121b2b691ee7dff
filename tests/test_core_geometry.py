"""Tile planning: every real pixel owned once; windows aligned and grown by the halo."""

import numpy as np
import pytest

from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Box, inside_at_scale, padded_hw, plan_tiles
from gigamlx.core.spec import halo_px, receptive_field_px, total_stride


def _ownership(plan) -> np.ndarray:
    counts = np.zeros(plan.image_hw, np.int32)
    for tile in plan.tiles:
        counts[tile.out_box.y0 : tile.out_box.y1, tile.out_box.x0 : tile.out_box.x1] += 1
    return counts


def test_plan_tiles_owns_every_pixel_once_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        hw = (int(rng.integers(1, 700)), int(rng.integers(1, 700)))
        tile = 64 * int(rng.integers(1, 8))
        plan = plan_tiles(hw, tile)
        assert (_ownership(plan) == 1).all(), (hw, tile)


def test_plan_tiles_windows_aligned_and_grown_by_halo():
    halo, stride = halo_px(), total_stride()
    plan = plan_tiles((333, 517), 128)
    for tile in plan.tiles:
        aligned_y1 = min(tile.out_box.y0 + 128, plan.padded_hw[0])
        assert tile.in_box.y0 == tile.out_box.y0 - halo
        assert tile.in_box.y1 == aligned_y1 + halo
        assert tile.in_box.y0 % stride == 0 and tile.in_box.x0 % stride == 0
        assert tile.in_box.hw[0] % stride == 0 and tile.in_box.hw[1] % stride == 0


def test_plan_tiles_image_smaller_than_tile_is_one_tile():
    plan = plan_tiles((50, 70), 1024)
    assert len(plan.tiles) == 1
    assert plan.tiles[0].out_box == Box(0, 0, 50, 70)
    assert plan.padded_hw == (64, 128)


def test_plan_tiles_one_tile_reads_the_padded_image_without_halo():
    """A plan of one tile runs on the padded image itself (the whole-image pass): a halo
    would only add zeros, which the convolutions' zero padding gives."""
    plan = plan_tiles((333, 517), 576)
    assert len(plan.tiles) == 1 and plan.halo_px == 0
    assert plan.tiles[0].in_box == Box(0, 0, *plan.padded_hw) == Box(0, 0, 384, 576)
    assert plan.tiles[0].crop_yx == (0, 0)
    assert plan_tiles((333, 517), 512).tiles[0].in_box.y0 == -halo_px()  # two tiles: a halo


def test_plan_tiles_one_tile_wide_strip():
    plan = plan_tiles((64, 5000), 64)
    assert len(plan.tiles) == -(-5000 // 64)
    assert (_ownership(plan) == 1).all()


def test_plan_tiles_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of the total stride"):
        plan_tiles((100, 100), 100)
    with pytest.raises(ValueError, match="positive"):
        plan_tiles((0, 100), 64)


def test_halo_covers_receptive_field():
    assert receptive_field_px() == 110
    assert halo_px() >= receptive_field_px()
    assert halo_px() % total_stride() == 0
    assert halo_px() == 128


def test_padded_hw_rounds_up_to_stride():
    assert padded_hw((1, 64)) == (64, 64)
    assert padded_hw((65, 129)) == (128, 192)


def test_inside_at_scale_none_when_window_inside():
    assert inside_at_scale(Box(128, 128, 512, 512), (1024, 1024), 4) is None


def test_inside_at_scale_clips_at_borders():
    keep = inside_at_scale(Box(-128, -128, 256, 256), (192, 128), 4)
    assert keep == Box(32, 32, 80, 64)


def test_read_window_zero_fills_outside():
    array = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    window = read_window(array, Box(-2, -1, 4, 9))
    assert window.shape == (6, 10, 3)
    np.testing.assert_array_equal(window[2:6, 1:8], array[0:4, 0:7])
    assert window[:2].sum() == 0 and window[:, 0].sum() == 0 and window[:, 8:].sum() == 0
