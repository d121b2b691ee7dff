"""Opening predictions and masks of every supported format as lazily sliced (H, W) planes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from gigamlx.slide.planes import (
    ArrayReadError,
    aligned_block_hw,
    iter_blocks,
    open_plane,
    open_store_image,
)

HW = (70, 90)


@pytest.fixture
def plane_u8() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, HW, dtype=np.uint8)


def _ngff_group(path, levels: list[np.ndarray], axes: list[dict], version: str = "0.5"):
    group = zarr.open_group(path, mode="w")
    for n, data in enumerate(levels):
        group.create_array(str(n), data=data, chunks=data.shape[:-2] + (32, 32))
    multiscales = [{"axes": axes, "datasets": [{"path": str(n)} for n in range(len(levels))]}]
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    else:
        group.attrs["multiscales"] = multiscales
    return group


def test_open_plane_png_uint8(tmp_path, plane_u8):
    Image.fromarray(plane_u8).save(tmp_path / "p.png")
    plane = open_plane(tmp_path / "p.png")
    assert plane.shape == HW and plane.dtype == np.uint8
    np.testing.assert_array_equal(plane[10:20, 5:50], plane_u8[10:20, 5:50])


def test_open_plane_png_rgb_rejected(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(ArrayReadError, match="single-channel"):
        open_plane(tmp_path / "rgb.png")


def test_open_plane_tiff_tiled_streams(tmp_path, plane_u8):
    tifffile.imwrite(tmp_path / "p.tif", plane_u8, tile=(32, 32))
    plane = open_plane(tmp_path / "p.tif")
    assert plane.shape == HW and plane.chunk_hw == (32, 32)
    np.testing.assert_array_equal(plane[33:70, 60:90], plane_u8[33:70, 60:90])
    plane.close()


def test_open_plane_tiff_float(tmp_path, plane_u8):
    probs = plane_u8.astype(np.float32) / 255
    tifffile.imwrite(tmp_path / "p.ome.tif", probs[None], ome=True, metadata={"axes": "CYX"})
    plane = open_plane(tmp_path / "p.ome.tif")
    assert plane.shape == HW and plane.dtype == np.float32
    np.testing.assert_array_equal(plane[:, :], probs)
    plane.close()


def test_open_plane_tiff_pyramid_level(tmp_path, plane_u8):
    with tifffile.TiffWriter(tmp_path / "pyr.ome.tif") as tiff:
        tiff.write(plane_u8, tile=(32, 32), subifds=1)
        tiff.write(plane_u8[::2, ::2], tile=(32, 32), subfiletype=1)
    plane = open_plane(tmp_path / "pyr.ome.tif", level=1)
    np.testing.assert_array_equal(plane[:, :], plane_u8[::2, ::2])
    plane.close()
    with pytest.raises(ArrayReadError, match="level 2"):
        open_plane(tmp_path / "pyr.ome.tif", level=2)


def test_open_plane_zarr_array(tmp_path, plane_u8):
    zarr.create_array(tmp_path / "p.zarr", data=plane_u8, chunks=(16, 64))
    plane = open_plane(tmp_path / "p.zarr")
    assert plane.chunk_hw == (16, 64)
    np.testing.assert_array_equal(plane[:, :], plane_u8)
    with pytest.raises(ArrayReadError, match="no pyramid level 1"):
        open_plane(tmp_path / "p.zarr", level=1)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_open_plane_ome_zarr_channel_axis(tmp_path, plane_u8, version):
    levels = [plane_u8[None], plane_u8[None, ::2, ::2]]
    axes = [{"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}]
    _ngff_group(tmp_path / "p.ome.zarr", levels, axes, version)
    plane = open_plane(tmp_path / "p.ome.zarr", level=1)
    assert plane.shape == (35, 45)
    np.testing.assert_array_equal(plane[:, :], plane_u8[::2, ::2])


def test_open_plane_bare_level_group(tmp_path, plane_u8):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("0", data=plane_u8[..., None], chunks=(32, 32, 1))
    np.testing.assert_array_equal(open_plane(tmp_path / "g.zarr")[:, :], plane_u8)


def test_open_plane_multichannel_rejected(tmp_path, plane_u8):
    zarr.create_array(tmp_path / "two.zarr", data=np.stack([plane_u8, plane_u8]))
    with pytest.raises(ArrayReadError, match=r"\(2, 70, 90\)"):
        open_plane(tmp_path / "two.zarr")


def test_open_plane_missing_file(tmp_path):
    with pytest.raises(ArrayReadError, match="no such file"):
        open_plane(tmp_path / "nope.tif")


def test_open_plane_unreadable_file(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(ArrayReadError, match="junk.tif: cannot read"):
        open_plane(tmp_path / "junk.tif")


def test_open_plane_store_mask_and_image(tmp_path):
    writer = pytest.importorskip("gigamlx.slide.writer")
    from gigamlx.core.geometry import Box

    rgb = np.random.default_rng(2).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    mask = (rgb[..., 0] > 100).astype(np.uint8)
    with writer.StoreWriter(tmp_path / "s.zarr", (128, 96), chunk_px=32, min_side_px=64) as out:
        out.write_image(Box(0, 0, 128, 96), rgb)
        out.write_mask(Box(0, 0, 128, 96), mask)
        out.finish()
    plane = open_plane(tmp_path / "s.zarr")
    assert plane.shape == (128, 96) and plane.chunk_hw == (32, 32)
    np.testing.assert_array_equal(plane[:, :], mask)
    np.testing.assert_array_equal(open_plane(tmp_path / "s.zarr", level=1)[:, :], mask[::2, ::2])
    np.testing.assert_array_equal(open_store_image(tmp_path / "s.zarr")[:, :], rgb)


def test_iter_blocks_covers_grid_once():
    seen = np.zeros((23, 41), dtype=int)
    for rows, cols in iter_blocks((23, 41), (5, 7)):
        seen[rows, cols] += 1
    assert (seen == 1).all()


def test_aligned_block_hw_multiple_of_chunks():
    assert aligned_block_hw((256, 512), target_px=2048) == (2048, 2048)
    assert aligned_block_hw((300, 700), target_px=2048) == (1800, 1400)


def test_aligned_block_hw_wide_chunks_bounded():
    assert aligned_block_hw((16, 200_000), target_px=2048) == (16, 200_000)
    assert aligned_block_hw((100_000, 200_000), target_px=2048) == (20, 200_000)
    assert aligned_block_hw((1, 10**8), target_px=2048) == (2048, 2048)
