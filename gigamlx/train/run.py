"""A run's state on disk and in memory: start fresh, resume from a checkpoint, save one."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend
from gigamlx.core.checkpoint import (
    BEST,
    load_checkpoint,
    prune_checkpoints,
    read_state,
    save_checkpoint,
)
from gigamlx.core.config import TrainConfig
from gigamlx.infer.predict import slide_name
from gigamlx.slide.store import SlideStore
from gigamlx.train.data import open_training_slides
from gigamlx.train.regions import RegionSampler
from gigamlx.train.validate import Validator, heldout_areas, resolve_val_fraction, split_hw

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"
CONFIG = "config.json"


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says what to do."""


@dataclass
class Run:
    config: TrainConfig
    backend: Backend
    model: Any
    optimizer: Any
    sampler: RegionSampler
    slides: list[SlideStore]
    step: int  # optimizer steps completed
    run_dir: Path
    validator: Validator | None = None  # rank 0 only
    best_val_dice: float = -1.0  # of the `best` checkpoint

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS


def _check_fresh(run_dir: Path) -> None:
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunDirError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
        )


def start_run(
    config: TrainConfig,
    resume: bool,
    overrides: dict | None = None,
    slide_progress=None,
    writes: bool = True,
) -> Run:
    """Build a run from `config`, or from the newest checkpoint in `config.out` when resuming.

    Args:
        config: the requested configuration (on resume only `out` is read from it).
        resume: continue the run in `config.out`.
        overrides: on resume, config fields to change from the saved ones (what the user
            typed: a new --steps target, more --accumulate, another --backend: checkpoints
            are engine-neutral).
        slide_progress: progress callback for generating the default slide.
        writes: False on data-parallel ranks other than 0: they neither check nor write the
            run folder (rank 0 does, and only it writes checkpoints and metrics).
    """
    run_dir = Path(config.out)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(run_dir)
        saved = TrainConfig.from_dict(checkpoint.config)
        config = dataclasses.replace(saved, **{**(overrides or {}), "out": config.out})
    elif writes:
        _check_fresh(run_dir)
    config.validate()
    slides = open_training_slides(config.data, slide_progress)
    backend = get_backend(config.backend, device=config.device)
    model = backend.build_model(config.seed)
    optimizer = backend.make_optimizer(model, config.lr)
    fraction = resolve_val_fraction(
        config.val_fraction, bool(config.val), [s.image_hw for s in slides], config.region_hw
    )
    train_hws = [split_hw(s.image_hw, fraction)[0] for s in slides]
    sampler = RegionSampler(
        train_hws, config.region_hw, config.seed, config.augment, config.pad, config.color_jitter
    )
    validator = _validator(config, slides, fraction, run_dir) if writes else None
    step = 0
    if checkpoint is not None:
        backend.load_params(model, checkpoint.weights)
        backend.load_optimizer_state(optimizer, checkpoint.optimizer)
        sampler.restore(checkpoint.rng_state)
        step = checkpoint.step
        if writes:
            _truncate_metrics(run_dir / METRICS, step)
        log.info("resuming %s at step %d", checkpoint.path, step)
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
    best = read_state(run_dir / "checkpoints" / BEST) if checkpoint is not None else None
    best_dice = best.get("val_dice", -1.0) if best else -1.0
    return Run(
        config, backend, model, optimizer, sampler, slides, step, run_dir, validator, best_dice
    )


def _validator(config: TrainConfig, slides, fraction: float, run_dir: Path) -> Validator | None:
    """Validation areas: the --val stores whole, plus each training slide's held-out strip."""
    areas = heldout_areas([slide_name(s.path) for s in slides], slides, fraction)
    if config.val:
        stores = open_training_slides(config.val)
        areas += heldout_areas([slide_name(s.path) for s in stores], stores, 1.0)
    if not areas:
        return None
    return Validator(areas, run_dir, config.tile, config.budget_bytes)


def save_best(run: Run, val_dice: float) -> Path:
    """Keep the weights of this step as RUN/checkpoints/best (never pruned)."""
    run.best_val_dice = val_dice
    return save_checkpoint(
        run.run_dir,
        run.step,
        run.backend.flat_params(run.model),
        run.backend.optimizer_state(run.optimizer),
        run.config.to_dict(),
        run.sampler.state(),
        name=BEST,
        extra={"val_dice": val_dice},
    )


def save_run(run: Run) -> Path:
    """Checkpoint the run after its last completed step; keep only the newest few."""
    path = save_checkpoint(
        run.run_dir,
        run.step,
        run.backend.flat_params(run.model),
        run.backend.optimizer_state(run.optimizer),
        run.config.to_dict(),
        run.sampler.state(),
    )
    prune_checkpoints(run.run_dir, run.config.keep_checkpoints)
    return path


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps after the checkpoint: they are about to be redone."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _step_of(line: str) -> float:
    """A metrics line's step; a line cut short by a crash counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
