"""Checkpoints: weights, optimizer state, config, step and RNG state, written atomically.

Each checkpoint is a folder `checkpoints/step_NNNNNNN/` made under a temporary name and renamed
into place once every file is written and flushed, so a crash never leaves a checkpoint that
looks complete. Weights are safetensors in the MLX layout, readable by every backend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gigamlx.core.outputs import pid_alive

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


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
    run_dir: Path, step: int, weights, optimizer, config: dict, rng_state: dict
) -> Path:
    """Write checkpoint `step` under `run_dir/checkpoints` atomically; return its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    temp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:  # a full disk or a kill leaves no partial folder that keeps the disk full
        temp.mkdir()
        _save_tensors(weights, temp / WEIGHTS)
        _save_tensors(optimizer, temp / OPTIMIZER)
        state = {"step": step, "config": config, "rng_state": rng_state}
        (temp / STATE).write_text(json.dumps(state, indent=2))
        for name in (WEIGHTS, OPTIMIZER, STATE):
            _fsync(temp / name)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    return final


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete `checkpoints/.tmp_step_*_PID` folders left by processes that are gone."""
    root = Path(run_dir) / "checkpoints"
    removed = []
    for temp in root.glob(".tmp_step_*_*") if root.is_dir() else ():
        pid = temp.name.rsplit("_", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)
            removed.append(temp)
    return removed


def _save_tensors(tensors: dict, path: Path) -> None:
    """safetensors' save_file; its I/O failures (a full disk) become OSError naming `path`."""
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    except OSError:
        raise
    except Exception as error:  # SafetensorError: "I/O error: ... (os error 28)"
        code = re.search(r"os error (\d+)", str(error))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from error


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
