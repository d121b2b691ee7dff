"""train/ema.py: the moving average of the weights, its place in checkpoints and in `best`."""

import json
from functools import partial

import numpy as np
import pytest
import zarr
from factories import small_config
from safetensors.numpy import load_file
from typer.testing import CliRunner

from gigamlx.backends import get_backend
from gigamlx.cli import app
from gigamlx.infer.model import load_model
from gigamlx.runs.checkpoint import (
    BEST,
    EMA,
    MANIFEST,
    list_checkpoints,
    load_checkpoint,
    read_state,
)
from gigamlx.train.ema import WeightAverage, warmed_decay
from gigamlx.train.loop import train
from gigamlx.train.run import save_best, start_run
from gigamlx.train.validate import FILL_CHOICES_UM2, BestChoice, best_choice

_config = partial(small_config, checkpoint_every=1, color_jitter=0.0)


def test_decay_warms_up_to_the_one_asked_for():
    assert warmed_decay(0.99, 1) == pytest.approx(2 / 11)
    assert warmed_decay(0.99, 10) == pytest.approx(11 / 20)
    assert warmed_decay(0.99, 10_000) == 0.99  # (1 + n) / (10 + n) passes 0.99 at n = 890
    assert warmed_decay(0.5, 8) == 0.5


def test_average_follows_the_formula_on_the_model_weights():
    """GigaUNet-4492's own weights, three perturbed steps: float32 within rounding of the
    float64 formula ema = d * ema + (1 - d) * w, d warmed up per update."""
    backend = get_backend("mlx")
    start = backend.flat_params(backend.build_model(3))
    average = WeightAverage(0.9, start)
    assert average.matches(start) and average.updates == 0
    rng = np.random.default_rng(0)
    expected = {n: v.astype(np.float64) for n, v in start.items()}
    for update in (1, 2, 3):
        weights = {
            n: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for n, v in start.items()
        }
        average.update(weights)
        d = warmed_decay(0.9, update)
        expected = {n: d * expected[n] + (1 - d) * weights[n] for n in expected}
    assert average.updates == 3 and not average.matches(start)
    for name, value in average.shadow.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    model = average.as_model(backend)
    for name, value in backend.flat_params(model).items():
        np.testing.assert_array_equal(value, average.shadow[name])


def test_average_past_the_warm_up_uses_the_decay_exactly():
    average = WeightAverage(0.75, {"w": np.array([4.0], np.float32)}, updates=1000)
    average.update({"w": np.array([8.0], np.float32)})
    assert average.shadow["w"][0] == 5.0 and average.updates == 1001


def test_every_checkpoint_holds_the_average_and_resume_continues_it(slide, tmp_path):
    """Three steps straight, or two then a resume: the same average, the same update count."""
    train(start_run(_config(slide, tmp_path / "straight", 3), resume=False))
    train(start_run(_config(slide, tmp_path / "split", 2), resume=False))
    train(start_run(_config(slide, tmp_path / "split", 3), resume=True, overrides={"steps": 3}))
    for path in list_checkpoints(tmp_path / "split"):
        assert EMA in (path / MANIFEST).read_text()  # checksummed like the weights
    straight, split = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert read_state(split.path)["ema_updates"] == read_state(straight.path)["ema_updates"] == 3
    for name, value in straight.ema.items():
        np.testing.assert_array_equal(split.ema[name], value)
    assert not _same(straight.ema, straight.weights)  # an average, not a copy


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[name], b[name]) for name in a)


def test_decay_0_keeps_no_average(slide, tmp_path):
    run = start_run(_config(slide, tmp_path / "run", 1, ema_decay=0.0), resume=False)
    train(run)
    assert run.ema is None and load_checkpoint(tmp_path / "run").ema is None
    assert not (list_checkpoints(tmp_path / "run")[-1] / EMA).exists()


def test_average_starts_from_the_init_weights(slide, weights, tmp_path):
    run = start_run(_config(slide, tmp_path / "run", 1), resume=False, init=str(weights))
    assert run.ema.matches(load_file(str(weights))) and run.ema.updates == 0


def test_best_choice_takes_the_higher_dice_at_its_own_cut():
    row = {"val_threshold_dice": 0.90, "val_threshold": 0.4}
    assert best_choice(row) == BestChoice("raw", 0.90, 0.4)  # no average kept
    row |= {"val_ema_threshold_dice": 0.92, "val_ema_threshold": 0.6}
    assert best_choice(row) == BestChoice("ema", 0.92, 0.6)
    row["val_ema_threshold_dice"] = 0.90
    assert best_choice(row) == BestChoice("raw", 0.90, 0.4)  # a tie keeps the raw weights


