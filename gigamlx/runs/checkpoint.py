"""Checkpoints: weights, optimizer state, config, step and RNG state, written atomically.

Each checkpoint is a folder `checkpoints/step_NNNNNNN/` made under a temporary name and renamed
into place once every file is written and flushed, so a crash never leaves a checkpoint that
looks complete. Weights (and the moving average of them, `ema.safetensors`, when the run
keeps one) are safetensors in the MLX layout, readable by every backend. A
`checksums.sha256` manifest (the `sha256sum -c` format) holds each file's hash; loading
verifies it and rejects non-finite tensors, and a run folder falls back from a damaged newest
checkpoint to the newest valid one. Checkpoints written before the manifest load unverified.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gigamlx.runs.files import format_of, fsync_file, sha256_of
from gigamlx.runs.outputs import pid_alive

WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.safetensors"
EMA = "ema.safetensors"  # the moving average of the weights (train/ema.py); absent when off
STATE = "state.json"
MANIFEST = "checksums.sha256"
# the format of state.json: 1 = written before formats were (no "format" key), 2 = with it.
# The config inside carries its own format (runs/config.py).
CHECKPOINT_FORMAT = 2
STEP_FOLDER = re.compile(r"step_(\d{7,})")  # what save_checkpoint names; nothing else counts

log = logging.getLogger(__name__)

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
    ema: dict[str, np.ndarray] | None = None  # the moving average of the weights, if kept


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights,
    optimizer,
    config: dict,
    rng_state: dict,
    name: str | None = None,
    extra: dict | None = None,
    ema: dict | None = None,
) -> Path:
    """Write checkpoint `step` under `run_dir/checkpoints` atomically; return its folder.

    `name` replaces the folder name `step_NNNNNNN` (e.g. "best"); `extra` adds state keys;
    `ema` (the moving average of the weights) is written as EMA when given.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = name or f"step_{step:07d}"
    final = root / name
    temp = root / f".tmp_{name}_{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:  # a full disk or a kill leaves no partial folder that keeps the disk full
        temp.mkdir()
        _save_tensors(weights, temp / WEIGHTS)
        _save_tensors(optimizer, temp / OPTIMIZER)
        if ema is not None:
            _save_tensors(ema, temp / EMA)
        state = {"format": CHECKPOINT_FORMAT, "step": step, "config": config}
        state |= {"rng_state": rng_state} | (extra or {})
        (temp / STATE).write_text(json.dumps(state, indent=2))
        names = (WEIGHTS, OPTIMIZER, STATE, *((EMA,) if ema is not None else ()))
        (temp / MANIFEST).write_text("".join(f"{sha256_of(temp / n)}  {n}\n" for n in names))
        for name in (*names, MANIFEST):
            fsync_file(temp / name)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    return final


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder named by save_checkpoint, else None (e.g. `step_best`)."""
    match = STEP_FOLDER.fullmatch(Path(path).name)
    return int(match[1]) if match else None


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


def read_state(path: Path) -> dict | None:
    """A checkpoint folder's state.json as a dict, or None when there is none."""
    try:
        return json.loads((Path(path) / STATE).read_text())
    except (OSError, ValueError):
        return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The tool's own complete checkpoint folders, oldest step first (valid or not)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) is not None and p.is_dir()]
    return sorted(found, key=step_of)


def prune_checkpoints(run_dir: Path, keep: int, newest: Path | None = None) -> None:
    """Keep `newest` (verified by the caller) and the newest `keep - 1` valid ones before it.

    Without `newest`, the newest folder is taken as it. Damaged checkpoints are removed too;
    a valid one is only removed once `keep` newer valid ones exist.
    """
    found = list_checkpoints(run_dir)
    if not found:
        return
    newest = Path(newest) if newest is not None else found[-1]
    older = [p for p in found if step_of(p) < step_of(newest)]
    kept = [p for p in reversed(older) if _is_valid(p)][: max(keep - 1, 0)]
    for path in found:
        if path != newest and path not in kept:
            shutil.rmtree(path, ignore_errors=True)


