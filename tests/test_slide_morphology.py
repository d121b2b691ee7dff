"""Tissue-mask post-processing (slide/morphology.py): holes, specks and closings in µm, streamed
chunk by chunk and equal to a whole-array scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from gigamlx.runs.config import PostprocessConfig
from gigamlx.slide.morphology import (
    PixelSettings,
    _dilate,
    _erode,
    fill_every_hole,
    held_array,
    pixel_settings,
    postprocess_array,
    postprocessed_array,
    postprocessed_blocks,
)

MPP = 0.5  # µm per pixel: one pixel is 0.25 µm²


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return yy**2 + xx**2 <= radius**2


def _reference(binary: np.ndarray, s: PixelSettings) -> np.ndarray:
    """The same steps on the whole array with scipy's own operators, written independently."""
    out = binary.astype(bool)
    if s.closing_px > 0:  # dilate with nothing beyond the edge, erode with tissue beyond it
        pad = 2 * int(np.ceil(s.closing_px))
        grown = ndimage.binary_dilation(np.pad(out, pad), _disk(s.closing_px))
        grown[:pad], grown[-pad:], grown[:, :pad], grown[:, -pad:] = True, True, True, True
        out = ndimage.binary_erosion(grown, _disk(s.closing_px), border_value=1)[pad:-pad, pad:-pad]
    if s.fill_holes_px > 0:
        holes, n = ndimage.label(~out)
        sizes = np.bincount(holes.ravel(), minlength=n + 1)
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes <= s.fill_holes_px
        small[border], small[0] = False, False
        out = out | small[holes]
    if s.min_object_px > 0:
        objects, n = ndimage.label(out)
        sizes = np.bincount(objects.ravel(), minlength=n + 1)
        keep = sizes >= s.min_object_px
        keep[0] = False
        out = keep[objects]
    return out


def _blobs(hw=(300, 410), seed=0) -> np.ndarray:
    """Smoothed noise cut at its median: blobs with holes, specks and long shapes."""
    noise = np.random.default_rng(seed).normal(size=hw)
    smooth = ndimage.gaussian_filter(noise, 4)
    return smooth > np.quantile(smooth, 0.45)


def _chunked(binary: np.ndarray, s: PixelSettings, chunk_px: int) -> np.ndarray:
    out = np.zeros(binary.shape, bool)
    for box, block in postprocessed_blocks(binary, s, chunk_px):
        out[box.y0 : box.y1, box.x0 : box.x1] = block
    return out


def test_a_hole_below_the_area_is_filled_and_one_above_kept():
    tissue = np.zeros((120, 200), bool)
    tissue[10:110, 10:190] = True
    tissue[30:40, 30:40] = False  # 100 px = 25 µm²
    tissue[30:60, 100:130] = False  # 900 px = 225 µm²
    config = PostprocessConfig(fill_holes_um2=100.0, min_object_um2=0.0, closing_um=0.0)
    out = postprocess_array(tissue, pixel_settings(config, MPP))
    assert out[30:40, 30:40].all()  # filled
    assert not out[30:60, 100:130].any()  # kept
    assert not out[:10].any()  # the glass around, touching the edge, is no hole


def test_a_speck_is_removed_and_tissue_kept():
    tissue = np.zeros((120, 200), bool)
    tissue[10:110, 10:150] = True
    tissue[50:53, 170:173] = True  # 9 px = 2.25 µm²
    config = PostprocessConfig(fill_holes_um2=0.0, min_object_um2=10.0, closing_um=0.0)
    out = postprocess_array(tissue, pixel_settings(config, MPP))
    assert not out[50:53, 170:173].any() and out[10:110, 10:150].all()
    assert out.sum() == 100 * 140


@pytest.mark.parametrize(
    "settings",
    [
        PixelSettings(0.0, 60.0, 40.0),
        PixelSettings(2.5, 400.0, 150.0),
        PixelSettings(0.0, 0.0, 25.0),
        PixelSettings(3.0, 0.0, 0.0),
    ],
)
@pytest.mark.parametrize("chunk_px", [37, 64, 1000])
def test_chunked_equals_the_whole_array_reference(settings, chunk_px):
    binary = _blobs()
    expected = _reference(binary, settings)
    assert not np.array_equal(expected, binary)  # the settings change something
    assert np.array_equal(_chunked(binary, settings, chunk_px), expected)


def test_a_component_across_many_chunks_is_one_component():
    """A ring crossing nine chunks encloses a hole larger than any chunk: the hole is one
    component (area over the limit: kept), the ring one object (large: kept), and specks
    in each chunk go."""
    yy, xx = np.mgrid[:240, :240]
    radius = np.hypot(yy - 120, xx - 120)
    ring = (radius > 80) & (radius < 95)
    specks = np.zeros_like(ring)
    specks[5:8, 5:8] = specks[200:202, 30:33] = True
    binary = ring | specks
    hole_px = int((radius <= 80).sum())
    settings = PixelSettings(0.0, hole_px - 1, 20.0)
    out = _chunked(binary, settings, 80)
    assert np.array_equal(out, ring) and np.array_equal(out, _reference(binary, settings))
    settings = PixelSettings(0.0, hole_px, 20.0)  # now the hole is small enough: filled
    assert np.array_equal(_chunked(binary, settings, 80), ring | (radius <= 80))


