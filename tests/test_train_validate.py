"""Training to quality: validation, the best checkpoint, the lr schedule, colour augmentation."""

import dataclasses
import json
from functools import partial

import numpy as np
import pytest
import zarr
from factories import small_config
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.core.normalise import slide_norm
from gigamlx.eval.metrics import evaluate_pair, evaluate_thresholds
from gigamlx.infer.annotations import threshold_u8
from gigamlx.infer.model import load_model
from gigamlx.runs.checkpoint import list_checkpoints, read_state
from gigamlx.runs.config import DEFAULTS, TrainConfig
from gigamlx.synth.slide import synth_slide
from gigamlx.tiling.scheduler import tiled_predict
from gigamlx.train import augment, regions, validate
from gigamlx.train.augment import Illumination, _axis_gain, apply_gains, draw_jitter, lut32
from gigamlx.train.loop import train
from gigamlx.train.regions import Region, RegionSampler, region_view
from gigamlx.train.run import start_run
from gigamlx.train.validate import (
    FILL_CHOICES_UM2,
    THRESHOLD_TOLERANCE,
    THRESHOLDS,
    ValArea,
    Validator,
    best_threshold,
    midway,
    resolve_val_fraction,
    split_hw,
)

VAL_KEYS = ("val_dice", "val_soft_dice", "val_precision", "val_recall", "val_otsu_dice")
VAL_KEYS += ("val_dice_post", "val_morph_dice")  # the tissue mask; the morphological detector
VAL_KEYS += ("val_ema_dice", "val_ema_threshold_dice", "val_ema_dice_post")  # the average's


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    return [str(synth_slide(root / f"s{n}.zarr", (320, 640), seed=n)) for n in (1, 2)]


# validation and the learning-rate schedule as a real run has them: the cases here are about them
_config = partial(
    small_config,
    region="256x256",
    val_fraction=DEFAULTS.val_fraction,
    warmup=DEFAULTS.warmup,
    lr_schedule=DEFAULTS.lr_schedule,
)


def test_split_hw_holds_out_the_end_of_the_long_side():
    assert split_hw((100, 1000), 0.1) == ((100, 900), (0, 900, 100, 1000))
    assert split_hw((1000, 100), 0.25) == ((750, 100), (750, 0, 1000, 100))
    assert split_hw((100, 1000), 0.0) == ((100, 1000), None)


def test_val_fraction_auto_only_when_regions_fit_and_no_val_stores():
    assert resolve_val_fraction(None, False, [(4096, 8192)], (4096, 4096)) == 0.1
    assert resolve_val_fraction(None, False, [(4096, 4096)], (4096, 4096)) == 0.0
    assert resolve_val_fraction(None, True, [(4096, 8192)], (4096, 4096)) == 0.0
    assert resolve_val_fraction(0.2, True, [(4096, 8192)], (4096, 4096)) == 0.2


def test_regions_never_overlap_the_heldout_strip():
    train_hw, box = split_hw((300, 1000), 0.3)
    sampler = RegionSampler([train_hw], (128, 256), seed=0)
    for region in sampler.draw(500):
        assert region.origin_yx[1] + region.source_hw[1] <= box.x0


def test_color_jitter_is_exact_per_window_and_identity_at_zero():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    jitter = draw_jitter(np.random.default_rng(1), 1.0)
    whole = region_view(image, Region(0, (0, 0), (64, 96), True, 1), jitter)[0:96, 0:64]
    window = region_view(image, Region(0, (0, 0), (64, 96), True, 1), jitter)[10:50, 5:33]
    np.testing.assert_array_equal(whole[10:50, 5:33], window)
    plain = region_view(image, Region(0, (0, 0), (64, 96), True, 1))[0:96, 0:64]
    assert not np.array_equal(whole, plain)
    identity = draw_jitter(np.random.default_rng(1), 0.0)
    np.testing.assert_array_equal(identity.apply(image), image)


