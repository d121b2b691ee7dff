"""The report's small multiples: which metrics go in which chart, in which colour.

One colour per kind of number across every chart: training blue, validation orange (its
moving-average weights brown), the Otsu baseline grey and dashed. A chart whose numbers
the run does not have is left out.
"""

from __future__ import annotations

from typing import NamedTuple

from gigamlx.report.run_data import RunData
from gigamlx.report.svg import FEW_POINTS, Rule, Series, YAxis, line_chart

TRAIN = "#2563eb"
VAL = "#ea580c"
EMA = "#92400e"
OTSU = "#6b7280"
MASK = "#16a34a"
MORPH = "#1f2937"
SOFT = "#f59e0b"
PRECISION = "#be123c"
RECALL = "#7c3aed"
LR = "#0d9488"
SECONDS = "#0f766e"
RSS = "#db2777"
ENGINE = "#9333ea"
ZERO = YAxis(from_zero=True)  # amounts: their size, not only their change, matters
UNIT = YAxis(limits=(0.0, 1.0))  # scores in [0, 1]


class Card(NamedTuple):
    key: str  # stable id, e.g. "loss"
    title: str
    svg: str
    legend: list[Series]  # what the swatches show (faint raw series are left out)
    latest: str  # the newest value, shown beside the title


def smoothed(values: list[float]) -> list[float]:
    """Exponential moving average over about 1/20 of the run, bias-corrected at the start."""
    alpha = 1.0 / max(2.0, len(values) / 20)
    out, average, weight = [], 0.0, 0.0
    for value in values:
        average = (1 - alpha) * average + alpha * value
        weight = (1 - alpha) * weight + alpha
        out.append(average / weight)
    return out


def _noisy(label: str, xs: list[float], ys: list[float], colour: str) -> list[Series]:
    """A per-step series; long ones as faint raw values under their moving average."""
    if len(xs) <= FEW_POINTS:
        return [Series(label, xs, ys, colour)]
    return [
        Series(f"{label}, each step", xs, ys, colour, faint=True),
        Series(f"{label}, moving average", xs, smoothed(ys), colour),
    ]


def _latest(xs: list[float], ys: list[float], fmt: str) -> str:
    return f"{ys[-1]:{fmt}} at step {int(xs[-1]):,}" if xs else ""


def _card(key, title, series, latest, **chart) -> Card | None:
    svg = line_chart(series, title, key, **chart)
    legend = [s for s in series if not s.faint]
    return Card(key, title, svg, legend, latest) if svg else None


def _loss(data: RunData) -> Card | None:
    xs, ys = data.column(data.train, "loss")
    series = _noisy("train", xs, ys, TRAIN)
    return _card("loss", "Training loss", series, _latest(xs, ys, ".4f"), y_axis=ZERO)


def _dice(data: RunData) -> Card | None:
    xs, ys = data.column(data.train, "dice")
    series = _noisy("train", xs, ys, TRAIN)
    val_x, val_y = data.column(data.val, "val_dice")
    series.append(Series("validation", val_x, val_y, VAL, markers=len(val_x) <= 60))
    otsu_x, otsu_y = data.column(data.val, "val_otsu_dice")
    series.append(Series("Otsu on validation", otsu_x, otsu_y, OTSU, dashed=True, markers=False))
    rules = [Rule(data.best_step, "best")] if data.best_step is not None and val_x else []
    latest = _latest(val_x, val_y, ".4f") if val_x else _latest(xs, ys, ".4f")
    series = [s for s in series if s.x]
    return _card("dice", "Dice at 0.5", series, latest, y_axis=UNIT, rules=rules)


def _val_detail(data: RunData) -> Card | None:
    """Validation against the classical detectors, the y axis fitted to the second half of the
    run, where the differences that matter may be a few thousandths."""
    wanted = [
        ("Dice", "val_dice", VAL, False),
        ("Dice at the chosen cut", "val_threshold_dice", VAL, True),
        ("EMA weights, at their cut", "val_ema_threshold_dice", EMA, False),
        ("tissue mask", "val_dice_post", MASK, False),
        ("Otsu", "val_otsu_dice", OTSU, True),
        ("morphological", "val_morph_dice", MORPH, True),
        ("soft Dice", "val_soft_dice", SOFT, False),
        ("precision", "val_precision", PRECISION, False),
        ("recall", "val_recall", RECALL, False),
    ]
    series = [
        Series(label, *data.column(data.val, key), colour, dashed=dashed, markers=not dashed)
        for label, key, colour, dashed in wanted
    ]
    series = [s for s in series if s.x]
    if not series or len(data.val) < 2:
        return None
    start = data.val[len(data.val) // 2]["step"]
    late = [y for s in series for x, y in zip(s.x, s.y, strict=True) if x >= start]
    y_axis = YAxis(limits=(0.0, 1.0), focus=(min(late), max(late)))
    title = "Validation"
    return _card("val_detail", title, series, f"y axis fits steps ≥ {start:,}", y_axis=y_axis)


def _lr(data: RunData) -> Card | None:
    xs, ys = data.column(data.train, "lr")
    series = [Series("learning rate", xs, ys, LR)]
    return _card("lr", "Learning rate", series, _latest(xs, ys, ".2g"), y_axis=ZERO)


def _seconds(data: RunData) -> Card | None:
    xs, ys = data.column(data.train, "seconds")
    series = [Series("seconds per step", xs, ys, SECONDS)]
    return _card("seconds", "Seconds per step", series, _latest(xs, ys, ".2f"), y_axis=ZERO)


def _memory(data: RunData) -> Card | None:
    series = []
    readings = (("RSS", "peak_rss_bytes", RSS), ("engine", "peak_engine_bytes", ENGINE))
    for label, key, colour in readings:
        xs, ys = data.column(data.train, key)
        if xs:
            series.append(Series(f"peak {label}", xs, [y / 1e9 for y in ys], colour))
    latest = _latest(series[0].x, series[0].y, ".2f") if series else ""
    return _card("memory", "Peak memory, GB", series, latest, y_axis=ZERO)


CHARTS = (_loss, _dice, _val_detail, _lr, _seconds, _memory)


def chart_cards(data: RunData) -> list[Card]:
    """The charts this run has numbers for, in reading order."""
    return [card for card in (make(data) for make in CHARTS) if card is not None]
