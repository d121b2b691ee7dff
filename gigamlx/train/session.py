"""One training session as `gigamlx train` runs it: meet the other ranks, start or resume the
run, train with the progress bar, then report. Rank 0 alone writes and draws."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from rich.console import Console

from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend, World, WorldError
from gigamlx.runs.config import RANK_TIMEOUT_S, TrainConfig
from gigamlx.train.loop import StepMetrics, TrainingError, train
from gigamlx.train.profile import print_profile
from gigamlx.train.progress import train_progress
from gigamlx.train.run import Run, open_run, resolve_config, run_lock
from gigamlx.train.stop import StopFlag

log = logging.getLogger(__name__)


def join_world(backend: Backend, rank_timeout_s: float) -> World:
    """This process's data-parallel world (a world of one unless under mlx.launch)."""
    try:  # under mlx.launch the ranks meet here
        return backend.world(rank_timeout_s)
    except WorldError as error:
        raise TrainingError(str(error)) from error


def train_session(
    config: TrainConfig,
    resume: bool,
    overrides: dict,
    console: Console,
    slide_progress,
    show_progress: bool = True,
    profile: bool = False,
    rank_timeout_s: float = RANK_TIMEOUT_S,
    dump_weights: str | None = None,
    stop: StopFlag | None = None,
    init: str = "fresh",
) -> list[StepMetrics]:
    """Train as the CLI asked; returns the steps this session ran.

    Args:
        config: the requested configuration (validated unless resuming).
        resume: continue the run in `config.out`; `overrides` are the options typed anew.
        console: where the progress bar and the closing line go (stderr).
        slide_progress: (callback, rich Progress) for making the default slide.
        dump_weights: test hook, a path with {rank}: each rank's final weights as .npz.
        stop: the command's stop flag (train/stop.py); None: the loop installs its own.
        init: a new run's first weights: "fresh", "bundled" or a weights path (runs/bundled.py).
    """
    # one way in: the configuration (with the resume merge), ONE backend, its world, the run
    config, checkpoint = resolve_config(config, resume, overrides)
    backend = get_backend(config.backend, config.device, config.kernels)
    world = join_world(backend, rank_timeout_s)
    main = world.is_main
    with ExitStack() as held:
        if main:  # the one writer holds the run folder for the whole session
            held.enter_context(run_lock(Path(config.out)))
        update, bar = slide_progress
        with bar:
            run = open_run(
                config,
                checkpoint,
                backend,
                slide_progress=update,
                writes=main,
                resume=resume,
                init=init,
            )
        if main:
            _log_start(run, world)
        val_every = run.config.val_every if run.validator is not None else None
        shown = main and show_progress
        with train_progress(run.step, run.config.steps, shown, console, val_every) as bar:
            history = train(
                run,
                world,
                bar.on_step if main else None,
                bar.on_tile if main else None,
                stop,
                bar.on_val if main else None,
            )
            first_val, last_val = bar.first_val, bar.last_val
    if dump_weights:
        np.savez(dump_weights.format(rank=world.rank), **run.backend.flat_params(run.model))
    if main and profile:
        print_profile(history, Console())
    if main:
        console.print(f"done: {run.step} steps; checkpoints in {run.run_dir / 'checkpoints'}")
        if last_val is not None:
            line = closing_line(first_val, last_val, run.run_dir)
            console.print(line, soft_wrap=True, markup=False)
    return history


def closing_line(first: dict, last: dict, run_dir) -> str:
    """One line: validation Dice (from the session's first validation to its last) against
    Otsu on the same pixels, and where to look."""
    model, otsu = last["val_dice"], last["val_otsu_dice"]
    verdict = "above" if model > otsu else "below"
    start = f"{first['val_dice']:.4f} at step {first['step']} -> " if first is not last else ""
    tuned = ""
    if "val_threshold" in last:  # lines logged before thresholds were chosen have none
        tuned = f" ({last['val_threshold_dice']:.4f} at its chosen p >= {last['val_threshold']:g})"
    return (
        f"validation Dice {start}{model:.4f} at step {last['step']}{tuned}, {verdict} Otsu's "
        f"{otsu:.4f} on the same pixels; see it: gigamlx report {run_dir}"
    )


def _log_start(run: Run, world: World) -> None:
    c = run.config
    log.info(
        "run %s: steps %d..%d, region %s, budget %s, loss %s, %s on %s, %d rank(s)",
        run.run_dir,
        run.step,
        c.steps,
        c.region,
        c.memory_budget,
        c.loss,
        run.backend.name,
        run.backend.compute_path,
        world.size,
    )
