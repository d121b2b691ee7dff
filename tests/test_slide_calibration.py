"""Calibration in, calibration out: OME-TIFF PhysicalSizeX in nm / µm / mm, NGFF stores written
the way ome-zarr-py and ngff-zarr write them, and the µm per pixel of every prediction output."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from safetensors.numpy import save_file

from gigamlx.backends import get_backend
from gigamlx.infer.predict import predict_slides
from gigamlx.slide.ingest import ingest
from gigamlx.slide.readers import TiffReader
from gigamlx.slide.store import open_store

RGB = np.random.default_rng(3).integers(0, 256, (192, 256, 3), dtype=np.uint8)


@pytest.mark.parametrize(("size", "unit", "mpp"), [(499, "nm", 0.499), (0.5, None, 0.5)])
@pytest.mark.parametrize("extra", [{}, {"mm": True}])
def test_ome_tiff_physical_size_units(tmp_path, size, unit, mpp, extra):
    if extra:  # the same pixel size in millimetres
        size, unit = mpp / 1000, "mm"
    meta = {"PhysicalSizeX": size, "PhysicalSizeY": size}
    meta |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit} if unit else {}
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(path, RGB, photometric="rgb", metadata=meta, tile=(64, 64))
    ome_types = pytest.importorskip("ome_types")
    with tifffile.TiffFile(path) as tif:  # an independent parser reads what the file says
        pixels = ome_types.from_xml(tif.ome_metadata).images[0].pixels
    assert pixels.physical_size_x == pytest.approx(size)
    assert pixels.physical_size_x_unit.value == (unit or "µm")
    assert TiffReader(path).mpp == pytest.approx(mpp)
    store = open_store(ingest(path, tmp_path / "s.zarr", chunk_px=64))
    assert store.mpp == pytest.approx(mpp)
    scales = [d["coordinateTransformations"][0]["scale"] for d in _multiscale(store.path)]
    assert scales[0][1:] == pytest.approx([mpp, mpp])


def _multiscale(path) -> list:
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    return attrs.get("ome", attrs)["multiscales"][0]["datasets"]


def _ome_zarr_py_store(path, mpp_um: float, unit="micrometer", factor=1.0):
    """An NGFF 0.4 image as ome-zarr-py writes it: zarr v2, (c, y, x), scale per axis with
    axis units, a translation (as ngff-zarr adds), no gigamlx attributes."""
    group = zarr.open_group(path, mode="w", zarr_format=2)
    datasets = []
    for n in range(3):
        level = RGB[:: 2**n, :: 2**n]
        group.create_array(str(n), data=np.moveaxis(level, -1, 0), chunks=(3, 64, 64))
        scale = [1.0, mpp_um * factor * 2**n, mpp_um * factor * 2**n]
        transforms = [{"type": "scale", "scale": scale}]
        transforms.append({"type": "translation", "translation": [0.0, 2.0**n / 2, 2.0**n / 2]})
        datasets.append({"path": str(n), "coordinateTransformations": transforms})
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": unit} for a in "yx"
    ]
    group.attrs["multiscales"] = [
        {"version": "0.4", "name": "image", "axes": axes, "datasets": datasets}
    ]
    return path


@pytest.mark.parametrize(("unit", "factor"), [("micrometer", 1.0), ("nanometer", 1000.0)])
def test_foreign_ngff_store_mpp_reaches_prediction(tmp_path, unit, factor):
    source = _ome_zarr_py_store(tmp_path / "ext.ome.zarr", 0.499, unit, factor)
    store = open_store(source)
    assert store.mpp == pytest.approx(0.499)
    assert [lv.downsample for lv in store.levels] == [1.0, 2.0, 4.0]
    backend = get_backend("mlx")
    weights = tmp_path / "w.safetensors"
    save_file(backend.flat_params(backend.build_model(0)), str(weights))
    results = predict_slides(weights, [source], tmp_path / "out", tiff=True, overlay=True)
    assert results[0].mpp == pytest.approx(0.499)
    out = tmp_path / "out"
    datasets = _multiscale(out / "ext.zarr")
    assert datasets[0]["coordinateTransformations"][0]["scale"] == pytest.approx([0.499] * 2)
    group = zarr.open_group(out / "ext.zarr", mode="r")
    assert group.attrs["ome"]["multiscales"][0]["axes"][0]["unit"] == "micrometer"
    assert group.attrs["provenance"]["mpp"] == pytest.approx(0.499)
    with tifffile.TiffFile(out / "ext.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        description = json.loads(tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Description"])
    assert pixels["PhysicalSizeX"] == pytest.approx(0.499)
    assert description["mpp"] == pytest.approx(0.499)
    from PIL import Image

    with Image.open(out / "ext_overlay.png") as png:
        assert json.loads(png.text["gigamlx"])["mpp"] == pytest.approx(0.499)


def test_unitless_ngff_store_has_no_mpp(tmp_path):
    source = _ome_zarr_py_store(tmp_path / "ext.zarr", 1.0)
    group = zarr.open_group(source, mode="r+")
    multiscales = group.attrs["multiscales"]
    for axis in multiscales[0]["axes"]:
        axis.pop("unit", None)
    group.attrs["multiscales"] = multiscales
    store = open_store(source)
    assert store.mpp is None and store.level_mpp(1) is None
    assert [lv.downsample for lv in store.levels] == [1.0, 2.0, 4.0]