def test_color_jitter_gives_the_same_bytes_whatever_its_block(monkeypatch):
    """`apply` and `apply_gains` transform pixels a block at a time: block edges change
    nothing."""
    image = np.random.default_rng(4).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    jitter = draw_jitter(np.random.default_rng(5), 1.0)
    monkeypatch.setattr(augment, "APPLY_BLOCK_PX", image.shape[0] * image.shape[1])
    whole = jitter.apply(image)
    monkeypatch.setattr(augment, "APPLY_BLOCK_PX", 7)  # many blocks, the last one short
    np.testing.assert_array_equal(jitter.apply(image), whole)
    np.testing.assert_array_equal(jitter.apply(image[5:9, 3:4]), whole[5:9, 3:4])
    gains = _axis_gain(0, 37, 37, 0.15, 0.05), _axis_gain(0, 53, 53, 0.1, -0.05)
    monkeypatch.setattr(augment, "APPLY_BLOCK_PX", 10**6)
    lit = apply_gains(image, *gains)
    monkeypatch.setattr(augment, "APPLY_BLOCK_PX", 100)  # one row at a time
    np.testing.assert_array_equal(apply_gains(image, *gains), lit)
    assert not np.array_equal(lit, image)


def test_illumination_is_exact_per_window_dims_the_edges_and_is_drawn_only_when_on():
    """The light factor depends on a pixel's place in the turned region: a window of the
    region reads the same pixels as the whole region; the edges come out dimmer than the
    middle; strength 0 leaves the sampler's stream as it was (runs saved before it resume
    the same)."""
    image = np.full((64, 96, 3), 200, np.uint8)
    light = Illumination((0.15, 0.1), (0.0, 0.05))
    region = Region(0, (0, 0), (64, 96), True, 1, None, light)
    jitter = draw_jitter(np.random.default_rng(1), 1.0)
    whole = region_view(image, region, jitter, light=light)[0:96, 0:64]
    window = region_view(image, region, jitter, light=light)[10:50, 5:33]
    np.testing.assert_array_equal(whole[10:50, 5:33], window)
    lit = region_view(image, region, light=light)[0:96, 0:64].astype(int)
    assert lit[48, 32].tolist() == [200, 200, 200]  # the middle: gains ~1
    assert lit[0, 32, 0] == round(200 * (1 - 0.15)) and lit[48, 0, 0] < lit[48, 63, 0] < 200
    old = RegionSampler([(64, 96)], (32, 32), seed=5, color_jitter=1.0)
    off = RegionSampler([(64, 96)], (32, 32), seed=5, color_jitter=1.0, illumination=0.0)
    on = RegionSampler([(64, 96)], (32, 32), seed=5, color_jitter=1.0, illumination=1.0)
    assert old.draw(3) == off.draw(3) and all(r.light is None for r in off.draw(2))
    # a run saved before the option (no key in its config) resumes without it
    assert TrainConfig.from_dict({}).illumination == 0.0 and TrainConfig().illumination == 1.0
    drawn = on.draw(20)
    assert all(
        0 <= c <= 0.15 and abs(t) <= 0.05 for r in drawn for c, t in zip(*r.light, strict=True)
    )