@pytest.mark.parametrize("radius_px", [0.5, 1.0, 2.5, 7.3, 31.9999, 32.0, 32.0001, 70.7])
def test_dilation_and_erosion_are_a_distance_transform_cut_at_the_radius(radius_px):
    """The bit-row disk reaches exactly the pixels a Euclidean distance transform puts within
    the radius, across word boundaries (rows of 300 px: 4 words and a part), at the array's
    edges, and on planes the disk covers half of."""
    rng = np.random.default_rng(int(radius_px * 10))
    density = min(0.2, 0.3 / radius_px**2)  # about half the plane within reach of a point
    points = rng.random((211, 300)) < density
    dilated = _dilate(points, radius_px)
    assert 0.1 < dilated.mean() < 0.9
    assert np.array_equal(dilated, ndimage.distance_transform_edt(~points) <= radius_px)
    holes = ~points  # a plane of tissue with pinholes: eroded around each
    assert np.array_equal(
        _erode(holes, radius_px), ndimage.distance_transform_edt(holes) > radius_px
    )


@pytest.mark.parametrize("block_px", [37, 80, 1000])
def test_fill_every_hole_equals_a_whole_plane_fill(block_px):
    """In place, chunk by chunk: every hole, however large (the ring's spans nine chunks of
    80 px), filled as scipy's whole-array fill does; glass reaching the border stays."""
    yy, xx = np.mgrid[:240, :300]
    ring = (np.hypot(yy - 120, xx - 120) - 87.5) ** 2 < 7.5**2
    plane = (ring | _blobs()[:240, :300]).astype(np.uint8)
    expected = ndimage.binary_fill_holes(plane)
    assert expected.sum() - plane.sum() > 80 * 80  # a hole larger than a chunk
    filled = plane.copy()
    assert fill_every_hole(filled, block_px) == expected.sum() - plane.sum()
    assert filled.dtype == np.uint8 and np.array_equal(filled, expected)
    assert fill_every_hole(filled, block_px) == 0  # nothing left to fill


def test_areas_are_physical_the_same_at_two_levels():
    """One physical slide at 0.5 and 1 µm/px: the same µm² settings fill and drop the same
    pieces (shapes on even pixels, so level 1 is exactly level 0 halved)."""
    fine = np.zeros((400, 400), bool)
    fine[20:380, 20:380] = True
    fine[40:60, 40:60] = False  # 400 px = 100 µm²: below the hole limit
    fine[100:160, 100:160] = False  # 900 µm²: above
    fine[200:240, 200:240] = False  # 400 µm², with a speck inside it:
    fine[210:214, 210:214] = True  # 4 µm²: below the object limit
    coarse = fine[::2, ::2]
    config = PostprocessConfig(fill_holes_um2=200.0, min_object_um2=10.0, closing_um=0.0)
    at_fine = postprocess_array(fine, pixel_settings(config, 0.5))
    at_coarse = postprocess_array(coarse, pixel_settings(config, 1.0))
    assert np.array_equal(at_fine[::2, ::2], at_coarse)
    assert at_fine[40:60, 40:60].all() and not at_fine[100:160, 100:160].any()
    assert not at_fine[200:240, 200:240].any()  # the speck went; the hole stayed (400 µm²)
    # the same settings in pixels would not: the 100 µm² hole is 400 px at level 0, 100 at 1
    px = pixel_settings(config, 0.5)
    assert not np.array_equal(postprocess_array(coarse, px), at_coarse)


def test_settings_convert_by_the_pixel_size():
    s = pixel_settings(PostprocessConfig(50_000.0, 10_000.0, 4.0), 0.5)
    assert s == PixelSettings(8.0, 200_000.0, 40_000.0)
    with pytest.raises(ValueError, match="mpp"):
        pixel_settings(PostprocessConfig(), None)
    with pytest.raises(ValueError, match="--min-object-um2"):
        PostprocessConfig(min_object_um2=-1.0).validate()


def test_postprocessed_array_reads_like_the_plane():
    binary = _blobs((130, 170), seed=3)
    settings = PixelSettings(1.5, 100.0, 30.0)
    mask = postprocessed_array(binary, settings, block_px=64)
    assert mask.dtype == np.uint8 and mask.shape == binary.shape
    assert np.array_equal(mask[:, :] != 0, _reference(binary, settings))


@pytest.mark.parametrize("block_px", [37, 64, 1000])
def test_held_array_holds_the_plane_read_once(block_px):
    """A plane read block by block on all cores and held in memory: the same pixels, from
    blocks that are not a multiple of the plane (the last ones short) or one block."""
    binary = _blobs((130, 170), seed=4)
    reads = []

    class Counted:  # an array-like that counts what is read of it
        shape, dtype = binary.shape, binary.dtype

        def __getitem__(self, index):
            reads.append(index)
            return binary[index]

    held = held_array(Counted(), block_px)
    assert held.dtype == np.uint8 and held.shape == binary.shape
    assert np.array_equal(held[:, :] != 0, binary)
    blocks = -(-130 // block_px) * -(-170 // block_px)
    assert len(reads) == blocks  # each block read once
