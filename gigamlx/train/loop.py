"""The training loop: per step, draw regions, exact tiled gradients, one Adam update.

The loop reads top to bottom: `train` runs steps until the target, checkpointing every few;
SIGINT, SIGTERM or SIGHUP (train/stop.py) save the last completed step; a non-finite loss
stops without touching the weights.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from gigamlx.backends.base import FlatParams, World, WorldError
from gigamlx.core.losses import TileStats, hard_dice
from gigamlx.core.memory import peak_rss_bytes
from gigamlx.core.progress import Progress
from gigamlx.runs.checkpoint import list_checkpoints
from gigamlx.runs.outputs import name_the_path
from gigamlx.tiling.scheduler import tiled_step
from gigamlx.train.regions import region_view
from gigamlx.train.run import Run, save_best, save_run
from gigamlx.train.stop import StopFlag, Stopped, stop_on_signals
from gigamlx.train.validate import best_choice, raw_choice

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training stopped; the message says why and where the last good checkpoint is."""


class Interrupted(Stopped):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP): the last completed step was saved."""

    def __init__(self, step: int, checkpoint, signum: int = signal.SIGINT):
        name = signal.Signals(signum).name
        super().__init__(f"{name} after step {step}; saved {checkpoint}", signum)
        self.step, self.checkpoint = step, checkpoint


class _StepAbandoned(Exception):
    """A stop signal arrived between tiles: the step is dropped, its update never applied."""


class StepMetrics(NamedTuple):
    step: int
    loss: float
    dice: float  # hard Dice of this step's regions at 0.5
    seconds: float
    read_seconds: float
    read_wait_seconds: float  # compute stalled on reads (prefetch overlaps the rest)
    forward_seconds: float  # Dice pass 1
    update_seconds: float  # optimizer
    peak_engine_bytes: int  # active bytes
    engine_cache_bytes: int  # freed buffers the engine keeps for reuse: held on top of active
    peak_rss_bytes: int
    tile_hw: tuple[int, int]
    tiles: int
    regions: int
    world_size: int
    compute_path: str  # the backend's model path: "fused", "mlx", "torch-cuda", ...
    lr: float  # the learning rate of this step's update


def train_step(run: Run, world: World, tile_progress: Progress | None = None) -> StepMetrics:
    """One optimizer step on `accumulate` regions per rank; returns its metrics."""
    start = time.perf_counter()
    config = run.config
    share = config.accumulate
    regions = run.sampler.draw(share * world.size)[world.rank * share : (world.rank + 1) * share]
    grads: FlatParams = {}
    losses, stats, results = [], TileStats(), []
    for region in regions:
        slide = run.slides[region.slide]
        run.model.input_norm = slide.norm
        turner = run.backend.window_turner
        image = region_view(slide.image, region, region.color, turner, region.light)
        mask = region_view(slide.mask, region, turner=turner)
        result = tiled_step(
            run.backend,
            run.model,
            image,
            mask,
            loss=config.loss,
            tile=config.tile,
            budget_bytes=config.budget_bytes,
            progress=tile_progress,
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
    # from the config at every step (as nanoGPT does): a resumed run's --lr and schedule win
    # over the learning rate saved with the optimizer state
    lr = config.learning_rate(run.step + 1)
    run.backend.set_learning_rate(run.optimizer, lr)
    run.backend.apply_gradients(run.model, run.optimizer, grads)
    if run.ema is not None:  # every rank: the same weights give the same average
        run.ema.update(run.backend.flat_params(run.model))
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
        engine_cache_bytes=max(r.cache_bytes for r in results),
        peak_rss_bytes=peak_rss_bytes(),
        tile_hw=results[0].plan.tile_hw,
        tiles=sum(len(r.plan.tiles) for r in results),
        regions=len(regions),
        world_size=world.size,
        compute_path=run.backend.compute_path,
        lr=lr,
    )


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
    tile_progress: Progress | None = None,
    stop: StopFlag | None = None,
    on_val: Callable[[dict], None] | None = None,
) -> list[StepMetrics]:
    """Train `run` to `run.config.steps`, writing metrics and checkpoints (rank 0 only).

    Before the first step of a fresh run (the untrained baseline), every `val_every` steps and
    at the end, rank 0 validates (when the run has validation areas), logs a "val" line, calls
    `on_val(line)` and keeps the best weights as `best` (best by Dice at the threshold that
    validation chose, which the checkpoint records).

    Every rank applies the same averaged gradient to the same weights; that is checked before
    the first step and after every step, and ranks that disagree or lose each other stop with
    a TrainingError. A stop signal ends the loop at the next step boundary (or drops the
    current step between tiles), saves the last completed step and raises Interrupted.

    Args:
        stop: the caller's flag (a command holding the handlers until it exits); None:
            handlers are installed for this call.
    """
    if stop is None:
        with stop_on_signals(deferring=True) as own:
            return train(run, world, on_step, tile_progress, own, on_val)
    world = world or World.single()
    stop.deferring = True  # from here on a signal only raises the flag
    history = _steps(run, world, stop, on_step, tile_progress, on_val)
    if run.step < run.config.steps:  # stopped by a signal (here or on another rank)
        path = save_run(run) if world.is_main and run.step != history.saved_step else None
        raise Interrupted(run.step, path or _newest(run), stop.signum or signal.SIGTERM)
    stop.deferring = False  # finished: a signal stops whatever follows at once
    return history.steps


class _History(NamedTuple):
    steps: list[StepMetrics]
    saved_step: int  # the last step checkpointed


def _steps(run: Run, world: World, stop: StopFlag, on_step, tile_progress, on_val) -> _History:
    """Steps until the target or a stop signal, checkpointing every few (rank 0 writes) and
    validating every `val_every` (rank 0, when the run has validation areas)."""
    history, saved_step = [], run.step
    start = time.perf_counter()
    try:
        _check_same_weights(run, world)
        if world.is_main and run.validator is not None and run.step == 0:
            _validate(run, 0.0, on_val)  # the untrained baseline
        while run.step < run.config.steps and not _stop_requested(stop, world):
            metrics = _step_or_abandon(run, world, stop, tile_progress)
            if metrics is None:
                break
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
    except WorldError as error:
        raise TrainingError(f"{error}; {_last_good(run)}") from error
    return _History(history, saved_step)


def _stop_requested(stop: StopFlag, world: World) -> bool:
    """Whether to stop before the next step; across ranks, one stops all at the same step."""
    if world.size == 1:
        return stop.raised
    return world.sum((float(stop.raised),))[0] > 0


def _step_or_abandon(
    run: Run, world: World, stop: StopFlag, tile_progress: Progress | None
) -> StepMetrics | None:
    """One step; None if a stop signal came between its tiles (one rank only: ranks of a
    data-parallel run finish the step together). The step's regions are then redrawn later."""
    if world.size > 1:
        return train_step(run, world, tile_progress)

    def watch(phase: str, done: int, total: int) -> None:
        if stop.raised:
            raise _StepAbandoned
        if tile_progress is not None:
            tile_progress(phase, done, total)

    before = run.sampler.state()
    try:
        return train_step(run, world, watch)
    except _StepAbandoned:
        run.sampler.restore(before)
        return None


