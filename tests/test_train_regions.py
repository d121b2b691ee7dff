"""Region sampling and tile-wise flips/rotations."""

import numpy as np
import pytest

from gigamlx.core import bands
from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import Box
from gigamlx.slide.pyramid import chunk_boxes
from gigamlx.slide.store import open_store
from gigamlx.slide.writer import StoreWriter
from gigamlx.train import regions
from gigamlx.train.augment import draw_illumination, draw_jitter
from gigamlx.train.regions import Region, RegionSampler, region_view, turn


def _native_turner():
    from gigamlx.backends.mlx import fused

    return fused.turn_window if fused._load()[0] is not None and fused.turns_windows() else None


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A 300x430 planar store (image and mask) in 128 px chunks."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (300, 430, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("bands") / "s.zarr"
    with StoreWriter(path, rgb.shape[:2], 128) as writer:
        for box in chunk_boxes(rgb.shape[:2], 128):
            writer.write_image(box, rgb[box.y0 : box.y1, box.x0 : box.x1])
            writer.write_mask(box, (rgb[box.y0 : box.y1, box.x0 : box.x1, 0] > 128))
        return open_store(writer.finish())


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


@pytest.mark.parametrize("by_table", [False, True], ids=["per-pixel", "table"])
@pytest.mark.parametrize("turner", ["numpy", "native"])
def test_region_view_in_bands_gives_the_serial_bytes(store, monkeypatch, by_table, turner):
    """A window read in row bands on several threads is the serial numpy read, byte for byte
    (the native turn too, writing its bands into the window): for every flip and turn,
    windows over several chunks, odd-sized and past the region's edge."""
    turn_window = _native_turner() if turner == "native" else None
    if turner == "native" and turn_window is None:
        pytest.skip("fused extension 0.5 not built: bash setup.sh builds it")
    if by_table:
        monkeypatch.setattr(regions, "LUT_MIN_REGION_PX", 1)
    rng = np.random.default_rng(11)
    jitter, light = draw_jitter(rng, 2.0), draw_illumination(rng, 2.0)
    for flip in (False, True):
        for rot90 in range(4):
            region = Region(0, (9, 17), (283, 397), flip, rot90, jitter, light)
            image_hw = regions.turned_hw(region.source_hw, rot90)
            boxes = [Box(0, 0, *image_hw), Box(3, 5, 260, 251), Box(-7, 100, 131, 400)]
            for array, color, lit in ((store.image, jitter, light), (store.mask, None, None)):
                serial = region_view(array, region, color, None, lit, workers=1)
                views = [
                    region_view(array, region, color, turn_window, lit, workers=n)
                    for n in (1, 2, 3)
                ]
                for box in boxes:
                    monkeypatch.setattr(bands, "BAND_ROWS", 1 << 30)  # one band: serial
                    want = read_window(serial, box).tobytes()
                    monkeypatch.setattr(bands, "BAND_ROWS", 37)  # several, written in place
                    assert all(read_window(view, box).tobytes() == want for view in views)
