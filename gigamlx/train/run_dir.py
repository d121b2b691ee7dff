"""A run's folder: the files it holds, the lock a session takes on it, whether a new run may
use it, and the configuration a run (new or resumed) trains with."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from gigamlx.runs.checkpoint import STATE, Checkpoint, list_checkpoints, load_checkpoint
from gigamlx.runs.config import ConfigError, TrainConfig
from gigamlx.runs.lock import hold_lock
from gigamlx.runs.outputs import check_output_folder
from gigamlx.train.validate import VAL_DIR

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"
CONFIG = "config.json"
LOCK = ".lock"
RUN_FILES = {CONFIG, METRICS, LOCK, "checkpoints", VAL_DIR}  # all a run folder holds


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says what to do."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """The OS lock a session holds on its run folder from start to end. A folder made here
    is removed again if the session wrote nothing into it (it failed before its first file)."""
    run_dir = Path(run_dir)
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with hold_lock(run_dir / LOCK, f"run folder {run_dir}"):
            yield
    finally:
        if made:
            with suppress(OSError):  # not empty: the run wrote files, which stay
                run_dir.rmdir()


def check_fresh(run_dir: Path, resume: bool) -> None:
    """A new run may use an empty folder, or one a run left before its first checkpoint (a
    retry takes it over: with --resume its saved config, without it the one given now)."""
    if list_checkpoints(run_dir):
        raise RunDirError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out"
        )
    if run_dir.exists() and not all(_is_run_file(p.name) for p in run_dir.iterdir()):
        raise RunDirError(f"{run_dir} holds files that are not a gigamlx run; choose another --out")
    if run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()):
        config = "its saved config" if resume else "the options given now"
        log.warning(
            "%s holds no checkpoint (its run stopped before one): starting afresh from step 0 "
            "with %s",
            run_dir,
            config,
        )


def _is_run_file(name: str) -> bool:
    """A file a run writes, or the temporary of one (`.metrics.jsonl.tmp_123`)."""
    return name in RUN_FILES or any(name.startswith(f".{known}.tmp") for known in RUN_FILES)


def saved_config(run_dir: Path, fallback: TrainConfig) -> TrainConfig:
    """The config.json of a run that stopped before its first checkpoint (absent: fallback)."""
    path = run_dir / CONFIG
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except FileNotFoundError:
        return fallback
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise RunDirError(f"{path} is unreadable ({error}); fix or delete it") from None


def resolve_config(
    config: TrainConfig, resume: bool, overrides: dict | None = None
) -> tuple[TrainConfig, Checkpoint | None]:
    """The configuration a run trains with, and on resume the checkpoint it continues from.

    Resuming a folder that holds no checkpoint (its run stopped before the first) starts it
    afresh from its config.json. Slide paths come back absolute, so a run resumes anywhere.

    Args:
        config: the requested configuration (on resume only `out` is read from it).
        resume: continue the run in `config.out`: its saved config, with `overrides`.
        overrides: on resume, config fields to change from the saved ones (what the user
            typed: a new --steps target, more --accumulate, another --backend: checkpoints
            are engine-neutral).
    """
    check_output_folder(Path(config.out))  # before anything makes it (the run lock does)
    checkpoint = None
    if resume:
        run_dir = Path(config.out)
        if list_checkpoints(run_dir):
            checkpoint = load_checkpoint(run_dir)  # past damaged ones, with a warning
            saved = TrainConfig.from_dict(checkpoint.config, source=str(checkpoint.path / STATE))
        else:
            saved = saved_config(run_dir, config)
        config = dataclasses.replace(saved, **{**(overrides or {}), "out": config.out})
    data = tuple(os.path.abspath(p) for p in config.data)
    return dataclasses.replace(config, data=data).validate(), checkpoint
