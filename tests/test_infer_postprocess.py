"""The prediction's tissue mask: `labels/tissue` (NGFF label image) written by predict, the
overlay, OME-TIFF and GeoJSON drawn from it, and `gigamlx eval` scoring it (`--raw`: the map)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from typer.testing import CliRunner

import gigamlx.infer.predict as predict_module
from gigamlx.cli import app
from gigamlx.eval.metrics import evaluate_pair
from gigamlx.eval.slides import evaluate_files
from gigamlx.infer.annotations import prediction_features, threshold_u8
from gigamlx.infer.export import open_probability_levels, write_overlay
from gigamlx.infer.model import load_model
from gigamlx.infer.postprocess import open_tissue_label
from gigamlx.infer.predict import open_source, output_paths, predict_slide
from gigamlx.runs.config import POSTPROCESS, PostprocessConfig
from gigamlx.slide.morphology import pixel_settings, postprocess_array
from gigamlx.slide.store import open_store

runner = CliRunner()
SLIDE_HW = (600, 1100)  # two pyramid levels at the default 512 px minimum side
CUT = 0.6  # not 0.5: eval must take the recorded cut, not its own default


@pytest.fixture(scope="module")
def slide(synth_store):
    return synth_store(SLIDE_HW, seed=1)


def _designed_map(hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 round(255 p): tissue with a hole (900 µm² at 0.5 µm/px: filled by the
    defaults) and a speck on glass (9 µm²: dropped)."""
    prob = np.zeros(hw, np.uint8)
    prob[50:550, 100:1000] = 200
    prob[200:260, 300:360] = 20
    prob[20:26, 1040:1046] = 220
    return prob


@pytest.fixture
def designed(monkeypatch):
    """predict_slide with the model's map replaced by `_designed_map` (no model run)."""

    def fake(backend, model, image, tile, budget_bytes, out, progress=None):
        out[:, :] = _designed_map(tuple(out.shape))

    monkeypatch.setattr(predict_module, "tiled_predict", fake)


def _predict(weights, slide, out_dir, **kwargs):
    backend, model = load_model(weights)
    source = open_source(slide)
    outputs = output_paths(out_dir, source.name, True, True, True)
    return predict_slide(backend, model, source, outputs, threshold=CUT, **kwargs)


def test_predict_writes_the_tissue_label_with_ngff_metadata(designed, slide, weights, tmp_path):
    result = _predict(weights, slide, tmp_path)
    group = zarr.open_group(result.outputs.zarr, mode="r")
    assert group["labels"].attrs["ome"]["labels"] == ["tissue"]
    label_attrs = group["labels"]["tissue"].attrs.asdict()
    assert label_attrs["ome"]["image-label"]["source"] == {"image": "../../"}
    multiscale = label_attrs["ome"]["multiscales"][0]
    assert multiscale["axes"][0]["unit"] == "micrometer"
    probs, labels = (
        open_probability_levels(result.outputs.zarr),
        open_tissue_label(result.outputs.zarr),
    )
    assert [a.shape for a in labels] == [a.shape for a in probs] and len(labels) == 2
    assert all(a.dtype == np.uint8 for a in labels)
    raw = np.asarray(probs[0][:, :]) >= threshold_u8(CUT)
    expected = postprocess_array(raw, pixel_settings(POSTPROCESS, 0.5))
    assert np.array_equal(labels[0][:, :] != 0, expected) and not np.array_equal(raw, expected)
    assert expected[200:260, 300:360].all() and not expected[20:26, 1040:1046].any()
    assert np.array_equal(labels[1][:, :], labels[0][::2, ::2])  # the pyramid: a pick
    record = POSTPROCESS.to_dict() | {"applied": True, "label": "labels/tissue", "threshold": CUT}
    assert label_attrs["postprocess"] == record == result.postprocess
    assert group.attrs["provenance"]["postprocess"] == record
    assert np.array_equal(probs[0][:, :], _designed_map(SLIDE_HW))  # the raw map as it was


