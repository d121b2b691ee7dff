"""Ingest: slide -> store through either reader, with each kind of mask, atomically."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from gigamlx.slide.ingest import ingest
from gigamlx.slide.masks import MaskError
from gigamlx.slide.store import open_store
from gigamlx.synth.render import render
from gigamlx.synth.scene import make_scene


def _pyramid_tiff(path, rgb, levels=3):
    with tifffile.TiffWriter(path) as tif:
        for n in range(levels):
            kwargs = {"subfiletype": 1} if n else {}
            tif.write(rgb[:: 2**n, :: 2**n], tile=(256, 256), photometric="rgb", **kwargs)
    return path


@pytest.fixture
def slide(tmp_path):
    rgb, mask = render(make_scene((520, 780), 2), np.arange(520), np.arange(780))
    return _pyramid_tiff(tmp_path / "slide.tif", rgb), rgb, mask


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_ingest_round_trip(tmp_path, slide, backend):
    path, rgb, _ = slide
    calls = []
    out = ingest(
        path,
        tmp_path / f"{backend}.zarr",
        chunk_px=256,
        backend=backend,
        progress=lambda d, t: calls.append((d, t)),
    )
    store = open_store(out)
    np.testing.assert_array_equal(store.image[:, :], rgb)
    assert store.mask is None
    assert calls[-1][0] == calls[-1][1] and len(calls) == calls[-1][1]


def test_ingest_both_readers_equal(tmp_path, slide):
    path = slide[0]
    a = open_store(ingest(path, tmp_path / "a.zarr", chunk_px=200, backend="openslide"))
    b = open_store(ingest(path, tmp_path / "b.zarr", chunk_px=300, backend="tifffile"))
    assert a.image[:, :].tobytes() == b.image[:, :].tobytes()


def test_ingest_level_one(tmp_path, slide):
    path, rgb, _ = slide
    store = open_store(ingest(path, tmp_path / "l1.zarr", level=1, chunk_px=128))
    np.testing.assert_array_equal(store.image[:, :], rgb[::2, ::2])
    with pytest.raises(ValueError, match="levels 0..2"):
        ingest(path, tmp_path / "l5.zarr", level=5)


def test_ingest_mask_image(tmp_path, slide):
    path, _, mask = slide
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    store = open_store(ingest(path, tmp_path / "m.zarr", mask=tmp_path / "mask.png", chunk_px=256))
    np.testing.assert_array_equal(store.mask[:, :], mask)
    Image.fromarray(mask[:-1] * 255).save(tmp_path / "small.png")
    with pytest.raises(MaskError, match="519x780.*520x780"):
        ingest(path, tmp_path / "bad.zarr", mask=tmp_path / "small.png")
    assert not (tmp_path / "bad.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_ingest_geojson(tmp_path, slide):
    path = slide[0]
    square = {
        "type": "Polygon",
        "coordinates": [[[100, 50], [300, 50], [300, 150], [100, 150], [100, 50]]],
    }
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "Feature", "geometry": square}))
    store = open_store(
        ingest(path, tmp_path / "g.zarr", geojson=tmp_path / "a.geojson", chunk_px=256)
    )
    expected = np.zeros((520, 780), np.uint8)
    expected[50:150, 100:300] = 1
    np.testing.assert_array_equal(store.mask[:, :], expected)
    level1 = open_store(ingest(path, tmp_path / "g1.zarr", level=1, geojson=tmp_path / "a.geojson"))
    np.testing.assert_array_equal(level1.mask[:, :], expected[::2, ::2])


def test_ingest_otsu(tmp_path, slide):
    path, _, truth = slide
    store = open_store(ingest(path, tmp_path / "o.zarr", otsu=True, chunk_px=256))
    pred = store.mask[:, :]
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.8


def test_ingest_one_mask_source_only(tmp_path, slide):
    with pytest.raises(ValueError, match="one mask source"):
        ingest(slide[0], tmp_path / "x.zarr", mask=tmp_path / "m.png", otsu=True)
    assert not (tmp_path / "x.zarr").exists()
