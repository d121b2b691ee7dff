"""predict --geojson -> ingest --geojson: the QuPath annotation reproduces the thresholded map
(Dice >= 0.99; exact at level 0), carries QuPath's fields, and the stores carry provenance."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from safetensors.numpy import save_file
from typer.testing import CliRunner

from gigamlx.backends import get_backend
from gigamlx.cli import app
from gigamlx.infer.annotations import threshold_u8
from gigamlx.slide.store import open_store
from gigamlx.synth.render import render
from gigamlx.synth.scene import make_scene

runner = CliRunner()
HW = (320, 448)


@pytest.fixture(scope="module")
def slide_and_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    rgb, _ = render(make_scene(HW, 4), np.arange(HW[0]), np.arange(HW[1]))
    slide = root / "slide.ome.tif"
    tifffile.imwrite(slide, rgb, photometric="rgb", tile=(64, 64), metadata={"PhysicalSizeX": 0.5})
    backend = get_backend("mlx")
    weights = root / "w.safetensors"
    save_file(backend.flat_params(backend.build_model(3)), str(weights))
    return slide, weights


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_predict_geojson_reingests_to_the_thresholded_map(slide_and_weights, tmp_path):
    slide, weights = slide_and_weights
    out = tmp_path / "pred"
    first = runner.invoke(app, ["predict", str(weights), str(slide), "--out", str(out)])
    assert first.exit_code == 0, first.output
    probs = np.asarray(zarr.open_group(out / "slide.zarr", mode="r")["0"][:])
    threshold = float(np.median(probs)) / 255  # a map with both classes, whatever the weights
    args = ["predict", str(weights), str(slide), "--out", str(out), "--geojson", "--overwrite"]
    args += ["--threshold", f"{threshold:.6f}"]
    result = runner.invoke(app, args + ["--tiff", "--no-postprocess"])  # the map at the cut
    assert result.exit_code == 0, result.output
    tissue = probs >= threshold_u8(float(f"{threshold:.6f}"))
    assert 0.1 < tissue.mean() < 0.9
    collection = json.loads((out / "slide.geojson").read_text())
    feature = collection["features"][0]
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 1
    assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["classification"] == {"name": "Tissue", "color": [0, 190, 90]}
    store_path = tmp_path / "back.zarr"
    result = runner.invoke(
        app, ["ingest", str(slide), str(store_path), "--geojson", str(out / "slide.geojson")]
    )
    assert result.exit_code == 0, result.output
    back = np.asarray(open_store(store_path).mask[:, :]).astype(bool)
    assert _dice(back, tissue) >= 0.99
    np.testing.assert_array_equal(back, tissue)  # traced at level 0: exact
    # post-processed (the default): the GeoJSON is the tissue mask, labels/tissue
    assert runner.invoke(app, args).exit_code == 0
    label = zarr.open_group(out / "slide.zarr", mode="r")["labels/tissue/0"][:] != 0
    ingest = ["ingest", str(slide), str(tmp_path / "post.zarr"), "--geojson"]
    assert runner.invoke(app, [*ingest, str(out / "slide.geojson")]).exit_code == 0
    post = np.asarray(open_store(tmp_path / "post.zarr").mask[:, :]).astype(bool)
    np.testing.assert_array_equal(post, label)
    assert not np.array_equal(label, tissue)  # the defaults filled or dropped something here


def test_prediction_provenance_and_omero(slide_and_weights, tmp_path):
    slide, weights = slide_and_weights
    args = ["predict", str(weights), str(slide), "--out", str(tmp_path), "--tiff", "--geojson"]
    assert runner.invoke(app, args).exit_code == 0
    attrs = zarr.open_group(tmp_path / "slide.zarr", mode="r").attrs
    meta = attrs["provenance"]
    assert meta["checkpoint"] == str(weights.resolve()) and meta["step"] is None
    assert meta["source"] == str(slide.resolve()) and meta["source_hw"] == list(HW)
    assert meta["source_bytes"] == slide.stat().st_size and len(meta["source_sha256"]) == 64
    assert meta["threshold"] == 0.5 and meta["mpp"] == 0.5 and meta["gigamlx_version"]
    channel = attrs["ome"]["omero"]["channels"][0]
    assert channel["window"]["end"] == 255 and channel["label"] == "tissue probability"
    with tifffile.TiffFile(tmp_path / "slide.ome.tif") as tif:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
    assert json.loads(image["Description"])["source_sha256"] == meta["source_sha256"]
    feature = json.loads((tmp_path / "slide.geojson").read_text())["features"]
    assert (
        not feature or feature[0]["properties"]["gigamlx"]["source_sha256"] == meta["source_sha256"]
    )


def test_predict_overwrite_replaces_its_own_geojson(slide_and_weights, tmp_path):
    """Its GeoJSON carries predict's marker, so --overwrite may replace it; a user's may not."""
    slide, weights = slide_and_weights
    args = ["predict", str(weights), str(slide), "--out", str(tmp_path), "--geojson"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, [*args, "--overwrite", "--threshold", "0.3"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "slide.geojson").read_text())["gigamlx"]["kind"] == "prediction"
    (tmp_path / "slide.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    refused = runner.invoke(app, [*args, "--overwrite"])
    assert refused.exit_code == 2 and "not a prediction written by gigamlx" in refused.output
