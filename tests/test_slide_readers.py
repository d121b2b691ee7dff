"""Slide readers: OpenSlide and tifffile agree on tiled pyramidal TIFFs; clear errors."""

import numpy as np
import pytest
import tifffile

from gigamlx.core.geometry import Box
from gigamlx.slide.readers import OpenSlideReader, SlideFormatError, TiffReader, open_slide


def _pyramid_tiff(path, rgb, levels=3):
    """Tiled RGB TIFF, reduced levels as successive pages (both OpenSlide and tifffile read it)."""
    with tifffile.TiffWriter(path) as tif:
        for n in range(levels):
            level = rgb[:: 2**n, :: 2**n]
            kwargs = (
                {"subfiletype": 1} if n else {"resolution": (20000, 20000), "resolutionunit": 3}
            )
            tif.write(level, tile=(256, 256), photometric="rgb", compression="zlib", **kwargs)
    return path


@pytest.fixture
def rgb():
    return np.random.default_rng(1).integers(0, 256, (600, 900, 3), dtype=np.uint8)


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_reader_pyramidal_tiff(tmp_path, rgb, backend):
    reader = open_slide(_pyramid_tiff(tmp_path / "s.tif", rgb), backend=backend)
    assert isinstance(reader, OpenSlideReader if backend == "openslide" else TiffReader)
    assert reader.level_count == 3
    assert [reader.level_hw(n) for n in range(3)] == [(600, 900), (300, 450), (150, 225)]
    np.testing.assert_array_equal(reader.read(0, Box(0, 0, 600, 900)), rgb)
    np.testing.assert_array_equal(reader.read(0, Box(250, 300, 520, 777)), rgb[250:520, 300:777])
    np.testing.assert_array_equal(
        reader.read(1, Box(10, 20, 100, 200)), rgb[::2, ::2][10:100, 20:200]
    )
    assert reader.mpp == pytest.approx(0.5)
    reader.close()


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_reader_outside_is_zero(tmp_path, rgb, backend):
    reader = open_slide(_pyramid_tiff(tmp_path / "s.tif", rgb), backend=backend)
    block = reader.read(0, Box(-3, 880, 10, 910))
    assert block.shape == (13, 30, 3)
    np.testing.assert_array_equal(block[3:, :20], rgb[:10, 880:900])
    assert not block[:3].any() and not block[:, 20:].any()


def test_reader_openslide_composites_alpha_on_white(tmp_path):
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[:, :128] = (200, 100, 50, 255)  # opaque half, transparent half
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, rgba, tile=(256, 256), photometric="rgb", extrasamples=[2])
    block = open_slide(path, backend="openslide").read(0, Box(0, 0, 256, 256))
    np.testing.assert_array_equal(block[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(block[0, 200], (255, 255, 255))


def test_reader_plain_striped_tiff_falls_back_to_tifffile(tmp_path, rgb):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")  # not tiled: OpenSlide refuses it
    reader = open_slide(path)
    assert isinstance(reader, TiffReader) and reader.level_count == 1
    np.testing.assert_array_equal(reader.read(0, Box(5, 6, 70, 80)), rgb[5:70, 6:80])


def test_reader_ome_tiff_planar_subifds(tmp_path, rgb):
    path = tmp_path / "s.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        planar = np.moveaxis(rgb, -1, 0)
        opts = {"tile": (256, 256), "photometric": "rgb", "planarconfig": "separate"}
        tif.write(planar, subifds=1, metadata={"axes": "CYX", "PhysicalSizeX": 0.25}, **opts)
        tif.write(planar[:, ::2, ::2], subfiletype=1, **opts)
    reader = open_slide(path)
    assert isinstance(reader, TiffReader) and reader.level_count == 2
    np.testing.assert_array_equal(reader.read(0, Box(0, 0, 600, 900)), rgb)
    np.testing.assert_array_equal(reader.read(1, Box(0, 0, 300, 450)), rgb[::2, ::2])
    assert reader.mpp == pytest.approx(0.25)


def test_reader_unknown_file_names_formats_tried(tmp_path):
    path = tmp_path / "notes.svs"
    path.write_text("hello")
    with pytest.raises(SlideFormatError, match="notes.svs.*openslide.*tifffile"):
        open_slide(path)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        open_slide(tmp_path / "missing.tif")
