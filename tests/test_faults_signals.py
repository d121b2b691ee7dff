"""Faults from outside the process (issue 10): stop signals at random points in a real run,
double Ctrl-C, a signal between tiles or during the save, and two processes on one run
folder or one prediction output."""

import os
import random
import signal
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
from factories import small_config
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.runs.checkpoint import list_checkpoints, load_checkpoint
from gigamlx.runs.lock import LockError, hold_lock
from gigamlx.train import run as run_module
from gigamlx.train.loop import Interrupted, train
from gigamlx.train.run import start_run
from gigamlx.train.stop import stop_on_signals

runner = CliRunner()
STEPS = 8
ARGS = ["--region", "256x320", "--memory-budget", "300MB", "--lr", "0.01", "--tile", "128"]
ARGS += ["--val-fraction", "0", "--warmup", "0", "--lr-schedule", "constant"]  # as _config
CLI = [sys.executable, "-m", "gigamlx.cli"]
_config = partial(small_config, steps=STEPS)  # these cases are about faults


@pytest.fixture(scope="module")
def straight(slide, tmp_path_factory):
    """Weights of an uninterrupted run of STEPS steps."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(start_run(_config(slide, out), resume=False))
    return _state(out)


def _state(out) -> dict:
    """The newest checkpoint's weights and (as "ema/NAME") their moving average."""
    checkpoint = load_checkpoint(out)
    return checkpoint.weights | {f"ema/{n}": v for n, v in checkpoint.ema.items()}


def _assert_same(expected: dict, out) -> None:
    actual = _state(out)
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def _wait_for_steps(out, steps: int, child, timeout_s: float = 60) -> None:
    metrics, deadline = out / "metrics.jsonl", time.time() + timeout_s
    while time.time() < deadline and child.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach step {steps} (exit code {child.poll()})")


SIGNALS = {
    "sigterm": ([signal.SIGTERM], 143),
    "sighup": ([signal.SIGHUP], 129),
    "double-sigint": ([signal.SIGINT, signal.SIGINT, signal.SIGINT], 130),
}


@pytest.mark.parametrize("trial", [1, 2])
@pytest.mark.parametrize("kind", sorted(SIGNALS))
def test_signal_at_a_random_point_saves_and_resumes_bit_identical(
    slide, straight, tmp_path, kind, trial
):
    """Signals land between steps, between tiles or during a save (checkpoints every 2 steps);
    each run exits 128 + signal with a resumable folder, and resuming ends on the weights of
    the uninterrupted run."""
    rng = random.Random(f"{kind}-{trial}")
    signums, code = SIGNALS[kind]
    out = tmp_path / "run"
    cmd = [*CLI, "train", slide, *ARGS, "--quiet", "--checkpoint-every", "2", "--out", str(out)]
    child = subprocess.Popen([*cmd, "--steps", str(STEPS)], stderr=subprocess.PIPE)
    _wait_for_steps(out, rng.randint(1, 3), child)
    time.sleep(rng.uniform(0, 0.2))
    for signum in signums:
        child.send_signal(signum)
        time.sleep(rng.uniform(0, 0.01))  # a second Ctrl-C within 10 ms
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == code, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode() and "Continue with --resume" in stderr.decode()
    stopped = load_checkpoint(out).step
    assert 1 <= stopped < STEPS
    resumed = subprocess.run([*CLI, "train", "--resume", "--out", str(out), "--quiet"])
    assert resumed.returncode == 0
    _assert_same(straight, out)


def test_signal_between_tiles_drops_the_step(slide, straight, tmp_path):
    """SIGHUP after the 3rd tile of step 3: the step is dropped, step 2 saved, resume exact."""
    run = start_run(_config(slide, tmp_path / "run", checkpoint_every=25), resume=False)

    def on_tile(phase: str, done: int, total: int) -> None:
        if run.step == 2 and phase == "backward" and done == 3:
            os.kill(os.getpid(), signal.SIGHUP)

    with pytest.raises(Interrupted) as stop:
        train(run, tile_progress=on_tile)
    assert stop.value.signum == signal.SIGHUP and stop.value.step == 2
    assert load_checkpoint(tmp_path / "run").step == 2
    train(start_run(_config(slide, tmp_path / "run"), resume=True))
    _assert_same(straight, tmp_path / "run")