def test_overlay_tiff_and_geojson_are_drawn_from_the_label(designed, slide, weights, tmp_path):
    result = _predict(weights, slide, tmp_path / "out")
    labels = open_tissue_label(result.outputs.zarr)
    probs = open_probability_levels(result.outputs.zarr)
    assert np.array_equal(tifffile.imread(result.outputs.tiff), labels[0][:, :])
    source = open_source(slide)
    for levels, cut, name in ((labels, 1, "label.png"), (probs, threshold_u8(CUT), "map.png")):
        write_overlay(source.levels, levels, tmp_path / name, threshold_u8=cut)
    written = np.asarray(Image.open(result.outputs.overlay))
    assert np.array_equal(written, np.asarray(Image.open(tmp_path / "label.png")))
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "map.png")))
    geometry = json.loads(result.outputs.geojson.read_text())["features"][0]["geometry"]
    hw0 = source.level_hws[0]
    from_label = prediction_features(labels, CUT, hw0, cut_u8=1)["features"][0]["geometry"]
    from_map = prediction_features(probs, CUT, hw0)["features"][0]["geometry"]
    assert geometry == from_label != from_map


def test_no_postprocess_writes_no_label_and_says_so(designed, slide, weights, tmp_path):
    result = _predict(weights, slide, tmp_path, postprocess=None)
    assert open_tissue_label(result.outputs.zarr) is None
    assert result.postprocess == {"applied": False, "reason": "turned off (--no-postprocess)"}
    probs = open_probability_levels(result.outputs.zarr)
    assert np.array_equal(tifffile.imread(result.outputs.tiff), probs[0][:, :])


def _confusion(counts) -> tuple[int, int, int, int]:
    return counts.tp, counts.fp, counts.fn, counts.tn


def test_eval_scores_the_label_and_raw_the_map_at_the_recorded_cut(
    designed, slide, weights, tmp_path
):
    result = _predict(weights, slide, tmp_path)
    mask = open_store(slide).mask
    label = open_tissue_label(result.outputs.zarr)[0]
    prob = open_probability_levels(result.outputs.zarr)[0]
    row = evaluate_files([result.outputs.zarr], [slide], threshold=None).slides[0]
    assert row.scored == "labels/tissue"
    assert _confusion(row.counts) == _confusion(evaluate_pair(label, mask, 0.5, pred_scale=1))
    raw = evaluate_files([result.outputs.zarr], [slide], threshold=None, raw=True).slides[0]
    assert raw.scored == "map" and raw.threshold == CUT
    assert _confusion(raw.counts) == _confusion(evaluate_pair(prob, mask, CUT))
    assert _confusion(raw.counts) != _confusion(row.counts)
    args = ["eval", str(result.outputs.zarr), "--masks", str(slide), "--json", "-"]
    for extra, scored in (([], "labels/tissue"), (["--raw"], "map")):
        out = runner.invoke(app, args + extra)
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout[out.stdout.index("{") :])
        assert data["slides"][0]["scored"] == scored


def test_cli_predict_records_the_options_and_turns_off(slide, weights, tmp_path):
    base = ["predict", str(weights), str(slide), "--quiet", "--memory-budget", "1GB"]
    result = runner.invoke(
        app, base + ["--out", str(tmp_path / "a"), "--min-object-um2", "123", "--closing-um", "2"]
    )
    assert result.exit_code == 0, result.output
    record = zarr.open_group(tmp_path / "a" / "s.zarr", mode="r").attrs["provenance"]["postprocess"]
    expected = PostprocessConfig(POSTPROCESS.fill_holes_um2, 123.0, 2.0).to_dict()
    assert record["applied"] and {k: record[k] for k in expected} == expected
    assert "labels/tissue" in result.output
    result = runner.invoke(app, base + ["--out", str(tmp_path / "b"), "--no-postprocess"])
    assert result.exit_code == 0, result.output
    assert open_tissue_label(tmp_path / "b" / "s.zarr") is None
    result = runner.invoke(app, base + ["--out", str(tmp_path / "c"), "--fill-holes-um2", "-1"])
    assert result.exit_code == 2 and "--fill-holes-um2" in result.output
