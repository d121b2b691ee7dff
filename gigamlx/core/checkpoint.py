"""Checkpoints: weights, optimizer state, config, step and RNG state, written atomically.

Each checkpoint is a folder `checkpoints/step_NNNNNNN/` made under a temporary name and renamed
into place once every file is written and flushed, so a crash never leaves a checkpoint that
looks complete. Weights are safetensors in the MLX layout, readable by every backend.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
BEST = "best"  # checkpoints/best: the best validation Dice so far, never pruned


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file and what to do."""


class Checkpoint(NamedTuple):
    path: Path
    step: int
    weights: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    config: dict
    rng_state: dict


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights,
    optimizer,
    config: dict,
    rng_state: dict,
    name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` under `run_dir/checkpoints` atomically; return its folder.

    `name` replaces the folder name `step_NNNNNNN` (e.g. "best"); `extra` adds state keys.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step_{step:07d}"
    final = root / name
    temp = root / f".tmp_{name}_{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(temp / WEIGHTS))
    save_file({k: np.ascontiguousarray(v) for k, v in optimizer.items()}, str(temp / OPTIMIZER))
    state = {"step": step, "config": config, "rng_state": rng_state} | (extra or {})
    (temp / STATE).write_text(json.dumps(state, indent=2))
    for name in (WEIGHTS, OPTIMIZER, STATE):
        _fsync(temp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    return final


def read_state(path: Path) -> dict | None:
    """A checkpoint folder's state.json as a dict, or None when there is none."""
    try:
        return json.loads((Path(path) / STATE).read_text())
    except (OSError, ValueError):
        return None


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint folder (or a run folder: its newest checkpoint)."""
    path = Path(path)
    if not (path / STATE).exists():  # a run folder: take its newest checkpoint
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path} holds no complete checkpoint; start a new run instead")
        path = found[-1]
    try:
        state = json.loads((path / STATE).read_text())
        weights = load_file(str(path / WEIGHTS))
        optimizer = load_file(str(path / OPTIMIZER)) if (path / OPTIMIZER).exists() else {}
        return Checkpoint(
            path, int(state["step"]), weights, optimizer, state["config"], state["rng_state"]
        )
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({error}); "
            "delete that folder to fall back to an older one"
        ) from error


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights from a run folder, a checkpoint folder, or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read weights from {path}: {error}") from error
    return load_checkpoint(path).weights