def _validation_due(run: Run) -> bool:
    c = run.config
    return run.validator is not None and (run.step % c.val_every == 0 or run.step == c.steps)


def _validate(run: Run, seconds: float, on_val: Callable[[dict], None] | None) -> None:
    """Score the validation areas (with the moving average of the weights too), log the line,
    keep the best weights."""
    row = run.validator(run.backend, run.model, run.step, seconds, _ema_model(run))
    with open(run.metrics_path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    run.val_choice = (run.step, raw_choice(row))
    choice = best_choice(row)  # raw or averaged weights, each at its own chosen cut
    if choice.dice > run.best_val_dice:
        save_best(run, choice)
    if on_val:
        on_val(row)


def _ema_model(run: Run):
    """The model validation scores the moving average with: None when the run keeps none,
    the run's own model while the two are equal (before the first step: scored once)."""
    if run.ema is None:
        return None
    if run.ema.matches(run.backend.flat_params(run.model)):
        return run.model
    return run.ema.as_model(run.backend)


def _check_same_weights(run: Run, world: World) -> None:
    """One tiny collective: every rank holds the same step, weights and moving average of
    them (bit for bit)."""
    if world.size == 1:
        return
    weights = run.backend.flat_params(run.model)
    average = run.ema.shadow if run.ema is not None else {}
    payload = [str(run.step).encode()] + [
        np.ascontiguousarray(tensors[n]).tobytes()
        for tensors in (weights, average)
        for n in sorted(tensors)
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
    try:
        with open(run.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    except OSError as error:  # a full disk: say which file
        name_the_path(error, run.metrics_path)
        raise