def test_second_signal_during_the_save_waits_for_it(slide, tmp_path, monkeypatch):
    run = start_run(_config(slide, tmp_path / "run", checkpoint_every=25), resume=False)
    real_save = run_module.save_checkpoint

    def save_with_signals(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # handled as the save runs: nothing is cut short
        path = real_save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return path

    def on_step(metrics) -> None:
        if metrics.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(run_module, "save_checkpoint", save_with_signals)
    with pytest.raises(Interrupted) as stop:
        train(run, on_step=on_step)
    assert stop.value.signum == signal.SIGTERM  # the first signal names the stop
    assert load_checkpoint(tmp_path / "run").step == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def _holder(lock_args: str, tmp_path):
    """A child process holding a gigamlx lock until killed; returns it once it holds it."""
    ready = tmp_path / "ready"
    code = (
        f"import time, pathlib; {lock_args[0]}\n"
        f"with {lock_args[1]}:\n"
        f"    pathlib.Path({str(ready)!r}).write_text('1'); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.02)
    return child


@pytest.mark.parametrize("resume", [False, True])
def test_second_training_process_on_one_run_folder_fails(slide, tmp_path, resume):
    out = tmp_path / "run"
    lock = ("from gigamlx.train.run_dir import run_lock", f"run_lock({str(out)!r})")
    child = _holder(lock, tmp_path)
    try:
        args = ["train", "--resume"] if resume else ["train", slide, *ARGS]
        result = runner.invoke(app, [*args, "--steps", "1", "--out", str(out), "--quiet"])
    finally:
        child.kill()
        child.wait()
    assert result.exit_code == 1, result.output
    assert f"in use by process {child.pid}" in result.output and "Traceback" not in result.output
    assert not list_checkpoints(out)
    ok = runner.invoke(app, ["train", slide, *ARGS, "--steps", "1", "--out", str(out), "--quiet"])
    assert ok.exit_code == 0, ok.output  # a killed holder leaves no stale lock
    assert {p.name for p in out.iterdir()} == {"checkpoints", "config.json", "metrics.jsonl"}


def test_second_predict_on_one_output_fails(slide, tmp_path):
    train(start_run(_config(slide, tmp_path / "run", steps=1), resume=False))
    zarr = tmp_path / "pred" / "s.zarr"
    lock = (
        "from gigamlx.infer.predict import lock_output",
        f"lock_output(pathlib.Path({str(zarr)!r}))",
    )
    child = _holder(lock, tmp_path)
    args = ["predict", str(tmp_path / "run"), slide, "--out", str(tmp_path / "pred"), "--quiet"]
    try:
        result = runner.invoke(app, args)
    finally:
        child.kill()
        child.wait()
    assert result.exit_code == 1, result.output
    assert f"in use by process {child.pid}" in result.output and str(zarr) in result.output
    assert not zarr.exists()
    assert runner.invoke(app, args).exit_code == 0 and zarr.exists()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with hold_lock(tmp_path / ".lock", "thing"):
        with pytest.raises(LockError, match=f"thing is in use by process {os.getpid()}"):
            with hold_lock(tmp_path / ".lock", "thing"):
                pass
    assert not (tmp_path / ".lock").exists()


def test_signal_before_training_stops_at_once(slide, tmp_path, monkeypatch):
    """SIGTERM while the run starts (slides opening): exit 143 at once, and the folder, with
    no checkpoint, starts afresh next time."""
    from gigamlx.train import session

    real_open = session.open_run

    def open_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_open(*args, **kwargs)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(session, "open_run", open_then_signal)
    out = str(tmp_path / "run")
    try:
        result = runner.invoke(app, ["train", slide, *ARGS, "--steps", "1", "--out", out])
    finally:  # the command keeps its handlers after a stop (it would exit next)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert result.exit_code == 143, result.output
    assert "SIGTERM outside the training loop; nothing to save" in result.output
    monkeypatch.undo()
    again = runner.invoke(app, ["train", slide, *ARGS, "--steps", "1", "--out", out, "--quiet"])
    assert again.exit_code == 0, again.output


def test_a_stopped_command_ignores_late_signals_until_it_exits():
    """After a stop, late signals are ignored with SIG_IGN: a Python handler would be reset to
    the default while the interpreter shuts down, and a late Ctrl-C then killed the process
    (exit -2) instead of letting it exit 130 after its save."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with stop_on_signals(deferring=True, keep_after_stop=True) as flag:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert flag.raised
        assert {signal.getsignal(s) for s in handlers} == {signal.SIG_IGN}
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
