"""Whole-slide prediction: exact against the in-memory pass, OME-Zarr/OME-TIFF/PNG outputs, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from safetensors.numpy import save_file
from typer.testing import CliRunner

import gigamlx
from gigamlx.backends import get_backend
from gigamlx.cli import app
from gigamlx.infer.export import open_probability_levels, sample_nearest, thumbnail_hw
from gigamlx.infer.model import load_model
from gigamlx.infer.predict import (
    PredictError,
    open_source,
    output_paths,
    predict_slide,
    predict_slides,
    slide_name,
)
from gigamlx.runs.checkpoint import CheckpointError, save_checkpoint
from gigamlx.slide.store import open_store

runner = CliRunner()
SLIDE_HW = (600, 1100)  # two pyramid levels at the default 512 px minimum side


@pytest.fixture(scope="module")
def slide(synth_store):
    return synth_store(SLIDE_HW, seed=1)


def _in_memory(weights_path, slide_path) -> np.ndarray:
    """(H, W) float32 probabilities of the whole image in one `gigamlx.predict` call."""
    _, model = load_model(weights_path)
    image = open_store(slide_path).image[:, :]
    return np.asarray(gigamlx.predict(model, image))


def _predict(weights_path, slide_path, out_dir, **kwargs):
    backend, model = load_model(weights_path)
    source = open_source(slide_path)
    outputs = output_paths(out_dir, source.name, kwargs.pop("tiff", False), False)
    return predict_slide(backend, model, source, outputs, **kwargs)


def test_predict_zarr_equals_in_memory_predict(slide, weights, tmp_path):
    result = _predict(weights, slide, tmp_path, tile=256)  # several tiles, none divides 1100
    levels = open_probability_levels(result.outputs.zarr)
    expected = np.rint(_in_memory(weights, slide) * 255)
    assert levels[0].dtype == np.uint8 and levels[0].shape == SLIDE_HW
    assert np.abs(levels[0][:].astype(np.int16) - expected).max() <= 1


def test_predict_pyramid_and_ngff_metadata(slide, weights, tmp_path):
    result = _predict(weights, slide, tmp_path, min_side_px=256)
    group = zarr.open_group(result.outputs.zarr, mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert group.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in multiscale["axes"]] == ["y", "x"]
    shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
    assert shapes == [(600, 1100), (300, 550), (150, 275)]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]  # synth slides are 0.5 mpp
    level0 = group["0"][:].astype(np.float64)
    mean = (level0[0::2, 0::2] + level0[1::2, 0::2] + level0[0::2, 1::2] + level0[1::2, 1::2]) / 4
    assert np.abs(group["1"][:] - mean).max() <= 0.5 + 1e-9


def test_predict_slide_file_equals_store(slide, weights, tmp_path):
    """A slide file read directly gives the same map as its ingested store."""
    tiff_path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(tiff_path, open_store(slide).image[:, :], tile=(256, 256), ome=True)
    assert slide_name(tiff_path) == "slide"
    from_file = _predict(weights, tiff_path, tmp_path / "a")
    from_store = _predict(weights, slide, tmp_path / "b")
    a = open_probability_levels(from_file.outputs.zarr)[0][:]
    b = open_probability_levels(from_store.outputs.zarr)[0][:]
    np.testing.assert_array_equal(a, b)


def test_ome_tiff_readable_by_tifffile_and_openslide(slide, weights, tmp_path):
    openslide = pytest.importorskip("openslide")
    # the probability map (--no-postprocess); the tissue mask's TIFF: test_infer_postprocess.py
    result = _predict(weights, slide, tmp_path, tiff=True, min_side_px=256, postprocess=None)
    levels = open_probability_levels(result.outputs.zarr)
    with tifffile.TiffFile(result.outputs.tiff) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [lv.shape for lv in levels]
        np.testing.assert_array_equal(series.levels[0].asarray(), levels[0][:])
        np.testing.assert_array_equal(series.levels[2].asarray(), levels[2][:])
        assert tif.pages.first.is_tiled
    osr = openslide.OpenSlide(str(result.outputs.tiff))
    assert osr.level_count == 3
    assert osr.level_dimensions[0] == (1100, 600)  # (W, H)
    assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    region = np.asarray(osr.read_region((100, 40), 1, (30, 20)))  # level-0 origin, level 1 px
    np.testing.assert_array_equal(region[..., 0], levels[1][20:40, 50:80])


def test_overlay_png_written_with_sane_size(slide, weights, tmp_path):
    results = predict_slides(weights, [slide], tmp_path, overlay=True)
    png = results[0].outputs.overlay
    with Image.open(png) as image:
        assert image.mode == "RGB" and image.size == (1100, 600)  # (W, H); smaller than 2048
    assert thumbnail_hw((16000, 64000), 2048) == (512, 2048)


def test_sample_nearest_reads_the_right_pixels():
    array = np.arange(40 * 60).reshape(40, 60)
    np.testing.assert_array_equal(
        sample_nearest([array], (20, 30), block_px=16), array[::2, ::2] + 61
    )
    np.testing.assert_array_equal(sample_nearest([array], (40, 60), block_px=7), array)


def test_predict_from_run_folder(slide, tmp_path):
    backend = get_backend("mlx")
    weights = backend.flat_params(backend.build_model(3))
    save_checkpoint(tmp_path / "run", 5, weights, {}, {}, {})
    _, model = load_model(tmp_path / "run")
    for name, value in backend.flat_params(model).items():
        np.testing.assert_array_equal(value, weights[name])


def test_predict_bad_inputs(slide, weights, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="GigaUNet-4492"):
        load_model(tmp_path / "other.safetensors")
    with pytest.raises(PredictError, match="no slide"):
        open_source(tmp_path / "missing.zarr")
    (tmp_path / "notes.txt").write_text("not a slide")
    with pytest.raises(PredictError, match="cannot open"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(PredictError, match="replace the input"):
        predict_slides(weights, [slide], slide.parent)
    predict_slides(weights, [slide], tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict_slides(weights, [slide], tmp_path / "out")
    predict_slides(weights, [slide], tmp_path / "out", overwrite=True)


def test_cli_predict_and_eval(slide, weights, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["predict", str(weights), str(slide), "--out", str(out)]
        + ["--tiff", "--overlay", "--memory-budget", "1GB"],
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"s.zarr", "s.ome.tif", "s_overlay.png"}
    report = tmp_path / "r.json"
    pred = str(out / "s.zarr")
    args = ["eval", pred, pred, "--masks", str(slide), str(slide), "--json", str(report)]
    result = runner.invoke(app, args + ["--baseline", "otsu"])
    assert result.exit_code == 0, result.output
    assert '"n_slides": 2' in report.read_text() and "mean ± std" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "{tmp}/none.safetensors", "{slide}", "--out", "{tmp}/o"], "no checkpoint"),
        (["predict", "{weights}", "{tmp}/none.zarr", "--out", "{tmp}/o"], "no slide"),
        (["predict", "{weights}", "{slide}", "--out", "{tmp}/o", "--tile", "100"], "multiple"),
        (["predict", "{weights}", "{slide}", "--out", "{tmp}/o", "--memory-budget", "x"], "memory"),
        (["eval", "{slide}", "--masks", "{slide}", "{slide}"], "mask file(s)"),
        (["eval", "{slide}", "--masks", "{slide}", "--threshold", "2"], "threshold"),
    ],
)
def test_cli_bad_input_exits_2(slide, weights, tmp_path, args, message):
    values = {"tmp": tmp_path, "slide": slide, "weights": weights}
    result = runner.invoke(app, [a.format(**values) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_predict_existing_output_needs_overwrite(slide, weights, tmp_path):
    args = ["predict", str(weights), str(slide), "--out", str(tmp_path), "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