def test_best_choice_follows_the_tissue_mask_where_there_is_one():
    """The weights whose tissue mask scores higher are kept, though their map scores lower;
    a line without masks (no pixel size) compares the maps at their cuts."""
    row = {"val_threshold_dice": 0.95, "val_threshold": 0.4, "val_dice_post": 0.97}
    row |= {"val_ema_threshold_dice": 0.96, "val_ema_threshold": 0.6, "val_ema_dice_post": 0.98}
    row |= {"val_ema_fill_holes_um2": 1e6}
    assert best_choice(row) == BestChoice("ema", 0.98, 0.6, 1e6, of_mask=True)
    row["val_dice_post"] = 0.99
    assert best_choice(row) == BestChoice("raw", 0.99, 0.4, of_mask=True)
    row["val_dice_post"] = row["val_ema_dice_post"] = None
    assert best_choice(row) == BestChoice("ema", 0.96, 0.6, 1e6)


@pytest.fixture(scope="module")
def val_slides(synth_store):
    return [str(synth_store((320, 640), seed=n)) for n in (1, 2)]


def test_best_of_the_average_holds_its_weights_and_cut_for_predict(val_slides, tmp_path):
    """A validation whose average scores higher: `best` holds the average's weights, says so,
    and carries the average's cut, which `predict RUN --checkpoint best` uses."""
    out = tmp_path / "run"
    config = _config(val_slides[:1], out, 2, region="256x256", val_fraction=0.1, val_every=2)
    run = start_run(config, resume=False)
    real = run.validator.__call__

    def average_wins(backend, model, step, seconds, ema_model=None):
        row = real(backend, model, step, seconds, ema_model)
        if step == 2:  # the average at a cut and fill no raw validation chose, and higher
            assert 0 <= row["val_ema_dice_post"] <= 1 and 0 <= row["val_ema_dice"] <= 1
            assert row["val_fill_holes_um2"] in FILL_CHOICES_UM2
            row |= {"val_ema_threshold": 0.85, "val_ema_threshold_dice": 1.0}
            row |= {"val_ema_dice_post": 1.0}
            row |= {"val_ema_fill_holes_um2": 123_456.0, "val_fill_holes_um2": 7.0}
        return row

    run.validator = average_wins  # the loop only calls it
    train(run)
    best = read_state(out / "checkpoints" / BEST)
    assert (best["step"], best["weights"], best["threshold"]) == (2, "ema", 0.85)
    assert best["val_dice"] == 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    vals = [r for r in rows if r.get("kind") == "val"]
    assert vals[0]["val_ema_threshold_dice"] == vals[0]["val_threshold_dice"]  # step 0: equal
    step_2 = load_checkpoint(out / "checkpoints" / "step_0000002")  # the raw weights, raw cut
    assert read_state(step_2.path)["threshold"] == vals[-1]["val_threshold"]
    assert read_state(step_2.path)["postprocess"]["fill_holes_um2"] == 7.0  # the raw weights'
    assert best["postprocess"] == BestChoice("ema", 1.0, 0.85, 123_456.0).postprocess()
    assert best["val_dice_of"] == "tissue mask"
    backend, model = load_model(out / "checkpoints" / BEST)
    assert _same(backend.flat_params(model), step_2.ema)
    assert not _same(step_2.ema, step_2.weights)
    args = ["predict", str(out), val_slides[1], "--checkpoint", "best", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "tissue at p >= 0.85" in result.output
    record = zarr.open_group(tmp_path / "p" / "s.zarr", mode="r").attrs["provenance"]
    assert record["postprocess"]["fill_holes_um2"] == 123_456.0  # what validation chose
    typed = ["--fill-holes-um2", "5", "--out", str(tmp_path / "q")]
    assert CliRunner().invoke(app, [*args, *typed]).exit_code == 0
    record = zarr.open_group(tmp_path / "q" / "s.zarr", mode="r").attrs["provenance"]
    assert record["postprocess"]["fill_holes_um2"] == 5.0  # typed wins


def test_save_best_of_the_raw_weights_says_raw(slide, tmp_path):
    run = start_run(_config(slide, tmp_path / "run", 1), resume=False)
    train(run)
    path = save_best(run, BestChoice("raw", 0.5, 0.3))
    state = read_state(path)
    assert (state["weights"], state["threshold"], state["val_dice"]) == ("raw", 0.3, 0.5)
    saved = load_checkpoint(path)
    for name, value in run.backend.flat_params(run.model).items():
        np.testing.assert_array_equal(saved.weights[name], value)
