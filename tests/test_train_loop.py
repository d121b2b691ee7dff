"""The training loop: checkpoints, bit-identical resume, Ctrl-C, non-finite loss."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
from factories import small_config

from gigamlx.runs.checkpoint import list_checkpoints, load_checkpoint
from gigamlx.train import loop
from gigamlx.train.loop import Interrupted, TrainingError, train
from gigamlx.train.run import start_run
from gigamlx.train.run_dir import RunDirError

# no colour jitter either: the cases here are about the loop (test_train_validate.py)
_config = partial(small_config, checkpoint_every=2, color_jitter=0.0)


def _weights(out) -> dict:
    """The newest checkpoint's weights and (as "ema/NAME") their moving average: a resumed
    run must match an uninterrupted one in both."""
    checkpoint = load_checkpoint(out)
    assert checkpoint.ema is not None  # on by default
    return checkpoint.weights | {f"ema/{n}": v for n, v in checkpoint.ema.items()}


def test_train_writes_metrics_and_checkpoints(slide, tmp_path):
    history = train(start_run(_config(slide, tmp_path / "run", 3), resume=False))
    assert [m.step for m in history] == [1, 2, 3]
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2, 3]
    keys = ("loss", "dice", "seconds", "read_seconds", "peak_engine_bytes", "engine_cache_bytes")
    for key in keys + ("peak_rss_bytes",):
        assert key in rows[0]
    assert rows[0]["tiles"] >= 6 and rows[0]["world_size"] == 1
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000002", "step_0000003"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["region"] == "256x320"


def test_resume_is_bit_identical_to_uninterrupted(slide, tmp_path):
    train(start_run(_config(slide, tmp_path / "straight", 4), resume=False))
    train(start_run(_config(slide, tmp_path / "split", 2), resume=False))
    train(start_run(_config(slide, tmp_path / "split", 2), resume=True, overrides={"steps": 4}))
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for name in straight:
        np.testing.assert_array_equal(straight[name], split[name])
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_existing_run_without_resume_is_refused(slide, tmp_path):
    train(start_run(_config(slide, tmp_path / "run", 1), resume=False))
    with pytest.raises(RunDirError, match="--resume"):
        start_run(_config(slide, tmp_path / "run", 2), resume=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(slide, tmp_path, monkeypatch):
    run = start_run(_config(slide, tmp_path / "run", 5), resume=False)
    real_step = loop.tiled_step

    def poisoned(*args, **kwargs):
        result = real_step(*args, **kwargs)
        if run.step == 2:  # the third step goes bad
            return result._replace(loss=float("nan"))
        return result

    monkeypatch.setattr(loop, "tiled_step", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step 3.*step_0000002"):
        train(run)
    assert load_checkpoint(tmp_path / "run").step == 2
    np.testing.assert_array_equal(
        run.backend.flat_params(run.model)["head.bias"], _weights(tmp_path / "run")["head.bias"]
    )


def test_ctrl_c_saves_and_resume_matches_uninterrupted(slide, tmp_path):
    """A real SIGINT mid-run: exit 130, the last completed step saved, resume bit-identical."""
    out = tmp_path / "interrupted"
    args = ["--region", "256x320", "--memory-budget", "300MB", "--lr", "0.01", "--tile", "128"]
    args += ["--val-fraction", "0", "--warmup", "0", "--lr-schedule", "constant"]
    args += ["--color-jitter", "0"]
    cmd = [sys.executable, "-m", "gigamlx.cli", "train", slide, *args, "--quiet"]
    child = subprocess.Popen([*cmd, "--steps", "400", "--out", str(out)], stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 130, stderr.decode()[-2000:]
    stopped = load_checkpoint(out).step
    assert 3 <= stopped < 400
    target = stopped + 2
    resumed = subprocess.run([*cmd, "--resume", "--steps", str(target), "--out", str(out)])
    assert resumed.returncode == 0
    train(
        start_run(
            replace(_config(slide, tmp_path / "straight", target), checkpoint_every=25), False
        )
    )
    straight, split = _weights(tmp_path / "straight"), _weights(out)
    for name in straight:
        np.testing.assert_array_equal(straight[name], split[name])
    assert os.path.exists(out / "config.json")


def test_ctrl_c_during_the_update_keeps_step_and_regions_together(slide, tmp_path, monkeypatch):
    """SIGINT raised inside the optimizer update only raises the stop flag: the step still
    counts, its regions stay drawn, so resuming ends exactly where an uninterrupted run does."""
    run = start_run(_config(slide, tmp_path / "run", 4), resume=False)
    real_apply = run.backend.apply_gradients

    def apply_then_interrupt(*args):
        real_apply(*args)
        if run.step == 1:  # inside the second update, before its step is counted
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(run.backend, "apply_gradients", apply_then_interrupt)
    with pytest.raises(Interrupted):
        train(run)
    assert load_checkpoint(tmp_path / "run").step == 2
    train(start_run(_config(slide, tmp_path / "run", 4), resume=True))
    train(start_run(_config(slide, tmp_path / "straight", 4), resume=False))
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "run")
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name])
