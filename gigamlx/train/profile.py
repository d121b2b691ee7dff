"""Where the seconds of a training step went: read, Dice pass 1, pass 2, optimizer, rest."""

from __future__ import annotations

import statistics

from rich.console import Console
from rich.table import Table

from gigamlx.train.loop import StepMetrics


def profile_rows(history: list[StepMetrics]) -> list[tuple[str, float]]:
    """Median seconds per phase over the steps (reads overlap compute when prefetched)."""

    def median(values) -> float:
        return statistics.median(values) if values else 0.0

    step = median([m.seconds for m in history])
    read = median([m.read_seconds for m in history])
    waited = median([m.read_wait_seconds for m in history])
    forward = median([m.forward_seconds for m in history])
    update = median([m.update_seconds for m in history])
    backward = max(step - forward - update, 0.0)
    return [
        ("read windows (prefetch thread, overlapped)", read),
        ("  of which compute waited for", waited),
        ("pass 1: forward sums (Dice)", forward),
        ("pass 2: forward + backward", backward),
        ("optimizer update", update),
        ("step total", step),
    ]


def print_profile(history: list[StepMetrics], console: Console) -> None:
    table = Table(title=f"median over {len(history)} steps")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    total = profile_rows(history)[-1][1] or 1.0
    for name, seconds in profile_rows(history):
        table.add_row(name, f"{seconds:.2f}", f"{100 * seconds / total:.0f}%")
    console.print(table)
