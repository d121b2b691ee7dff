"""Writes a run folder like `gigamlx train` with validation leaves one: config.json,
metrics.jsonl (training and validation rows), val/<slide>_overlay.png, checkpoints/best.

Made without training, so the report's tests do not depend on the trainer; the curves look
like a run that learns (loss falls, Dice rises, the learning rate warms up and decays).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gigamlx.runs.config import TrainConfig


def lr_at(step: int, steps: int, peak: float = 1e-3, warmup: int = 20) -> float:
    if step <= warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_row(step: int, steps: int, rng: np.random.Generator, lr: bool = True) -> dict:
    row = {
        "step": step,
        "loss": 1.2 * math.exp(-step / 40) + 0.08 + 0.05 * rng.random(),
        "dice": min(1.0, 0.99 - 0.45 * math.exp(-step / 30) - 0.02 * rng.random()),
        "seconds": 3.2 + 0.6 * rng.random() + (4.0 if step == 1 else 0.0),
        "read_seconds": 0.4,
        "peak_engine_bytes": int(8e8 + 1e6 * rng.random()),
        "peak_rss_bytes": int(1.1e9 + 2e8 * (1 - math.exp(-step / 10))),
        "tile_hw": [2048, 2048],
        "tiles": 8,
        "regions": 1,
        "world_size": 1,
    }
    if lr:
        row["lr"] = lr_at(step, steps)
    return row


def val_row(step: int, slides: tuple[str, ...] = ()) -> dict:
    dice = 0.993 - 0.3 * math.exp(-step / 35)
    per_slide = {name: dice - 0.002 * i for i, name in enumerate(slides)}
    return {
        "step": step,
        "kind": "val",
        "val_dice": dice,
        "val_soft_dice": dice - 0.01,
        "val_precision": min(1.0, dice + 0.004),
        "val_recall": dice - 0.006,
        "val_otsu_dice": 0.9883,
        "val_slides": per_slide,  # Dice of each validation slide
        "val_seconds": 12.5,
        "seconds": 16.0,
    }


def write_overlay(path: Path, size_wh: tuple[int, int] = (96, 64)) -> Path:
    """A small PNG: pink 'tissue' on white, tinted green and outlined like predict's."""
    image = Image.new("RGB", size_wh, (245, 242, 246))
    draw = ImageDraw.Draw(image)
    w, h = size_wh
    box = (w // 8, h // 6, w * 7 // 8, h * 5 // 6)
    draw.ellipse(box, fill=(150, 200, 140), outline=(0, 110, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_run(
    run_dir: Path,
    steps: int = 120,
    val_every: int | None = 20,
    overlays: tuple[str, ...] = ("heldout_a", "heldout_b"),
    lr: bool = True,
    config: bool = True,
    best: bool = True,
) -> Path:
    """Write a run folder at `run_dir` with `steps` training rows; return `run_dir`.

    val_every=None: no validation rows, no best checkpoint, no overlays.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config:
        settings = TrainConfig(data=("a.zarr", "b.zarr"), region="2048x2048", steps=steps)
        (run_dir / "config.json").write_text(json.dumps(settings.to_dict(), indent=2))
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        rows.append(train_row(step, steps, rng, lr))
        if val_every and (step % val_every == 0 or step == steps):
            rows.append(val_row(step, overlays))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not val_every:
        return run_dir
    for slide in overlays:
        write_overlay(run_dir / "val" / f"{slide}_overlay.png")
    if best:
        scored = [r for r in rows if r.get("kind") == "val"]
        top = max(scored, key=lambda r: r["val_dice"])
        best_dir = run_dir / "checkpoints" / "best"
        best_dir.mkdir(parents=True, exist_ok=True)
        (best_dir / "state.json").write_text(json.dumps({"step": top["step"], "config": {}}))
    return run_dir
