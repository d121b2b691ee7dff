"""Region sampling and tile-wise flips/rotations."""

import numpy as np
import pytest

from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Box
from gigamlx.train.regions import Region, RegionSampler, region_view, turn


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("rot90", [0, 1, 2, 3])
def test_region_view_windows_equal_turned_whole_region(flip, rot90):
    slide = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    region = Region(0, (5, 7), (30, 41), flip, rot90)
    view = region_view(slide, region)
    whole = turn(slide[5:35, 7:48], flip, rot90)
    assert view.shape == whole.shape
    for box in [Box(-3, -2, 10, 12), Box(4, 5, 20, 30), Box(0, 0, *view.shape[:2])]:
        np.testing.assert_array_equal(read_window(view, box), read_window(whole, box))


def test_region_view_of_a_mask_is_two_dimensional():
    mask = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    view = region_view(mask, Region(0, (0, 0), (20, 30), True, 1))
    assert view.shape == (30, 20)
    np.testing.assert_array_equal(view[0:30, 0:20], np.rot90(mask[:, ::-1]))


def test_sampler_is_reproducible_and_restorable():
    a = RegionSampler([(1000, 2000), (600, 600)], (256, 512), seed=3)
    b = RegionSampler([(1000, 2000), (600, 600)], (256, 512), seed=3)
    assert a.draw(5) == b.draw(5)
    state = a.state()
    first = a.draw(3)
    a.restore(state)
    assert a.draw(3) == first


def test_sampler_regions_fit_inside_their_slide():
    sampler = RegionSampler([(1000, 2000), (300, 5000)], (256, 512), seed=0)
    for region in sampler.draw(200):
        h, w = sampler.slide_hws[region.slide]
        y, x = region.origin_yx
        assert 0 <= y <= h - region.source_hw[0] and 0 <= x <= w - region.source_hw[1]


def test_sampler_uses_small_slide_whole():
    sampler = RegionSampler([(100, 150)], (256, 512), seed=0, augment=False)
    assert sampler.draw(1)[0] == Region(0, (0, 0), (100, 150), False, 0)


def test_sampler_without_padding_rejects_region_larger_than_every_slide():
    with pytest.raises(ValueError, match="larger than every slide.*--no-pad"):
        RegionSampler([(100, 150), (200, 90)], (256, 512), seed=0, pad=False)


def test_sampler_without_padding_skips_small_slides():
    sampler = RegionSampler([(100, 150), (300, 600)], (256, 512), seed=0, pad=False)
    assert {r.slide for r in sampler.draw(50)} == {1}