def test_the_colour_table_gives_the_same_bytes(monkeypatch):
    """Large regions recolour through a table of all 2^24 colours: the same bytes as the
    per-pixel transform, including a lazy region view that picks the table."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    image[0, :8] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]] + [
        [1, 2, 3]
    ] * 3
    levels = np.arange(256, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)  # every colour
    for strength in (0.5, 2.0):  # the table is built another way than `apply` computes
        other = draw_jitter(np.random.default_rng(4), strength)
        packed = np.zeros((2**24, 4), np.uint8)
        packed[:, :3] = other.apply(cube).reshape(-1, 3)
        np.testing.assert_array_equal(lut32.__wrapped__(other), packed.view(np.uint32).ravel())
    jitter = draw_jitter(np.random.default_rng(3), 1.0)
    np.testing.assert_array_equal(jitter.apply_table(image), jitter.apply(image))
    region = Region(0, (0, 0), (48, 80), False, 3)
    direct = region_view(image, region, jitter)[0:80, 0:48]
    monkeypatch.setattr(regions, "LUT_MIN_REGION_PX", 1)  # this small region takes the table
    calls = []
    monkeypatch.setattr(augment, "lut32", lambda j: calls.append(j) or lut32(j))
    np.testing.assert_array_equal(region_view(image, region, jitter)[0:80, 0:48], direct)
    assert calls == [jitter]


def test_lr_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=100, lr=1e-2, warmup=0.1, lr_min=0.1)
    lrs = [config.learning_rate(s) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(1e-3)
    linear = TrainConfig(steps=100, lr=1.0, warmup=0.0, lr_schedule="linear", lr_min=0.0)
    assert linear.learning_rate(50) == pytest.approx(0.5)
    constant = TrainConfig(steps=10, lr=1e-3, warmup=0.0, lr_schedule="constant")
    assert constant.learning_rate(7) == 1e-3


def test_training_validates_logs_and_keeps_best(slides, tmp_path):
    out = tmp_path / "run"
    config = _config(
        slides, out, 4, val_every=2, checkpoint_every=1, keep_checkpoints=1, warmup=0.5
    )
    train(start_run(config, resume=False))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    vals = [r for r in rows if r.get("kind") == "val"]
    assert [r["step"] for r in vals] == [0, 2, 4]  # step 0: the untrained baseline
    for key in VAL_KEYS:
        assert 0.0 <= vals[-1][key] <= 1.0
    assert vals[0]["val_otsu_dice"] == vals[2]["val_otsu_dice"]  # Otsu: once, repeated
    steps = [r for r in rows if r.get("kind") != "val"]
    assert all("lr" in r for r in steps) and steps[0]["lr"] < steps[1]["lr"]  # warming up
    assert {p.name for p in (out / "val").glob("*.png")} == {"s1_overlay.png", "s2_overlay.png"}
    for row in vals:  # 0.5 is one of the cuts, so the chosen one scores at least as well
        assert row["val_threshold"] in THRESHOLDS and row["val_threshold_dice"] >= row["val_dice"]
    best = read_state(out / "checkpoints" / "best")
    scored = [  # each validation's raw and averaged weights: their tissue masks, own cuts
        (r[f"{prefix}_dice_post"], r["step"], weights, r[f"{prefix}_threshold"])
        for r in vals
        for weights, prefix in (("raw", "val"), ("ema", "val_ema"))
    ]
    top = max(d for d, *_ in scored)
    chosen = next(s for s in scored if s[0] == top)  # the first: ties keep the earlier, raw
    assert (best["val_dice"], best["step"], best["weights"], best["threshold"]) == chosen
    assert [p.name for p in list_checkpoints(out)] == ["step_0000004"]  # best is not pruned
    last = read_state(list_checkpoints(out)[-1])  # validated at its step: it carries the cut
    assert last["threshold"] == vals[-1]["val_threshold"]


def test_validation_chooses_the_threshold_with_the_best_pooled_dice():
    """Tissue at p 0.3, glass at p 0.1: every cut in (0.1, 0.3] is perfect, 0.5 finds nothing;
    of the perfect ones the nearest 0.5 is kept."""
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 10:45] = 1
    prob = np.where(mask > 0, 0.3, 0.1)
    counts = evaluate_thresholds(prob, mask, THRESHOLDS, block_hw=(16, 16))
    for t, c in zip(THRESHOLDS, counts, strict=True):  # one pass equals one pass per cut
        assert c == evaluate_pair(prob, mask, t, block_hw=(16, 16))
    assert best_threshold(counts) == (0.3, 1.0)
    assert counts[THRESHOLDS.index(0.5)].metrics()["dice"] == 0.0
    prob[mask > 0] = 0.9  # now 0.5 is among the perfect cuts, and the nearest to itself
    assert best_threshold(evaluate_thresholds(prob, mask, THRESHOLDS)) == (0.5, 1.0)
    prob[5, 10] = 0.3  # one tissue pixel only the low cuts find: not worth leaving 0.5 for
    threshold, dice = best_threshold(evaluate_thresholds(prob, mask, THRESHOLDS))
    assert threshold == 0.5 and 1.0 - THRESHOLD_TOLERANCE < dice < 1.0


def test_validation_scores_the_post_processed_mask_beside_the_raw_map(tmp_path):
    """Tissue whose fat the map calls glass, and a speck on the glass: the raw map loses Dice
    to both, the tissue mask (the defaults at 0.5 µm/px) to neither; no pixel size, no score."""
    mask = np.zeros((500, 600), np.uint8)
    mask[100:400, 100:500] = 1
    prob = np.where(mask > 0, 230, 10).astype(np.uint8)
    prob[200:300, 200:300] = 10  # 2,500 µm² of fat
    prob[10:14, 10:14] = 230  # a 4 µm² speck, farther from the tissue than the closing reaches
    image = np.zeros((500, 600, 3), np.uint8)
    raw = evaluate_pair(prob, mask).metrics()["dice"]
    validator = Validator([ValArea("a", image, mask, mpp=0.5)], tmp_path, None, None)
    assert raw < 0.99 and validator.post_dice([prob], 128) == 1.0
    validator = Validator([ValArea("a", image, mask)], tmp_path, None, None)
    assert validator.post_dice([prob], 128) is None


def test_validation_fills_large_holes_only_where_that_scores_better(tmp_path, monkeypatch):
    """A white space of 0.04 mm² inside tissue: beyond the small limit, within the default.
    Where the truth calls it tissue (fat), validation keeps the default and fills it; where
    the truth calls it glass (a bubble's inside, its rim taken for tissue), the small limit;
    with no such hole, a tie: the default."""
    # the hole filling alone: the default closing would also round off the square's corners
    no_closing = dataclasses.replace(validate.POSTPROCESS, closing_um=0.0)
    monkeypatch.setattr(validate, "POSTPROCESS", no_closing)
    default, small = FILL_CHOICES_UM2
    mpp = 2.0  # 4 µm² a pixel
    mask = np.zeros((300, 300), np.uint8)
    mask[20:280, 20:280] = 1
    prob = np.where(mask > 0, 230, 10).astype(np.uint8)
    prob[100:200, 100:200] = 10  # 40,000 µm²
    assert small < 100 * 100 * mpp**2 < default
    image = np.zeros((300, 300, 3), np.uint8)
    fat = Validator([ValArea("a", image, mask, mpp=mpp)], tmp_path, None, None)
    assert fat.best_fill([prob], 128) == (default, 1.0)
    gap = mask.copy()
    gap[100:200, 100:200] = 0
    glass = Validator([ValArea("a", image, gap, mpp=mpp)], tmp_path, None, None)
    assert glass.best_fill([prob], 128) == (small, 1.0)
    solid = np.where(mask > 0, 230, 10).astype(np.uint8)
    assert glass.best_fill([solid], 128)[0] == default  # no hole in the mask: a tie
    no_mpp = Validator([ValArea("a", image, mask)], tmp_path, None, None)
    assert no_mpp.best_fill([prob], 128) == (default, None)


def test_validation_cuts_where_the_tissue_mask_scores_best(tmp_path):
    """Faint noise on the glass at p 0.3-0.4, a pixel in 30: the map's best cut is low (it
    also finds a faint strip of tissue), where the noise costs the map little; the closing
    joins it into solid tissue, so the tissue mask chooses 0.5. Without the noise, the low
    cut's mask scores best and stays."""
    mask = np.zeros((600, 600), np.uint8)
    mask[100:500, 100:300] = 1
    prob = np.where(mask > 0, 230, 10).astype(np.uint8)
    prob[100:500, 280:300] = 90  # faint tissue at the edge: only cuts <= 0.35 find it
    clean = prob.copy()
    noise = np.random.default_rng(0).random(prob.shape) < 1 / 30
    prob[noise & (mask == 0) & (np.arange(600) > 350)[None, :]] = 90  # 0.35 on the glass
    image = np.zeros((600, 600, 3), np.uint8)
    validator = Validator([ValArea("a", image, mask, mpp=0.5)], tmp_path, None, None)
    map_cut, _ = best_threshold(evaluate_thresholds(prob, mask, THRESHOLDS))
    assert map_cut < 0.5  # the map alone would cut low
    cut, _, post = validator.best_mask([prob], map_cut)
    assert cut == 0.5 and post < 1.0
    low, _, low_post = validator.best_mask([clean], map_cut)
    assert low == map_cut and low_post == 1.0
    no_mpp = Validator([ValArea("a", image, mask)], tmp_path, None, None)
    assert no_mpp.best_mask([prob], map_cut)[::2] == (map_cut, None)


