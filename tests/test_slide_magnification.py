"""Magnification: `train --level N` / `--mpp X` read that pyramid level, `--region` takes
physical sizes, the checkpoint records the resolution and `predict` reads the matching level
(or says plainly that a slide has none)."""

import json
import math

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.core.geometry import Box
from gigamlx.slide.magnification import LevelError, match_mpp, pick_level, size_px
from gigamlx.slide.store import open_store
from gigamlx.slide.writer import StoreWriter
from gigamlx.synth.render import render
from gigamlx.synth.scene import make_scene

runner = CliRunner()
HW = (512, 768)
FAST = ["--memory-budget", "300MB", "--tile", "64", "--quiet", "--steps", "1"]
FAST += ["--val-fraction", "0"]  # no validation: these cases are about levels


def _store(path, mpp: float | None):
    """A 3-level store (512x768, 256x384, 128x192) with its true mask at `mpp` µm/px."""
    rgb, truth = render(make_scene(HW, 5), np.arange(HW[0]), np.arange(HW[1]))
    with StoreWriter(path, HW, chunk_px=128, attrs={"mpp": mpp}, min_side_px=200) as out:
        out.write_image(Box(0, 0, *HW), rgb)
        out.write_mask(Box(0, 0, *HW), truth)
        out.finish()
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("mag")
    return {mpp: _store(root / f"s{mpp}.zarr", mpp) for mpp in (0.5, 0.3, None)}


def _saved(run) -> dict:
    return json.loads((run / "config.json").read_text())


def test_level_matching_and_sizes():
    mpps, hws = [0.5, 1.0, 2.0], [(8, 8), (4, 4), (2, 2)]
    assert match_mpp(mpps, hws, 1.05, "s") == 1 and pick_level(mpps, hws, "s", level=2) == 2
    with pytest.raises(LevelError, match=r"no level within 10% of 1.3 µm/px.*1: 4x4 \(HxW\)"):
        match_mpp(mpps, hws, 1.3, "s")
    with pytest.raises(LevelError, match="no pixel size"):
        match_mpp([None, None], hws[:2], 1.0, "s")
    assert size_px((8000, 32000), "um", 0.5, "s") == (16000, 64000)
    assert size_px((2, 8), "mm", 2.0, "s") == (1000, 4000)


@pytest.mark.parametrize(
    ("options", "level", "mpp", "region_px"),
    [(["--mpp", "1.0"], 1, 1.0, 96), (["--level", "2"], 2, 2.0, 48)],
)
def test_train_reads_the_level_and_predict_matches_it(
    stores, tmp_path, options, level, mpp, region_px
):
    run = tmp_path / "run"
    args = ["train", stores[0.5], *options, "--region", "96x96um", *FAST, "--out", str(run)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = _saved(run)
    assert (saved["trained_level"], saved["trained_mpp"]) == (level, mpp)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["tiles"] == math.ceil(region_px / 64) ** 2  # 96 µm at that level, 64 px tiles
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(run), stores[0.5], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"level {level}, {HW[0] >> level}x{HW[1] >> level} px (HxW)" in result.output
    pred = zarr.open_group(out / "s0.5.zarr", mode="r")
    assert pred["0"].shape == (HW[0] >> level, HW[1] >> level)
    scale = pred.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale[0]["scale"] == [mpp, mpp]


def test_predict_without_matching_level_is_a_clear_error(stores, tmp_path):
    run = tmp_path / "run"
    args = ["train", stores[0.5], "--mpp", "1.0", "--region", "128x128", *FAST, "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["predict", str(run), stores[0.3], "--out", str(tmp_path / "p")])
    assert result.exit_code == 2, result.output
    assert "no level within 10% of 1 µm/px" in result.output and "0.6 µm/px" in result.output
    assert not (tmp_path / "p" / "s0.3.zarr").exists()
    result = runner.invoke(
        app, ["predict", str(run), stores[0.3], "--out", str(tmp_path / "p"), "--level", "2"]
    )
    assert result.exit_code == 0, result.output
    assert open_store(stores[0.3]).level_mpp(2) == pytest.approx(1.2)


def test_physical_region_needs_calibration(stores, tmp_path):
    args = ["train", stores[None], "--region", "96x96um", *FAST, "--out", str(tmp_path / "r")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "needs a pixel size" in result.output, result.output
    args = ["train", stores[0.5], "--mpp", "0.7", *FAST, "--out", str(tmp_path / "r2")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no level within 10% of 0.7" in result.output


def test_uncalibrated_slide_gets_the_trained_level_index(stores, tmp_path):
    run = tmp_path / "run"
    args = ["train", stores[0.5], "--level", "1", "--region", "128x128", *FAST, "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["predict", str(run), stores[None], "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "has no pixel size: predicting level 1" in " ".join(result.output.split())
    assert f"level 1, {HW[0] >> 1}x{HW[1] >> 1} px (HxW)" in result.output
