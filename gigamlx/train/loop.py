"""The training loop: per step, draw regions, exact tiled gradients, one Adam update.

The loop reads top to bottom: `train` runs steps until the target, checkpointing every few;
Ctrl-C saves the last completed step; a non-finite loss stops without touching the weights.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from gigamlx.backends.base import FlatParams, World, WorldError
from gigamlx.core.checkpoint import list_checkpoints
from gigamlx.core.losses import TileStats, hard_dice
from gigamlx.core.memory import peak_rss_bytes
from gigamlx.tiling.scheduler import tiled_step
from gigamlx.train.regions import RegionView
from gigamlx.train.run import Run, save_best, save_run

log = logging.getLogger(__name__)
TileProgress = Callable[[str, int, int], None]


class TrainingError(RuntimeError):
    """Training stopped; the message says why and where the last good checkpoint is."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the last completed step was saved."""

    def __init__(self, step: int, checkpoint):
        super().__init__(f"interrupted after step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class StepMetrics(NamedTuple):
    step: int
    loss: float
    dice: float  # hard Dice of this step's regions at 0.5
    seconds: float
    read_seconds: float
    read_wait_seconds: float  # compute stalled on reads (prefetch overlaps the rest)
    forward_seconds: float  # Dice pass 1
    update_seconds: float  # optimizer
    peak_engine_bytes: int
    peak_rss_bytes: int
    tile_hw: tuple[int, int]
    tiles: int
    regions: int
    world_size: int
    lr: float  # the learning rate of this step's update


def train_step(run: Run, world: World, tile_progress: TileProgress | None = None) -> StepMetrics:
    """One optimizer step on `accumulate` regions per rank; returns its metrics."""
    start = time.perf_counter()
    config = run.config
    share = config.accumulate
    regions = run.sampler.draw(share * world.size)[world.rank * share : (world.rank + 1) * share]
    grads: FlatParams = {}
    losses, stats, results = [], TileStats(), []
    for region in regions:
        slide = run.slides[region.slide]
        image = RegionView(slide.image, region, region.color)
        mask = RegionView(slide.mask, region)
        result = tiled_step(
            run.backend,
            run.model,
            image,
            mask,
            config.loss,
            config.tile,
            config.budget_bytes,
            tile_progress,
        )
        for name, g in result.grads.items():
            grads[name] = grads.get(name, 0.0) + g / share
        losses.append(result.loss)
        stats = stats + result.stats
        results.append(result)
    # one collective: the mean loss and the Dice sums over every rank's regions
    loss_sum, *stat_sums = world.sum((float(np.mean(losses)), *stats))
    loss, stats = loss_sum / world.size, TileStats(*stat_sums)
    grads = world.mean_grads(grads)
    _check_finite(run, loss, grads)
    update_start = time.perf_counter()
    lr = config.learning_rate(run.step + 1)  # from the config every step: resume just works
    run.backend.set_learning_rate(run.optimizer, lr)
    with _interrupt_deferred():  # the update and its count land together or not at all
        run.backend.apply_gradients(run.model, run.optimizer, grads)
        run.step += 1
    now = time.perf_counter()
    return StepMetrics(
        step=run.step,
        loss=loss,
        dice=hard_dice(stats),
        seconds=now - start,
        read_seconds=sum(r.read_seconds for r in results),
        read_wait_seconds=sum(r.read_wait_seconds for r in results),
        forward_seconds=sum(r.forward_seconds for r in results),
        update_seconds=now - update_start,
        peak_engine_bytes=max(r.peak_bytes for r in results),
        peak_rss_bytes=peak_rss_bytes(),
        tile_hw=results[0].plan.tile_hw,
        tiles=sum(len(r.plan.tiles) for r in results),
        regions=len(regions),
        world_size=world.size,
        lr=lr,
    )


@contextmanager
def _interrupt_deferred():
    """Hold Ctrl-C (SIGINT) back until the block ends, on the main thread where POSIX allows.

    A Ctrl-C between the optimizer update and the step count would save weights one step
    ahead of the sampler state; deferred, it arrives just after and the step is whole.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _check_finite(run: Run, loss: float, grads: FlatParams) -> None:
    if math.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values()):
        return
    raise TrainingError(
        f"loss is {loss} at step {run.step + 1}: stopped before updating the weights; "
        f"{_last_good(run)}. "
        "Lower --lr, or check the slides for empty or corrupt regions."
    )


def train(
    run: Run,
    world: World | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
    tile_progress: TileProgress | None = None,
    on_val: Callable[[dict], None] | None = None,
) -> list[StepMetrics]:
    """Train `run` to `run.config.steps`, writing metrics and checkpoints (rank 0 only).

    Before the first step of a fresh run (the untrained baseline), every `val_every` steps and
    at the end, rank 0 validates (when the run has validation areas), logs a "val" line, calls
    `on_val(line)` and keeps the best weights as `best`.

    Every rank applies the same averaged gradient to the same weights; that is checked before
    the first step and after every step, and ranks that disagree or lose each other stop with
    a TrainingError.
    """
    world = world or World.single()
    history = []
    saved_step = run.step
    start = time.perf_counter()
    try:
        _check_same_weights(run, world)
        if world.is_main and run.validator is not None and run.step == 0:
            _validate(run, 0.0, on_val)
        while run.step < run.config.steps:
            before, before_step = run.sampler.state(), run.step
            try:
                metrics = train_step(run, world, tile_progress)
            except KeyboardInterrupt:
                if run.step == before_step:  # no update: its regions are redrawn on resume
                    run.sampler.restore(before)
                raise
            _check_same_weights(run, world)
            history.append(metrics)
            if world.is_main:
                _append_metrics(run, metrics)
            if on_step:
                on_step(metrics)
            if world.is_main and _validation_due(run):
                _validate(run, time.perf_counter() - start, on_val)
            if run.step % run.config.checkpoint_every == 0 or run.step == run.config.steps:
                if world.is_main:
                    save_run(run)
                saved_step = run.step
    except KeyboardInterrupt:
        path = save_run(run) if world.is_main and run.step != saved_step else None
        raise Interrupted(run.step, path or _newest(run)) from None
    except WorldError as error:
        raise TrainingError(f"{error}; {_last_good(run)}") from error
    return history


def _validation_due(run: Run) -> bool:
    c = run.config
    return run.validator is not None and (run.step % c.val_every == 0 or run.step == c.steps)


def _validate(run: Run, seconds: float, on_val: Callable[[dict], None] | None) -> None:
    """Score the validation areas, log the line, keep the best weights."""
    row = run.validator(run.backend, run.model, run.step, seconds)
    with open(run.metrics_path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    if row["val_dice"] > run.best_val_dice:
        save_best(run, row["val_dice"])
    if on_val:
        on_val(row)


def _check_same_weights(run: Run, world: World) -> None:
    """One tiny collective: every rank holds the same step and weights (bit for bit)."""
    if world.size == 1:
        return
    weights = run.backend.flat_params(run.model)
    payload = [str(run.step).encode()] + [
        np.ascontiguousarray(weights[n]).tobytes() for n in sorted(weights)
    ]
    world.check_same(f"the weights after step {run.step}", b"".join(payload))


def _last_good(run: Run) -> str:
    saved = list_checkpoints(run.run_dir)
    return f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"


def _newest(run: Run):
    saved = list_checkpoints(run.run_dir)
    return saved[-1] if saved else None


def _append_metrics(run: Run, metrics: StepMetrics) -> None:
    row = metrics._asdict() | {"tile_hw": list(metrics.tile_hw)}
    with open(run.metrics_path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