def _is_valid(path: Path) -> bool:
    try:
        load_checkpoint_folder(path)
    except CheckpointError:
        return False
    return True


def verify_files(path: Path) -> None:
    """Check every file of a checkpoint folder against its manifest (none: written before
    manifests, nothing to check). Raises CheckpointError naming the file."""
    manifest = path / MANIFEST
    if not manifest.exists():
        log.debug("%s has no %s (an older checkpoint): not verified", path, MANIFEST)
        return
    try:  # lines of "<hex>  <name>"
        pairs = [line.split("  ", 1) for line in manifest.read_text().splitlines()]
        expected = {name: digest for digest, name in pairs}
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path} is damaged ({MANIFEST} is unreadable)") from None
    optional = [name for name in (EMA,) if name in expected or (path / name).exists()]
    for name in (WEIGHTS, OPTIMIZER, STATE, *optional):
        if name not in expected:
            raise CheckpointError(f"checkpoint {path} is damaged ({MANIFEST} lacks {name})")
        if not (path / name).exists():
            raise CheckpointError(f"checkpoint {path} is damaged ({name} is missing)")
        if sha256_of(path / name) != expected[name]:
            raise CheckpointError(
                f"checkpoint {path} is damaged ({name} does not match its checksum)"
            )


def load_checkpoint_folder(path: Path) -> Checkpoint:
    """Read and verify one checkpoint folder; CheckpointError names it and what is wrong."""
    path = Path(path)
    verify_files(path)
    try:
        state = json.loads((path / STATE).read_text())
        check_format(state, path)
        weights = load_file(str(path / WEIGHTS))
        optimizer = load_file(str(path / OPTIMIZER)) if (path / OPTIMIZER).exists() else {}
        ema = load_file(str(path / EMA)) if (path / EMA).exists() else None
        checkpoint = Checkpoint(
            path=path,
            step=int(state["step"]),
            weights=weights,
            optimizer=optimizer,
            config=state["config"],
            rng_state=state["rng_state"],
            ema=ema,
        )
    except CheckpointError:
        raise
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {path} is damaged: unreadable ({error})") from error
    check_finite(weights, path / WEIGHTS)
    check_finite(optimizer, path / OPTIMIZER)
    check_finite(ema or {}, path / EMA)
    return checkpoint


def check_format(state: dict, path: Path) -> None:
    """Raise CheckpointError unless this gigamlx reads the format of `state` (state.json)."""
    try:
        format_of(state, CHECKPOINT_FORMAT, "checkpoint")
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path}: {error} ({STATE})") from None


def check_finite(tensors: dict[str, np.ndarray], source: Path) -> None:
    """Raise CheckpointError if a floating-point tensor holds NaN or infinity."""
    for name, value in tensors.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f"{source} is damaged: {name} holds NaN or infinite values")


def load_checkpoint(path: Path) -> Checkpoint:
    """Read one checkpoint folder, or a run folder's newest valid checkpoint.

    In a run folder a damaged newest checkpoint is skipped with a warning naming it and the
    one used instead. Raises CheckpointError if none is valid, naming each and the fix.
    """
    path = Path(path)
    if (path / STATE).exists() or step_of(path) is not None:
        return load_checkpoint_folder(path)
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path} holds no complete checkpoint; start a new run instead")
    damaged = []
    for candidate in reversed(found):
        try:
            checkpoint = load_checkpoint_folder(candidate)
        except CheckpointError as error:
            damaged.append(str(error))
            continue
        if damaged:
            log.warning("%s; falling back to %s", "; ".join(damaged), candidate)
        return checkpoint
    raise CheckpointError(
        f"no valid checkpoint in {path}: {'; '.join(damaged)}. Restore a copy, or delete "
        f"{path / 'checkpoints'} to start afresh"
    )


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Weights from a run folder, a checkpoint folder, or a .safetensors file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            weights = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read weights from {path}: {error}") from error
        check_finite(weights, path)
        return weights
    return load_checkpoint(path).weights
