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
    Checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from gigamlx.core.config import TrainConfig
from gigamlx.slide.magnification import LevelError, size_px
from gigamlx.train.data import DataError, TrainingSlide, open_training_slides
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
    slides: list[TrainingSlide]
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


def resolve_config(
    config: TrainConfig, resume: bool, overrides: dict | None = None
) -> tuple[TrainConfig, Checkpoint | None]:
    """The configuration a run trains with, and on resume the checkpoint it continues from.

    Args:
        config: the requested configuration (on resume only `out` is read from it).
        resume: continue the run in `config.out`: its saved config, with `overrides`.
        overrides: on resume, config fields to change from the saved ones (what the user
            typed: a new --steps target, more --accumulate, another --backend: checkpoints
            are engine-neutral).
    """
    if not resume:
        return config.validate(), None
    checkpoint = load_checkpoint(Path(config.out))
    saved = TrainConfig.from_dict(checkpoint.config)
    merged = dataclasses.replace(saved, **{**(overrides or {}), "out": config.out})
    return merged.validate(), checkpoint


def open_run(
    config: TrainConfig,
    checkpoint: Checkpoint | None,
    backend: Backend,
    slide_progress=None,
    writes: bool = True,
) -> Run:
    """Build the run of a resolved `config` on `backend`, continuing `checkpoint` if given.

    Args:
        slide_progress: progress callback for generating the default slide.
        writes: False on data-parallel ranks other than 0: they neither check nor write the
            run folder (rank 0 does, and only it writes checkpoints and metrics).
    """
    run_dir = Path(config.out)
    if checkpoint is None and writes:
        _check_fresh(run_dir)
    slides = open_training_slides(config.data, slide_progress, config.level, config.mpp)
    config, region_hw = _resolve_scale(config, slides)
    model = backend.build_model(config.seed)
    optimizer = backend.make_optimizer(model, config.lr)
    sampler = RegionSampler(
        [s.image_hw for s in slides], region_hw, config.seed, config.augment, config.pad
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
        (run_dir / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
    return Run(config, backend, model, optimizer, sampler, slides, step, run_dir)


def _resolve_scale(config: TrainConfig, slides: list[TrainingSlide]):
    """(config with trained_level / trained_mpp filled in, region (h, w) in pixels).

    The µm/px trained at is the first store's (with --mpp every store is within 10% of it);
    a physical --region is converted at that resolution.
    """
    first = slides[0]
    trained_mpp = config.mpp or first.mpp
    size, unit = config.region_size
    try:
        region_hw = size_px(size, unit, trained_mpp, str(first.path))
    except LevelError as error:
        raise DataError(str(error)) from None
    levels = {s.level for s in slides}
    trained_level = first.level if len(levels) == 1 else None
    config = dataclasses.replace(config, trained_level=trained_level, trained_mpp=trained_mpp)
    log.info(
        "reading level %s at %s µm/px; region %dx%d px (HxW)",
        trained_level if trained_level is not None else "per store",
        f"{trained_mpp:.4g}" if trained_mpp else "unknown",
        *region_hw,
    )
    return config, region_hw


def start_run(
    config: TrainConfig, resume: bool, overrides: dict | None = None, slide_progress=None
) -> Run:
    """`resolve_config`, its backend, then `open_run`: a single-process run in one call."""
    config, checkpoint = resolve_config(config, resume, overrides)
    backend = get_backend(config.backend, config.device, config.kernels)
    return open_run(config, checkpoint, backend, slide_progress)


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
