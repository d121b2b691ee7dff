"""The run's one rich progress bar: steps with loss, Dice, s/step, peak memory and the time
left (validations included), the last validation Dice, plus the tiles of the step in flight (a
16000x64000 step is minutes of tiles). After the session's first steps one line says how long
the run will take and when it ends."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from gigamlx.train.eta import ANNOUNCE_AFTER_STEPS, Forecast
from gigamlx.train.loop import StepMetrics

log = logging.getLogger(__name__)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class TrainProgress:
    """Callbacks for `train`: `on_step` after each step, `on_tile` inside a step."""

    def __init__(self, progress: Progress, first_step: int, total_steps: int, forecast: Forecast):
        self.progress, self.forecast = progress, forecast
        self.steps = progress.add_task(
            "train", total=total_steps, completed=first_step, info="", eta=""
        )
        self.tiles = progress.add_task("  tiles", total=1, info="", visible=False)
        self.first_val: dict | None = None
        self.last_val: dict | None = None

    def on_tile(self, phase: str, done: int, total: int) -> None:
        self.progress.update(self.tiles, completed=done, total=total, info=phase, visible=True)

    def on_val(self, row: dict) -> None:
        self.first_val = self.first_val or row
        self.last_val = row
        self.forecast.validated()
        self.progress.update(self.steps, eta=self.forecast.short())

    def on_step(self, m: StepMetrics) -> None:
        # short enough for 80 columns; the metrics log has every field
        info = f"loss {m.loss:.4f} dice {m.dice:.3f} {m.seconds:.1f} s/step "
        if self.last_val is not None:
            info += f"val {self.last_val['val_dice']:.3f}"
        else:
            info += f"RSS {_gb(m.peak_rss_bytes)}"
        self.forecast.stepped(m.step)
        self.progress.update(self.steps, completed=m.step, info=info, eta=self.forecast.short())
        self.progress.update(self.tiles, visible=False)
        if (
            len(self.forecast.step_seconds) == ANNOUNCE_AFTER_STEPS
            and m.step < self.forecast.total_steps
        ):
            log.info("%s", self.forecast.line())


@contextmanager
def train_progress(
    first_step: int,
    total_steps: int,
    enabled: bool = True,
    console: Console | None = None,
    val_every: int | None = None,
    forecast: Forecast | None = None,
):
    """Yields TrainProgress; the bar is drawn only when `enabled` (rank 0, not --quiet).

    Args:
        val_every: steps between validations, None when the run has none (for the time left).
        forecast: the time-left arithmetic (a test passes one on a fake clock).
    """
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[info]}"),
    )
    forecast = forecast or Forecast(total_steps, val_every)
    with Progress(*columns, console=console, disable=not enabled) as progress:
        yield TrainProgress(progress, first_step, total_steps, forecast)