def test_midway_is_the_threshold_halfway_to_one_half():
    assert midway(0.3) == 0.4 and midway(0.1) == 0.3 and midway(0.7) == 0.6
    assert midway(0.35) == 0.45 and midway(0.45) == 0.5  # ties: the nearer 0.5
    assert midway(0.5) == 0.5
    assert all(midway(t) in THRESHOLDS for t in THRESHOLDS)


def test_validation_scores_the_mask_midway_between_its_cuts(tmp_path):
    """Glass noise at p 0.32 and a faint margin at p 0.42 along a piece's edge. The map's
    best cut passed in is 0.3: there the closing joins the noise into tissue; at 0.5 the
    margin is lost; midway, at 0.4, the mask keeps the margin without the noise and is
    chosen. Where the map's cut is 0.5 already, nothing else is scored."""
    mask = np.zeros((600, 600), np.uint8)
    mask[100:500, 100:300] = 1
    prob = np.where(mask > 0, 230, 10).astype(np.uint8)
    prob[100:500, 290:300] = 107  # p 0.42: above 0.4, below 0.5
    noise = np.random.default_rng(0).random(prob.shape) < 1 / 30
    prob[noise & (mask == 0) & (np.arange(600) > 350)[None, :]] = 82  # p 0.32
    image = np.zeros((600, 600, 3), np.uint8)
    validator = Validator([ValArea("a", image, mask, mpp=0.5)], tmp_path, None, None)
    cut, _, post = validator.best_mask([prob], 0.3)
    assert cut == 0.4 and post == 1.0
    assert validator.post_dice([prob], threshold_u8(0.3)) < post
    cut, _, post = validator.best_mask([prob], 0.5)
    assert cut == 0.5 and post < 1.0


