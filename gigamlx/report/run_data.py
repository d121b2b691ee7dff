"""What a run folder holds, read for the report: its configuration, the training and
validation rows of metrics.jsonl, the best step and the validation overlays.

Every piece may be missing (a run without validation, a run cut short, an older run); what
is there is shown and what was skipped is said. Only a folder with none of them is an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

# the names gigamlx.train writes (train/run.py, runs/checkpoint.py); read here without
# importing the trainer, so a report never loads an engine
CONFIG = "config.json"
METRICS = "metrics.jsonl"
BEST_STATE = Path("checkpoints") / "best" / "state.json"
VAL_DIR = "val"
OVERLAY_SUFFIX = "_overlay.png"


class ReportError(ValueError):
    """The run folder cannot be reported on; the message names the path and the fix."""


class Overlay(NamedTuple):
    slide: str  # the validation slide's name
    path: Path  # its PNG: the slide with predicted tissue tinted and outlined


class RunData(NamedTuple):
    run_dir: Path
    config: dict  # config.json as written by train; {} when missing
    train: list[dict]  # training rows, one per step (the last one written wins), by step
    val: list[dict]  # validation rows ("kind": "val"), by step
    best_step: int | None  # checkpoints/best, else the step of the highest val_dice
    overlays: list[Overlay]
    problems: list[str]  # what could not be read, said on the page
    best_weights: str = "raw"  # which weights `best` holds: "raw" or "ema" (their average)

    def column(self, rows: list[dict], key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of `key` over `rows`, skipping rows without a number there."""
        pairs = [(row["step"], _number(row.get(key))) for row in rows]
        pairs = [(step, value) for step, value in pairs if value is not None]
        return [float(s) for s, _ in pairs], [v for _, v in pairs]

    def has(self, rows: list[dict], key: str) -> bool:
        return bool(self.column(rows, key)[0])

    def val_at(self, step: int | None) -> dict | None:
        """The validation row of `step`, or None."""
        return next((row for row in self.val if row["step"] == step), None)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _read_config(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.append(f"{path.name} is unreadable ({error}); its table is left out")
        return {}
    if not isinstance(config, dict):
        problems.append(f"{path.name} is not a JSON object; its table is left out")
        return {}
    return config


def _parse_line(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    return row


def _read_metrics(path: Path, problems: list[str]) -> tuple[list[dict], list[dict]]:
    """(train rows, val rows) from metrics.jsonl; later rows of a step replace earlier ones
    (a run resumed from a checkpoint older than its last logged step logs them again)."""
    if not path.is_file():
        return [], []
    train: dict[int, dict] = {}
    val: dict[int, dict] = {}
    skipped = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        row = _parse_line(line)
        if row is None:
            skipped += 1
            continue
        kind = row.get("kind", "train")
        if kind in ("train", "val"):
            (val if kind == "val" else train)[row["step"]] = row
    if skipped:
        problems.append(f"skipped {skipped} unreadable line(s) of {path.name}")
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def _best(run_dir: Path, val: list[dict]) -> tuple[int | None, str]:
    """(step, "raw" or "ema") of checkpoints/best; without one, the best raw validation."""
    try:
        state = json.loads((run_dir / BEST_STATE).read_text())
        step, weights = state["step"], state.get("weights", "raw")
        if isinstance(step, int) and not isinstance(step, bool):
            return step, "ema" if weights == "ema" else "raw"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no best checkpoint (yet): the validation rows tell
    key = "val_threshold_dice" if any("val_threshold_dice" in row for row in val) else "val_dice"
    scored = [row for row in val if _number(row.get(key)) is not None]
    return (max(scored, key=lambda row: row[key])["step"] if scored else None), "raw"


def _overlays(run_dir: Path) -> list[Overlay]:
    found = sorted((run_dir / VAL_DIR).glob(f"*{OVERLAY_SUFFIX}"))
    return [Overlay(p.name[: -len(OVERLAY_SUFFIX)], p) for p in found if p.is_file()]


def load_run(run_dir: Path) -> RunData:
    """Read what `run_dir` holds; ReportError when it is not a folder or holds nothing."""
    run_dir = Path(run_dir)
    fix = "pass the --out folder of a `gigamlx train` run"
    if not run_dir.exists():
        raise ReportError(f"run folder {run_dir} does not exist; {fix}")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is a file, not a run folder; {fix}")
    problems: list[str] = []
    config = _read_config(run_dir / CONFIG, problems)
    train, val = _read_metrics(run_dir / METRICS, problems)
    overlays = _overlays(run_dir)
    if not (config or train or val or overlays):
        raise ReportError(
            f"{run_dir} holds no {CONFIG}, no rows in {METRICS} and no "
            f"{VAL_DIR}/*{OVERLAY_SUFFIX}: nothing to report; {fix}"
        )
    best_step, best_weights = _best(run_dir, val)
    return RunData(
        run_dir=run_dir,
        config=config,
        train=train,
        val=val,
        best_step=best_step,
        overlays=overlays,
        problems=problems,
        best_weights=best_weights,
    )
