"""One training session as `gigamlx train` runs it: meet the other ranks, start or resume the
run, train with the progress bar, then report. Rank 0 alone writes and draws."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import NamedTuple

import numpy as np
from rich.console import Console

from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend, World, WorldError
from gigamlx.runs.checkpoint import BEST, read_state
from gigamlx.runs.config import DEFAULT_THRESHOLD, RANK_TIMEOUT_S, TrainConfig
from gigamlx.train.loop import StepMetrics, TrainingError, train
from gigamlx.train.profile import print_profile
from gigamlx.train.progress import train_progress
from gigamlx.train.run import Run, open_run
from gigamlx.train.run_dir import METRICS, resolve_config, run_lock
from gigamlx.train.stop import StopFlag
from gigamlx.train.validate import best_choice

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
            last_val = bar.last_val
    if dump_weights:
        np.savez(dump_weights.format(rank=world.rank), **run.backend.flat_params(run.model))
    if main and profile:
        print_profile(history, Console())
    if main:
        console.print(f"done: {run.step} steps; checkpoints in {run.run_dir / 'checkpoints'}")
        if last_val is not None:
            row, weights = best_row(run.run_dir, last_val)
            line = closing_line(row, run.run_dir, weights)
            console.print(line, soft_wrap=True, markup=False)
    return history


def closing_line(row: dict, run_dir, weights: str = "raw") -> str:
    """One line on the best weights (`weights` of validation line `row`, raw or ema): their
    tissue mask's Dice against both classical detectors on the same pixels, the map's Dice at
    its chosen cut, and where to look. Rows without a tissue mask (no µm/px) lead with the
    map; rows without the morphological detector compare with Otsu alone."""
    score = _scores_of(row, weights)
    label = "EMA" if weights == "ema" else "raw"
    if score.mask is not None:
        head, lead = "tissue mask Dice", score.mask
        model = f"model {label} {score.map:.4f} at p >= {score.cut:g}"
    else:
        head, lead, model = "model Dice", score.map, f"{label} weights at p >= {score.cut:g}"
    detectors = [
        Detector("Otsu", "Otsu", row["val_otsu_dice"]),
        Detector("morphological", "the morphological detector", row.get("val_morph_dice")),
    ]
    detectors = [d for d in detectors if d.dice is not None]
    shown = ", ".join(f"{d.short} {d.dice:.4f}" for d in detectors)
    return (
        f"{head} {lead:.4f} at step {row['step']} ({model}; {shown} on the same pixels): "
        f"{_verdict(lead, detectors)}; see it: gigamlx report {run_dir}"
    )


class Detector(NamedTuple):
    short: str  # in the numbers: "morphological 0.9925"
    name: str  # in the verdict: "behind the morphological detector"
    dice: float | None


class _Scores(NamedTuple):
    mask: float | None  # the tissue mask (post-processed); None: not scored
    map: float  # the probability map at its cut
    cut: float


def _scores_of(row: dict, weights: str) -> _Scores:
    """The Dice of one set of weights in a validation line (lines logged before thresholds
    were chosen hold the map at 0.5 only)."""
    prefix = "val_ema" if weights == "ema" else "val"
    if f"{prefix}_threshold" not in row:
        return _Scores(row.get(f"{prefix}_dice_post"), row[f"{prefix}_dice"], DEFAULT_THRESHOLD)
    return _Scores(
        row.get(f"{prefix}_dice_post"), row[f"{prefix}_threshold_dice"], row[f"{prefix}_threshold"]
    )


def _verdict(score: float, detectors: list[Detector]) -> str:
    """'ahead of both', 'behind Otsu', 'ahead of Otsu, behind the morphological detector':
    compared as printed (4 decimals), so the words agree with the numbers beside them."""
    shown = round(score, 4)
    groups = {
        "ahead of": [d.name for d in detectors if shown > round(d.dice, 4)],
        "behind": [d.name for d in detectors if shown < round(d.dice, 4)],
        "level with": [d.name for d in detectors if shown == round(d.dice, 4)],
    }
    every = len(detectors) > 1
    return ", ".join(
        f"{words} {'both' if every and len(names) == len(detectors) else ' and '.join(names)}"
        for words, names in groups.items()
        if names
    )


def best_row(run_dir: Path, fallback: dict) -> tuple[dict, str]:
    """(validation line, "raw" or "ema") of RUN/checkpoints/best, from metrics.jsonl; the
    `fallback` line and its better weights when that line is gone (a crash after it)."""
    state = read_state(Path(run_dir) / "checkpoints" / BEST) or {}
    rows = []
    with suppress(OSError):
        for line in (Path(run_dir) / METRICS).read_text().splitlines():
            with suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and row.get("kind") == "val":
                    rows.append(row)
    found = [row for row in rows if row.get("step") == state.get("step")]
    if found:
        return found[-1], state.get("weights", "raw")
    return fallback, best_choice(fallback).weights


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
