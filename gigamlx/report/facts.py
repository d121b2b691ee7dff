"""The run's key facts for the page header: steps, best validation Dice against Otsu,
seconds per step, peak memory, backend; and what the run does not have."""

from __future__ import annotations

import statistics
from typing import NamedTuple

from gigamlx.report.run_data import RunData


class Fact(NamedTuple):
    label: str
    value: str
    detail: str  # one line under the value; may name a delta, see `delta`
    delta: str = ""  # e.g. "+0.0031 over Otsu", coloured by tone
    tone: str = ""  # "good", "bad" or ""


def duration(seconds: float) -> str:
    """42 s, 3 min 20 s, 2 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 90:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _joined(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def _steps(data: RunData) -> Fact:
    last = data.train[-1]["step"] if data.train else 0
    target = data.config.get("steps")
    detail = _joined(
        f"of {target:,} planned" if isinstance(target, int) else "",
        f"region {data.config['region']}" if "region" in data.config else "",
        f"loss {data.config['loss']}" if "loss" in data.config else "",
    )
    return Fact("steps", f"{last:,}", detail or "no training steps recorded")


def _quality(data: RunData) -> Fact:
    best = data.val_at(data.best_step)
    if best is None or not isinstance(best.get("val_dice"), int | float):
        xs, ys = data.column(data.train, "dice")
        value = f"{ys[-1]:.4f}" if ys else "—"
        detail = "no validation in this run" + (f"; last step {int(xs[-1]):,}" if xs else "")
        return Fact("train Dice", value, detail)
    dice, otsu = best["val_dice"], best.get("val_otsu_dice")
    prefix = "val_ema" if data.best_weights == "ema" else "val"  # the weights `best` holds
    weights = " · EMA weights" if prefix == "val_ema" else ""
    detail = f"step {best['step']:,}"
    if isinstance(best.get(f"{prefix}_threshold_dice"), int | float):
        dice = best[f"{prefix}_threshold_dice"]
        detail += f" · p ≥ {best[f'{prefix}_threshold']:g}{weights}"
    mask = best.get(f"{prefix}_dice_post")
    if isinstance(mask, int | float):  # what `best` was kept for: the tissue mask
        holes = _holes(best.get(f"{prefix}_fill_holes_um2"))
        cut = best.get(f"{prefix}_threshold", 0.5)
        detail = f"tissue mask{holes} · map {dice:.4f} at p ≥ {cut:g} · step {best['step']:,}"
        detail, dice = detail + weights, mask
    if not isinstance(otsu, int | float):
        return Fact("best val Dice", f"{dice:.4f}", detail)
    detectors = [("Otsu", otsu)]
    if isinstance(best.get("val_morph_dice"), int | float):
        detectors.append(("morph", best["val_morph_dice"]))
    detail += "".join(f" · {name} {value:.4f}" for name, value in detectors)
    name, strongest = max(detectors, key=lambda d: d[1])  # the detector to beat
    delta = dice - strongest
    tone = "good" if delta >= 0 else "bad"
    delta_text = f"{delta:+.4f} {'over' if delta >= 0 else 'under'} {name}"
    return Fact("best val Dice", f"{dice:.4f}", detail, delta_text, tone)


def _holes(fill_um2) -> str:
    """' (holes ≤ 1 mm²)': the hole limit validation chose for the mask, when logged."""
    if not isinstance(fill_um2, int | float):
        return ""
    return f" (holes ≤ {fill_um2 / 1e6:g} mm²)"


def _speed(data: RunData) -> Fact:
    _, seconds = data.column(data.train, "seconds")
    if not seconds:
        return Fact("seconds / step", "—", "no timings recorded")
    _, val_seconds = data.column(data.val, "val_seconds")
    detail = _joined(
        f"median of {len(seconds):,} steps · {duration(sum(seconds))} training",
        f"validation {statistics.median(val_seconds):.1f} s each" if val_seconds else "",
    )
    return Fact("seconds / step", f"{statistics.median(seconds):.2f} s", detail)


def _memory(data: RunData) -> Fact:
    _, rss = data.column(data.train, "peak_rss_bytes")
    _, engine = data.column(data.train, "peak_engine_bytes")
    budget = data.config.get("memory_budget")
    detail = _joined(
        "process RSS" if rss else "",
        f"engine {max(engine) / 1e9:.2f} GB" if engine else "",
        f"budget {budget}" if budget else "",
    )
    value = f"{max(rss) / 1e9:.2f} GB" if rss else "—"
    return Fact("peak memory", value, detail or "no memory readings recorded")


def _engine(data: RunData) -> Fact:
    backend = data.config.get("backend", "—")
    last = data.train[-1] if data.train else {}
    tile = last.get("tile_hw")
    tiles = last.get("tiles")
    detail = _joined(
        f"device {data.config['device']}" if "device" in data.config else "",
        f"tile {tile[0]}×{tile[1]}" if isinstance(tile, list) and len(tile) == 2 else "",
        f"{tiles} tile(s)/step" if isinstance(tiles, int) else "",
    )
    return Fact("backend", str(backend), detail)


def key_facts(data: RunData) -> list[Fact]:
    return [f(data) for f in (_steps, _quality, _speed, _memory, _engine)]


def missing(data: RunData) -> list[str]:
    """What this run does not have, in words, for one muted line under the facts."""
    checks = [
        (bool(data.config), "configuration (config.json)"),
        (bool(data.train), "training steps"),
        (bool(data.val), "validation"),
        (data.has(data.train, "lr"), "learning rate"),
        (bool(data.overlays), "validation overlays"),
    ]
    return [what for present, what in checks if not present]