def test_val_stores_are_scored_whole(slides, tmp_path):
    out = tmp_path / "run"
    train(start_run(_config(slides[:1], out, 1, val=(slides[1],)), resume=False))
    row = [json.loads(line) for line in (out / "metrics.jsonl").open()][-1]
    assert row["kind"] == "val" and set(row["val_slides"]) == {"s2"}


def test_predict_names_the_best_checkpoint(slides, tmp_path):
    out = tmp_path / "run"
    train(start_run(_config(slides[:1], out, 1), resume=False))
    runner = CliRunner()
    args = ["predict", str(out), slides[1], "--checkpoint", "best", "--quiet"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    chosen = read_state(out / "checkpoints" / "best")["threshold"]
    assert f"tissue at p >= {chosen:g}" in result.output
    assert _provenance(tmp_path / "p" / "s2.zarr")["threshold"] == chosen  # cut as validated
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "t"), "--threshold", "0.75"])
    assert result.exit_code == 0 and _provenance(tmp_path / "t" / "s2.zarr")["threshold"] == 0.75
    args[4] = "nonesuch"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "q")])
    assert result.exit_code != 0 and "no checkpoint 'nonesuch'" in result.output
    assert "best" in result.output  # it lists what exists


def _provenance(zarr_path) -> dict:
    return zarr.open_group(str(zarr_path), mode="r").attrs["provenance"]


def test_bad_quality_options_are_one_line_errors():
    for bad in (dict(val_every=0), dict(val_fraction=0.7), dict(lr_schedule="step")):
        with pytest.raises(ValueError, match="--"):
            TrainConfig(**bad).validate()


def test_each_slide_is_standardised_by_its_own_statistics(slides, tmp_path):
    """Training, validation and prediction use the same per-slide standardisation; a run
    trained with --no-normalize predicts with the raw model."""
    out = tmp_path / "run"
    run = start_run(_config(slides, out, 1, val_fraction=0.2), resume=False)
    norms = [s.norm for s in run.slides]
    assert norms[0] != norms[1] and not norms[0].is_identity
    assert [a.norm for a in run.validator.areas] == norms  # each strip: its slide's numbers
    train(run)
    assert run.model.input_norm in norms  # the loop set a region's slide's before its step
    assert json.loads((out / "config.json").read_text())["normalize"] is True

    def predicted(run_dir, name):
        args = ["predict", str(run_dir), slides[1], "--quiet", "--out", str(tmp_path / name)]
        assert CliRunner().invoke(app, args).exit_code == 0
        return np.asarray(zarr.open_group(str(tmp_path / name / "s2.zarr"), mode="r")["0"])

    backend, model = load_model(out)
    image = np.asarray(run.slides[1].image[0:320, 0:640])  # the whole slide
    model.input_norm = slide_norm(image)
    expected = tiled_predict(backend, model, image, 128)
    assert np.abs(predicted(out, "p").astype(np.int16) - np.rint(expected * 255)).max() <= 1

    raw = tmp_path / "raw"
    train(start_run(_config(slides, raw, 1, normalize=False), resume=False))
    backend, model = load_model(raw)
    assert model.input_norm.is_identity
    expected = tiled_predict(backend, model, image, 128)
    assert np.abs(predicted(raw, "q").astype(np.int16) - np.rint(expected * 255)).max() <= 1


def test_the_colour_table_is_built_without_a_large_transient():
    """The 64 MB table is built in slices: freed blocks stay in the process's heap (glibc,
    core.memory.keep_freed_memory), so whole-table temporaries (~500 MB) would stay in its RSS."""
    import tracemalloc

    jitter = draw_jitter(np.random.default_rng(5), 1.0)
    tracemalloc.start()
    try:
        table = lut32.__wrapped__(jitter)  # not the cached one: build it here
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert table.nbytes == 4 * 2**24
    assert peak_bytes < table.nbytes + 64 * 2**20
