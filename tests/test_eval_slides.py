"""Streaming Dice evaluation: metrics, edge cases, formats, errors and the evaluate_dice script."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from typer.testing import CliRunner

from gigamlx.eval.metrics import (
    PixelCounts,
    block_counts,
    evaluate_pair,
    evaluate_thresholds,
    summarize,
    to_probability,
    u8_block_counts,
)
from gigamlx.eval.results import render_table, report_to_json
from gigamlx.eval.slides import EvaluationError, evaluate_files, expand_multi_value_option

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_dice.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_dice", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_memory(prob: np.ndarray, tissue: np.ndarray, threshold: float) -> PixelCounts:
    pred = prob >= threshold
    return PixelCounts(
        tp=int((pred & tissue).sum()),
        fp=int((pred & ~tissue).sum()),
        fn=int((~pred & tissue).sum()),
        tn=int((~pred & ~tissue).sum()),
        sum_p=float(prob.sum()),
        sum_g=float(tissue.sum()),
        sum_pg=float((prob * tissue).sum()),
    )


def _pair(tmp_path: Path, hw=(60, 80), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, hw, dtype=np.uint8), (rng.random(hw) < 0.4).astype(np.uint8)


def test_metrics_hand_computed():
    prob = np.array([[0.9, 0.2], [0.6, 0.4]])
    mask = np.array([[1, 0], [0, 255]], dtype=np.uint8)
    counts = evaluate_pair(prob, mask, threshold=0.5)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (1, 1, 1, 1)
    metrics = counts.metrics()
    assert metrics["dice"] == 0.5 and metrics["precision"] == 0.5 and metrics["recall"] == 0.5
    assert metrics["iou"] == pytest.approx(1 / 3)
    assert metrics["soft_dice"] == pytest.approx(2 * (0.9 + 0.4) / (2.1 + 2))


def test_metrics_threshold_inclusive():
    counts = evaluate_pair(np.array([[0.5, 0.49]]), np.array([[1, 0]]), threshold=0.5)
    assert counts.metrics()["dice"] == 1.0


def test_metrics_both_empty_are_one():
    counts = evaluate_pair(np.zeros((3, 4)), np.zeros((3, 4), dtype=np.uint8))
    assert counts.metrics() == dict.fromkeys(counts.metrics(), 1.0)


def test_metrics_prediction_empty_mask_not():
    counts = evaluate_pair(np.full((2, 2), 0.1), np.eye(2, dtype=np.uint8))
    metrics = counts.metrics()
    assert metrics["dice"] == metrics["iou"] == metrics["precision"] == metrics["recall"] == 0.0
    assert metrics["soft_dice"] == pytest.approx(2 * 0.2 / (0.4 + 2))


def test_metrics_mask_empty_prediction_not():
    metrics = evaluate_pair(np.full((2, 2), 0.9), np.zeros((2, 2), dtype=np.uint8)).metrics()
    assert metrics["dice"] == metrics["iou"] == metrics["precision"] == metrics["recall"] == 0.0
    assert metrics["soft_dice"] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_evaluate_pair_streaming_matches_in_memory(dtype):
    rng = np.random.default_rng(3)
    raw = rng.random((1500, 2300)).astype(np.float32)
    pred = raw if dtype == np.float32 else (raw * 255).astype(np.uint8)
    tissue = rng.random((1500, 2300)) < 0.3
    prob = pred.astype(np.float64) / (255.0 if dtype == np.uint8 else 1.0)
    streamed = evaluate_pair(pred, tissue.astype(np.uint8), 0.37, block_hw=(333, 517))
    direct = _in_memory(prob, tissue, 0.37)
    assert (streamed.tp, streamed.fp, streamed.fn, streamed.tn) == (
        direct.tp,
        direct.fp,
        direct.fn,
        direct.tn,
    )
    for name in ("sum_p", "sum_g", "sum_pg"):
        assert getattr(streamed, name) == pytest.approx(getattr(direct, name), rel=1e-12)


@pytest.mark.parametrize("scale", [255.0, 1.0])
def test_a_uint8_map_counts_from_its_histogram_as_from_its_probabilities(scale):
    """The uint8 path (one histogram per block) against the float path on the same values, at
    cuts that fall exactly on a value, between values and at the ends: the same counts at
    every cut, the soft sums to float64 rounding."""
    rng = np.random.default_rng(5)
    high = 256 if scale == 255.0 else 2
    values = rng.integers(0, high, (700, 900), dtype=np.uint8)
    tissue = rng.random((700, 900)) < 0.4
    cuts = (0.0, 1 / 255, 0.1, 0.5, 128 / 255, 0.9, 1.0)
    as_u8 = u8_block_counts(values, tissue, cuts, scale)
    as_float = block_counts(to_probability(values, scale=scale), tissue, cuts)
    for u8, f64 in zip(as_u8, as_float, strict=True):
        assert (u8.tp, u8.fp, u8.fn, u8.tn) == (f64.tp, f64.fp, f64.fn, f64.tn)
        assert u8.sum_g == f64.sum_g
        assert u8.sum_p == pytest.approx(f64.sum_p, rel=1e-12)
        assert u8.sum_pg == pytest.approx(f64.sum_pg, rel=1e-12)
    streamed = evaluate_thresholds(values, tissue, cuts, (128, 256), pred_scale=scale)
    assert [c.tp for c in streamed] == [c.tp for c in as_float]


def test_a_uint8_map_beyond_its_scale_is_an_error():
    with pytest.raises(EvaluationError, match="outside"):
        evaluate_pair(np.full((2, 2), 2, np.uint8), np.zeros((2, 2)), pred_scale=1)


class _LazyConstant:
    """(H, W) array that makes each requested block on the fly and records its size."""

    def __init__(self, shape_hw, value, dtype):
        self.shape, self.value, self.dtype = shape_hw, value, np.dtype(dtype)
        self.chunk_hw, self.max_block_px = shape_hw, 0  # one huge "chunk", like a PNG

    def __getitem__(self, key):
        rows, cols = key
        hw = (rows.stop - rows.start, cols.stop - cols.start)
        self.max_block_px = max(self.max_block_px, hw[0] * hw[1])
        return np.full(hw, self.value, dtype=self.dtype)


def test_evaluate_pair_memory_bounded():
    tracemalloc = pytest.importorskip("tracemalloc")
    pred = _LazyConstant((6000, 9000), 200, np.uint8)  # whole as float64: 432 MB
    mask = _LazyConstant((6000, 9000), 1, np.uint8)
    tracemalloc.start()
    counts = evaluate_pair(pred, mask)
    peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counts.tp == 6000 * 9000 and counts.fp == counts.fn == counts.tn == 0
    assert pred.max_block_px <= 2048 * 2048 and peak_bytes < 100e6


def test_evaluate_pair_nan_error_names_block():
    prob = np.zeros((10, 10))
    prob[7, 8] = np.nan
    with pytest.raises(EvaluationError, match=r"pred\.tif: NaN.*rows 6:9, cols 6:9"):
        evaluate_pair(prob, np.zeros((10, 10)), block_hw=(3, 3), pred_name="pred.tif")


def test_evaluate_pair_out_of_range_error():
    with pytest.raises(EvaluationError, match="outside"):
        evaluate_pair(np.full((2, 2), 1.5), np.zeros((2, 2)))


@pytest.mark.parametrize("threshold", [-0.1, 1.5, math.nan])
def test_evaluate_pair_threshold_error(threshold):
    with pytest.raises(EvaluationError, match="threshold"):
        evaluate_pair(np.zeros((2, 2)), np.zeros((2, 2)), threshold=threshold)


def test_evaluate_pair_int16_rejected():
    with pytest.raises(EvaluationError, match="int16"):
        evaluate_pair(np.zeros((2, 2), dtype=np.int16), np.zeros((2, 2)))


def test_evaluate_files_formats_agree(tmp_path):
    pred_u8, mask = _pair(tmp_path)
    Image.fromarray(pred_u8).save(tmp_path / "p.png")
    tifffile.imwrite(tmp_path / "p.tif", pred_u8.astype(np.float64) / 255, tile=(32, 32))
    zarr.create_array(tmp_path / "p.zarr", data=pred_u8, chunks=(16, 16))
    group = zarr.open_group(tmp_path / "p.ome.zarr", mode="w")
    group.create_array("0", data=pred_u8[None], chunks=(1, 32, 32))
    axes = [{"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}]
    group.attrs["ome"] = {"multiscales": [{"axes": axes, "datasets": [{"path": "0"}]}]}
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    preds = [tmp_path / n for n in ("p.png", "p.tif", "p.zarr", "p.ome.zarr")]
    report = evaluate_files(preds, [tmp_path / "m.png"] * 4)
    expected = _in_memory(pred_u8 / 255.0, mask != 0, 0.5)
    for slide in report.slides:
        assert (slide.counts.tp, slide.counts.fp) == (expected.tp, expected.fp)
        assert slide.counts.sum_pg == pytest.approx(expected.sum_pg, rel=1e-12)


def test_evaluate_files_shape_mismatch_names_shapes_and_files(tmp_path):
    zarr.create_array(tmp_path / "p.zarr", data=np.zeros((30, 40), dtype=np.uint8))
    zarr.create_array(tmp_path / "m.zarr", data=np.zeros((30, 41), dtype=np.uint8))
    with pytest.raises(EvaluationError) as info:
        evaluate_files([tmp_path / "p.zarr"], [tmp_path / "m.zarr"])
    message = str(info.value)
    assert "(30, 40)" in message and "(30, 41)" in message
    assert "p.zarr" in message and "m.zarr" in message and "level 0" in message


def test_evaluate_files_count_mismatch(tmp_path):
    with pytest.raises(EvaluationError, match="2 prediction file.*1 mask"):
        evaluate_files(["a.png", "b.png"], ["m.png"])


def test_evaluate_files_missing_file(tmp_path):
    with pytest.raises(EvaluationError, match="missing.png: no such file"):
        evaluate_files([tmp_path / "missing.png"], [tmp_path / "missing.png"])


def test_evaluate_files_unknown_baseline(tmp_path):
    with pytest.raises(EvaluationError, match="unknown baseline"):
        evaluate_files(["a.png"], ["m.png"], baseline="kmeans")


def test_summarize_sample_std():
    rows = [dict.fromkeys(("dice", "iou", "precision", "recall", "soft_dice"), v) for v in (1, 3)]
    summary = summarize(rows)
    assert summary["dice"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert summarize(rows[:1])["dice"]["std"] is None


def test_report_json_and_table(tmp_path):
    pred_u8, mask = _pair(tmp_path)
    zarr.create_array(tmp_path / "p.zarr", data=pred_u8)
    zarr.create_array(tmp_path / "m.zarr", data=mask)
    report = evaluate_files([tmp_path / "p.zarr"] * 2, [tmp_path / "m.zarr"] * 2)
    data = json.loads(json.dumps(report_to_json(report)))
    assert data["n_slides"] == 2 and data["summary"]["dice"]["std"] == 0.0
    assert data["slides"][0]["counts"]["tp"] == _in_memory(pred_u8 / 255, mask != 0, 0.5).tp
    table = render_table(report)
    assert table.row_count == 3 and "mean ± std (n=2)" in table.columns[0]._cells


def _write_store(path: Path) -> np.ndarray:
    writer = pytest.importorskip("gigamlx.slide.writer")
    from gigamlx.core.geometry import Box

    yy, xx = np.mgrid[:96, :128]
    tissue = (yy - 48) ** 2 + (xx - 64) ** 2 < 35**2
    rgb = np.where(tissue[..., None], [200, 90, 170], [245, 245, 245]).astype(np.uint8)
    with writer.StoreWriter(path, (96, 128), chunk_px=32, min_side_px=48) as out:
        out.write_image(Box(0, 0, 96, 128), rgb)
        out.write_mask(Box(0, 0, 96, 128), tissue)
        out.finish()
    return tissue


def test_baseline_otsu_on_store(tmp_path):
    tissue = _write_store(tmp_path / "s.zarr")
    zarr.create_array(tmp_path / "p.zarr", data=tissue.astype(np.float32) * 0.8)
    report = evaluate_files([tmp_path / "p.zarr"], [tmp_path / "s.zarr"], baseline="otsu")
    assert report.slides[0].counts.metrics()["dice"] == 1.0
    otsu_dice = report.slides[0].baseline_counts.metrics()["dice"]
    assert 0.95 < otsu_dice <= 1.0
    assert report_to_json(report)["baseline_summary"]["dice"]["mean"] == otsu_dice


def test_evaluate_files_level(tmp_path):
    tissue = _write_store(tmp_path / "s.zarr")
    group = zarr.open_group(tmp_path / "p.ome.zarr", mode="w")
    group.create_array("0", data=tissue.astype(np.uint8) * 255)
    group.create_array("1", data=np.zeros((48, 64), dtype=np.uint8))
    report = evaluate_files([tmp_path / "p.ome.zarr"], [tmp_path / "s.zarr"], level=1)
    assert report.slides[0].shape_hw == (48, 64)
    assert report.slides[0].counts.fn == np.count_nonzero(tissue[::2, ::2])
    with pytest.raises(EvaluationError, match="level 2"):
        evaluate_files([tmp_path / "p.ome.zarr"], [tmp_path / "s.zarr"], level=2)


def test_evaluate_files_corrupt_chunk(tmp_path):
    zarr.create_array(tmp_path / "p.zarr", data=np.ones((8, 8), np.uint8), chunks=(4, 4))
    (tmp_path / "p.zarr" / "c" / "1" / "0").write_bytes(b"garbage")
    with pytest.raises(EvaluationError, match=r"p\.zarr: cannot read rows"):
        evaluate_files([tmp_path / "p.zarr"], [tmp_path / "p.zarr"])


def test_baseline_otsu_needs_store(tmp_path):
    zarr.create_array(tmp_path / "p.zarr", data=np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="slide stores"):
        evaluate_files([tmp_path / "p.zarr"], [tmp_path / "p.zarr"], baseline="otsu")


def _store_with_holes_and_specks(path: Path, mpp: float | None = 0.5) -> np.ndarray:
    """A slide store whose tissue region (its mask) holds white fat the Otsu mask misses, with
    stained specks on the glass around it that Otsu keeps; returns the mask."""
    from gigamlx.core.geometry import Box
    from gigamlx.slide.writer import StoreWriter

    hw = (400, 600)
    region = np.zeros(hw, bool)
    region[100:300, 100:400] = True
    rgb = np.full((*hw, 3), 245, np.uint8)
    rgb[region] = (200, 90, 170)
    for y, x in ((150, 150), (200, 300), (240, 180)):
        rgb[y : y + 40, x : x + 40] = 245  # fat: glass-white, inside the tissue region
    for y, x in ((20, 20), (20, 500), (350, 40), (360, 520)):
        rgb[y : y + 10, x : x + 10] = (200, 90, 170)  # specks: 25 µm², far from the tissue
    attrs = {"mpp": mpp} if mpp else {}
    with StoreWriter(path, hw, chunk_px=128, min_side_px=128, attrs=attrs) as out:
        out.write_image(Box(0, 0, *hw), rgb)
        out.write_mask(Box(0, 0, *hw), region)
        out.finish()
    return region


def test_baseline_morph_fills_what_otsu_misses_on_the_same_pixels(tmp_path):
    region = _store_with_holes_and_specks(tmp_path / "s.zarr")
    zarr.create_array(tmp_path / "p.zarr", data=region.astype(np.uint8) * 255)
    scores = {}
    for name in ("otsu", "morph"):
        report = evaluate_files([tmp_path / "p.zarr"], [tmp_path / "s.zarr"], baseline=name)
        counts = report.slides[0].baseline_counts
        assert counts.tp + counts.fp + counts.fn + counts.tn == region.size  # the same pixels
        scores[name] = counts.metrics()
        assert report_to_json(report)["baseline"] == name
    assert scores["otsu"]["dice"] < 0.97 and scores["morph"]["dice"] > 0.99
    assert scores["morph"]["precision"] > scores["otsu"]["precision"]  # the specks went
    assert scores["morph"]["recall"] > scores["otsu"]["recall"]  # the fat was filled


def test_baseline_morph_needs_a_pixel_size(tmp_path):
    region = _store_with_holes_and_specks(tmp_path / "s.zarr", mpp=None)
    zarr.create_array(tmp_path / "p.zarr", data=region.astype(np.uint8))
    with pytest.raises(EvaluationError, match="mpp"):
        evaluate_files([tmp_path / "p.zarr"], [tmp_path / "s.zarr"], baseline="morph")


def test_expand_multi_value_option():
    args = ["p1", "p2", "--masks", "m1", "m2", "--threshold", "0.3"]
    assert expand_multi_value_option(args, "--masks") == [
        *("p1", "p2", "--masks", "m1", "--masks", "m2", "--threshold", "0.3")
    ]


def test_script_table_and_json(tmp_path):
    pred_u8, mask = _pair(tmp_path)
    for name in ("a", "b"):
        zarr.create_array(tmp_path / f"{name}.zarr", data=pred_u8)
    Image.fromarray(mask * 255).save(tmp_path / "m.png")
    args = [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--masks"]
    args += [str(tmp_path / "m.png")] * 2 + ["--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(_load_script().app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "a.zarr" in result.output and "mean ± std" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["n_slides"] == 2 and data["threshold"] == 0.5


@pytest.mark.parametrize("case", ["threshold", "nan", "missing", "count"])
def test_script_bad_input_exits_2(tmp_path, case):
    prob = np.zeros((8, 8), dtype=np.float32)
    prob[3, 3] = np.nan if case == "nan" else 0.0
    zarr.create_array(tmp_path / "p.zarr", data=prob)
    masks = [str(tmp_path / ("gone.png" if case == "missing" else "p.zarr"))]
    args = [str(tmp_path / "p.zarr"), "--masks", *masks * (2 if case == "count" else 1)]
    args += ["--threshold", "2"] if case == "threshold" else []
    result = CliRunner().invoke(_load_script().app, args)
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
