"""Time left of a training run on a fake clock: step rate after warm-up, validations to come at
their measured length, the one forecast line after the session's third step, and the CLI."""

import logging
from datetime import datetime

import pytest
from typer.testing import CliRunner

from gigamlx.train.eta import Forecast, duration, validations_left
from gigamlx.train.loop import StepMetrics
from gigamlx.train.progress import train_progress

MONDAY_3AM = datetime(2026, 1, 5, 3, 0)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float) -> None:
        self.t += seconds


def _metrics(step: int) -> StepMetrics:
    numbers = dict.fromkeys(StepMetrics._fields, 0)
    return StepMetrics(**numbers | {"step": step, "tile_hw": (128, 128), "compute_path": "x"})


@pytest.mark.parametrize(
    ("first", "total", "every", "expected"),
    [(1, 5000, 100, 50), (3, 10, 3, 4), (4, 10, 3, 3), (10, 10, 3, 1), (11, 10, 3, 0)],
)
def test_validations_left_counts_the_beat_and_the_end(first, total, every, expected):
    # (3, 10, 3): steps 3, 6, 9 and the final 10; (4, 10, 3): 6, 9, 10
    assert validations_left(first, total, every) == expected
    assert validations_left(first, total, None) == 0


def test_duration_units():
    assert [duration(s) for s in (45, 150, 720, 3 * 3600 + 1800, 33 * 3600, 60 * 3600)] == [
        "45 s",
        "2.5 min",
        "12 min",
        "3.5 h",
        "33 h",
        "2.5 days",
    ]


def test_forecast_fresh_run_with_validation():
    clock = FakeClock()
    forecast = Forecast(5000, val_every=100, clock=clock, now=lambda: MONDAY_3AM)
    clock.tick(90.0)  # the untrained baseline validation
    forecast.validated()
    for seconds, step in ((40.0, 1), (24.0, 2), (23.8, 3)):  # step 1 warms up: not counted
        clock.tick(seconds)
        forecast.stepped(step)
    assert forecast.seconds_per_step() == pytest.approx(23.9)
    # 4997 steps at 23.9 s plus 50 validations (100, 200, ..., 5000) at 90 s
    assert forecast.seconds_left() == pytest.approx(4997 * 23.9 + 50 * 90)  # 34.4 h
    assert forecast.line() == (
        "step 3/5000 · 23.9 s/step + 50 validations of 1.5 min · about 34 h to go (ends ~13:25 Tue)"
    )
    assert forecast.short() == "~34 h left"


def test_forecast_takes_validation_out_of_the_step_rate():
    clock = FakeClock()
    forecast = Forecast(10, val_every=2, clock=clock, now=lambda: MONDAY_3AM)
    clock.tick(5.0)
    forecast.stepped(1)  # warm-up
    clock.tick(2.0)
    forecast.stepped(2)
    assert forecast.validations_left() == 5  # 2 (after this step is reported), 4, 6, 8, 10
    clock.tick(30.0)  # validation at step 2
    forecast.validated()
    assert forecast.validations_left() == 4
    clock.tick(1.0)  # the save of a checkpoint
    clock.tick(2.0)
    forecast.stepped(3)
    assert forecast.step_seconds == [5.0, 2.0, 3.0]
    assert forecast.seconds_left() == pytest.approx(7 * 2.5 + 4 * 30.0)


def test_forecast_resumed_run_before_any_validation():
    clock = FakeClock()
    forecast = Forecast(301, val_every=50, clock=clock, now=lambda: MONDAY_3AM)
    for step in (201, 202, 203):
        clock.tick(0.5)
        forecast.stepped(step)
    assert forecast.line() == (  # 250, 300 and the final 301 are validated
        "step 203/301 · 0.50 s/step + 3 validations (not timed yet) · about 49 s to go "
        "(ends ~03:00 Mon)"
    )


def test_progress_logs_the_forecast_once_after_the_third_step(caplog):
    clock = FakeClock()
    forecast = Forecast(8, val_every=4, clock=clock, now=lambda: MONDAY_3AM)
    with caplog.at_level(logging.INFO), train_progress(0, 8, False, forecast=forecast) as bar:
        clock.tick(60.0)
        bar.on_val({"val_dice": 0.1, "step": 0})
        for step in range(1, 9):
            clock.tick(10.0)
            bar.on_step(_metrics(step))
            lines = [r.getMessage() for r in caplog.records if "to go" in r.getMessage()]
            assert len(lines) == (step >= 3)
            if step % 4 == 0:
                clock.tick(60.0)
                bar.on_val({"val_dice": 0.2, "step": step})
        eta = bar.progress.tasks[bar.steps].fields["eta"]
    # after step 3: 5 steps at 10 s and validations at steps 4 and 8 at 60 s each
    expected = (
        "step 3/8 · 10.0 s/step + 2 validations of 60 s · about 2.8 min to go (ends ~03:02 Mon)"
    )
    assert lines == [expected]
    assert eta == "~0 s left"


def test_cli_train_prints_the_forecast(tmp_path):
    from gigamlx.cli import app
    from gigamlx.synth.slide import synth_slide

    slide = str(synth_slide(tmp_path / "s.zarr", (400, 600), seed=2))
    small = ["--region", "256x320", "--memory-budget", "300MB", "--tile", "128", "--quiet"]
    out = str(tmp_path / "run")
    args = ["train", slide, *small, "--steps", "4", "--val-every", "2", "--out", out]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the log handler wraps at the terminal's width
    assert "step 3/4 · " in text and "s/step + 1 validation of " in text and "(ends ~" in text
    assert text.count(" to go ") == 1


def test_the_bar_draws_with_the_tiles_row_shown():
    """Every row of the bar has the fields its columns name (the tiles row lacked `eta`, and
    rich's refresh thread died with a KeyError the first time a step's tiles were drawn)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with train_progress(0, 10, console=console) as bar:
        bar.on_tile("pass 1", 1, 4)
        bar.progress.refresh()
    assert "pass 1" in console.file.getvalue()
