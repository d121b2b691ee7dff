"""The command line through typer's runner: a short training run, and every bad input the
user is likely to type, each a one-line error with a non-zero exit and nothing left behind."""

import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.core.geometry import Box
from gigamlx.runs.checkpoint import list_checkpoints
from gigamlx.runs.config import TrainConfig
from gigamlx.slide.writer import StoreWriter

runner = CliRunner()
SMALL = ["--region", "256x320", "--memory-budget", "300MB", "--tile", "128", "--quiet"]


@pytest.fixture(scope="module")
def slide(synth_store):
    return str(synth_store((400, 600), seed=2))


def _fails(args, message, code=2):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    return result


def test_cli_train_runs_and_checkpoints(slide, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", slide, *SMALL, "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "step_0000002" / "weights.safetensors").exists()
    kinds = [json.loads(x).get("kind", "step") for x in (out / "metrics.jsonl").open()]
    assert kinds == ["val", "step", "step", "val"]  # a held-out strip, validated by default
    assert (out / "checkpoints" / "best" / "weights.safetensors").exists()
    assert (out / "checkpoints" / "step_0000002" / "ema.safetensors").exists()
    assert "tissue mask Dice" in result.output and "on the same pixels): " in result.output
    assert f"gigamlx report {out}" in result.output


def test_cli_train_resume_extends_the_run(slide, tmp_path):
    out = str(tmp_path / "run")
    assert runner.invoke(app, ["train", slide, *SMALL, "--steps", "1", "--out", out]).exit_code == 0
    resume = ["train", "--resume", "--steps", "2", "--accumulate", "2", "--out", out, "--quiet"]
    result = runner.invoke(app, resume)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["steps"] == 2 and saved["accumulate"] == 2  # typed options win
    assert saved["region"] == "256x320"  # the rest comes from the checkpoint


def test_cli_missing_slide(tmp_path):
    _fails(
        ["train", str(tmp_path / "nope.zarr"), *SMALL, "--out", str(tmp_path / "r")],
        "no slide store",
    )


def test_cli_slide_file_needs_ingest(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8))
    _fails(["train", str(path), *SMALL, "--out", str(tmp_path / "r")], "gigamlx ingest")


def test_cli_store_without_mask(tmp_path):
    path = tmp_path / "nomask.zarr"
    with StoreWriter(path, (128, 128), 64, with_mask=False) as writer:
        writer.write_image(Box(0, 0, 128, 128), np.zeros((128, 128, 3), np.uint8))
        writer.finish()
    _fails(["train", str(path), *SMALL, "--out", str(tmp_path / "r")], "no tissue mask")


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--region", "16000by64000", "cannot read a region"),
        ("--memory-budget", "lots", "cannot read a memory size"),
        ("--memory-budget", "1MB", "too small"),
        ("--loss", "focal", "Invalid value for '--loss'"),  # typer's own: a Literal choice
        ("--lr", "-1", "--lr must be positive"),
    ],
)
def test_cli_bad_option_values(slide, tmp_path, option, value, message):
    args = ["train", slide, "--steps", "1", "--out", str(tmp_path / "r"), "--quiet"]
    if option != "--memory-budget":
        args += ["--memory-budget", "300MB"]
    _fails([*args, option, value], message)
    assert not (tmp_path / "r").exists()  # checked before the first file is written


def test_cli_region_larger_than_every_slide_without_padding(slide, tmp_path):
    args = ["train", slide, "--region", "4096x4096", "--no-pad", "--out", str(tmp_path / "r")]
    _fails(args, "larger than every slide")
    assert not (tmp_path / "r").exists()


def test_cli_budget_too_small_leaves_nothing_and_a_retry_runs(slide, tmp_path):
    out = tmp_path / "c4"
    args = ["train", slide, "--region", "256x256", "--steps", "1", "--quiet", "--out", str(out)]
    _fails([*args, "--memory-budget", "1KB"], "memory budget 1 KB is too small")
    assert not out.exists()
    result = runner.invoke(app, [*args, "--memory-budget", "300MB", "--tile", "128"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_checkpoints(out)] == ["step_0000001"]


@pytest.mark.parametrize("resume", [False, True])
def test_cli_run_without_checkpoint_is_taken_over(slide, tmp_path, resume):
    """What a run that failed before its first checkpoint leaves: config.json, val/ (its
    baseline overlays) and metrics lines. A retry, with or without --resume, takes it over."""
    out = tmp_path / "c4"
    (out / "val").mkdir(parents=True)
    (out / "val" / "s_overlay.png").write_bytes(b"")
    saved = dict(data=(slide,), region="256x320", steps=1, memory_budget="300MB", tile=128)
    (out / "config.json").write_text(json.dumps(TrainConfig(out=str(out), **saved).to_dict()))
    (out / "metrics.jsonl").write_text('{"step": 0, "kind": "val"}\n')
    again = ["--resume"] if resume else [slide, *SMALL, "--steps", "2"]
    result = runner.invoke(app, ["train", *again, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps the log line
    steps = 1 if resume else 2  # --resume: the saved config; a new run: the one typed
    whose = "its saved config" if resume else "the options given now"
    assert "holds no checkpoint (its run stopped before one): starting afresh from step 0 " in said
    assert f"from step 0 with {whose}" in said
    assert json.loads((out / "config.json").read_text())["steps"] == steps
    assert [p.name for p in list_checkpoints(out)] == [f"step_{steps:07d}"]


def test_cli_existing_out_without_resume(slide, tmp_path):
    out = str(tmp_path / "run")
    assert runner.invoke(app, ["train", slide, *SMALL, "--steps", "1", "--out", out]).exit_code == 0
    _fails(["train", slide, *SMALL, "--steps", "1", "--out", out], "--resume")


def test_cli_corrupt_checkpoint_on_resume(slide, tmp_path):
    out = tmp_path / "run"
    assert (
        runner.invoke(app, ["train", slide, *SMALL, "--steps", "1", "--out", str(out)]).exit_code
        == 0
    )
    (out / "checkpoints" / "step_0000001" / "weights.safetensors").write_bytes(b"garbage")
    _fails(["train", "--resume", "--out", str(out)], "is damaged")


def test_cli_synth_and_info(tmp_path):
    result = runner.invoke(
        app, ["synth", str(tmp_path / "x.zarr"), "--size", "200x300", "--seed", "4"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.zarr").exists()
    info = runner.invoke(app, ["info"])
    assert info.exit_code == 0 and "4492" in info.output


def test_cli_ingest_bad_geojson(tmp_path):
    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128))
    bad = tmp_path / "points.geojson"
    bad.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    _fails(["ingest", str(slide), str(tmp_path / "o.zarr"), "--geojson", str(bad)], "olygon")
    assert not (tmp_path / "o.zarr").exists()


def test_cli_ingest_unreadable_slide(tmp_path):
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all")
    _fails(["ingest", str(junk), str(tmp_path / "o.zarr")], "junk.svs")
