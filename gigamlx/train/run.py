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
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temps,
    save_checkpoint,
)
from gigamlx.core.config import TrainConfig
from gigamlx.core.outputs import check_output_folder, probe_writable, write_text_atomic
from gigamlx.slide.store import SlideStore
from gigamlx.train.data import open_training_slides
from gigamlx.train.regions import RegionSampler

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
    run_dir = check_output_folder(Path(config.out))
    checkpoint = None
    if writes:
        remove_stale_temps(run_dir)
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
    sampler = RegionSampler(
        [s.image_hw for s in slides], config.region_hw, config.seed, config.augment, config.pad
    )
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
        for folder in (run_dir, run_dir / "checkpoints"):
            if folder.is_dir():
                probe_writable(folder)  # fails now, not at the first checkpoint
        write_text_atomic(run_dir / CONFIG, json.dumps(config.to_dict(), indent=2))
    return Run(config, backend, model, optimizer, sampler, slides, step, run_dir)


def save_run(run: Run) -> Path:
    """Checkpoint the run after its last completed step; keep only the newest few.

    A failed write (a full disk) leaves no partial folder and keeps every older checkpoint;
    the error carries a note saying which one to continue from.
    """
    try:
        path = save_checkpoint(
            run.run_dir,
            run.step,
            run.backend.flat_params(run.model),
            run.backend.optimizer_state(run.optimizer),
            run.config.to_dict(),
            run.sampler.state(),
        )
    except OSError as error:
        saved = list_checkpoints(run.run_dir)
        kept = f"kept the last checkpoint {saved[-1]}" if saved else "no checkpoint was saved"
        error.add_note(f"step {run.step} was not saved, {kept}; free space, then --resume")
        raise
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
