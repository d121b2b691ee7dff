"""How long a run has left: the mean wall time of a step since warm-up, plus the validations
still to come at their measured length. Pure arithmetic over an injected clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

ANNOUNCE_AFTER_STEPS = 3  # the session's first step warms up; two more give a rate


def validations_left(first_step: int, total_steps: int, val_every: int | None) -> int:
    """Validations after steps first_step..total_steps: every `val_every`-th and the last."""
    if not val_every or first_step > total_steps:
        return 0
    extra = 1 if total_steps % val_every else 0  # the end is validated even off the beat
    return total_steps // val_every - (first_step - 1) // val_every + extra


def duration(seconds: float) -> str:
    """'45 s', '2.5 min', '12 min', '3.5 h', '33 h', '2.5 days': a rounded length of time."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 10 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 10:
        return f"{hours:.1f} h"
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.1f} days"


class Forecast:
    """Feed it each finished step and validation; it says when the run will end.

    Step times are wall time between steps (checkpoints included) less any validation in
    between; the session's first step (warm-up) counts only while it is the only one.

    Args:
        total_steps: the run's target step.
        val_every: steps between validations; None when the run does not validate.
        clock: monotonic seconds (time.monotonic); now: the wall-clock date (datetime.now).
    """

    def __init__(
        self,
        total_steps: int,
        val_every: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ):
        self.total_steps, self.val_every = total_steps, val_every
        self.clock, self.now = clock, now
        self.step: int | None = None
        self.step_seconds: list[float] = []
        self.val_seconds: float | None = None  # the latest validation's length
        self._validated_step: int | None = None
        self._mark = self._last_step = clock()
        self._val_since_step = 0.0

    def stepped(self, step: int) -> None:
        now = self.clock()
        self.step_seconds.append(now - self._last_step - self._val_since_step)
        self.step, self._mark, self._last_step, self._val_since_step = step, now, now, 0.0

    def validated(self) -> None:
        now = self.clock()
        self.val_seconds = now - self._mark
        self._val_since_step += self.val_seconds
        self._mark, self._validated_step = now, self.step

    def validations_left(self) -> int:
        """Those still to run: the current step's own comes after the step is reported."""
        done = self._validated_step == self.step
        return validations_left(self.step + done, self.total_steps, self.val_every)

    def seconds_per_step(self) -> float | None:
        timed = self.step_seconds[1:] or self.step_seconds
        return sum(timed) / len(timed) if timed else None

    def seconds_left(self) -> float | None:
        """Steps left times the step time, plus validations left times the last one's length."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        left = (self.total_steps - self.step) * per_step
        return left + self.validations_left() * (self.val_seconds or 0.0)

    def short(self) -> str:
        """For the progress bar: '~33 h left', or '' before the first step."""
        left = self.seconds_left()
        return "" if left is None else f"~{duration(left)} left"

    def line(self) -> str:
        """'step 3/5000 · 23.9 s/step + 50 validations of 2 min · about 33 h to go (ends ~14:05
        Tue)'; call after a step."""
        per_step, left = self.seconds_per_step(), self.seconds_left()
        rate = f"{per_step:.1f} s/step" if per_step >= 1 else f"{per_step:.2f} s/step"
        vals = self.validations_left()
        if vals:
            each = (
                "(not timed yet)"
                if self.val_seconds is None
                else f"of {duration(self.val_seconds)}"
            )
            rate += f" + {vals} validation{'s' * (vals > 1)} {each}"
        end = self.now() + timedelta(seconds=left)
        when = end.strftime("%H:%M %a" if left < 6 * 86400 else "%H:%M %a %d %b")
        return (
            f"step {self.step}/{self.total_steps} · {rate} · about {duration(left)} to go "
            f"(ends ~{when})"
        )
