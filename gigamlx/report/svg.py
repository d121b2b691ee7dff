"""Static SVG line charts written by hand: nice ticks, grid, axes, labels; no JS, no deps.

A chart is a string of `<svg>` markup with a viewBox, so it scales with the page and prints
crisp. Colours and fonts come from the caller and the page's CSS (classes `grid`, `axis`,
`tick`, `series`, `marker`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import NamedTuple


class Series(NamedTuple):
    """One line: points (x, y) in data units, drawn in `colour`."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str
    dashed: bool = False
    markers: bool | None = None  # None: dots when there are few points
    faint: bool = False  # thin and light: raw values under a smoothed line


class Rule(NamedTuple):
    """A vertical reference line at `x` (e.g. the best step), labelled at the top."""

    x: float
    label: str


class Frame(NamedTuple):
    """The plot area in SVG pixels and the data domain it shows."""

    left: float
    top: float
    right: float
    bottom: float
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def px(self, x: float, y: float) -> tuple[float, float]:
        fx = (x - self.x_lo) / (self.x_hi - self.x_lo)
        fy = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (
            self.bottom - self.top
        )


MARGIN = {"left": 50.0, "top": 18.0, "right": 14.0, "bottom": 36.0}
FEW_POINTS = 40


def nice_step(span: float, count: int) -> float:
    """A tick spacing of 1, 2 or 5 times a power of ten giving about `count` intervals."""
    raw = span / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0):
        if raw <= factor * magnitude * 1.5:
            return factor * magnitude
    return 10.0 * magnitude


def nice_domain(
    lo: float, hi: float, count: int = 5, min_step: float = 0.0
) -> tuple[float, float, float]:
    """(lo, hi, step): the data range widened to whole ticks; a flat range gets some room.

    min_step: the smallest tick spacing, e.g. 1 on an axis of steps (no tick at step 1.5).
    """
    if hi - lo <= abs(hi) * 1e-9:
        pad = max(abs(hi) * 0.1, min_step) or 1.0
        lo, hi = lo - pad, hi + pad
    step = max(nice_step(hi - lo, count), min_step)
    start = round(math.floor(lo / step + 1e-9) * step, 12)  # 0.98, not 0.9800000000000001
    stop = round(math.ceil(hi / step - 1e-9) * step, 12)
    return start, stop, step


def ticks(lo: float, hi: float, step: float) -> list[float]:
    """Tick values from lo to hi (inclusive) every step, rounded clear of float noise."""
    count = int(round((hi - lo) / step))
    return [round(lo + i * step, 12) for i in range(count + 1)]


def format_tick(value: float, step: float) -> str:
    """Shortest label that tells ticks `step` apart: 0.25, 1,000, 20k, 2e-5."""
    if value == 0:
        return "0"
    if step < 1e-4:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if step >= 1000 and abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:,.{decimals}f}"


def _finite(series: Series) -> list[tuple[float, float]]:
    pairs = zip(series.x, series.y, strict=True)
    return [(float(x), float(y)) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]


class YAxis(NamedTuple):
    """How the y range is chosen: from the data (widened to nice ticks), from zero, clamped
    to hard limits, or a given `focus` range (points outside it are clipped)."""

    limits: tuple[float, float] | None = None  # e.g. Dice never leaves [0, 1]
    from_zero: bool = False
    focus: tuple[float, float] | None = None


def _frame(points, width, height, y_axis: YAxis, x_count, y_count):
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x_lo, x_hi, x_step = nice_domain(min(xs), max(xs), x_count, min_step=1.0)  # steps
    y_min, y_max = y_axis.focus or (min(ys), max(ys))
    if y_axis.from_zero:
        y_min, y_max = min(y_min, 0.0), max(y_max, 0.0)
    y_lo, y_hi, y_step = nice_domain(y_min, y_max, y_count)
    if y_axis.limits is not None:  # no tick at 1.2 on a Dice axis
        y_lo, y_hi = max(y_lo, y_axis.limits[0]), min(y_hi, y_axis.limits[1])
    frame = Frame(
        MARGIN["left"],
        MARGIN["top"],
        width - MARGIN["right"],
        height - MARGIN["bottom"],
        x_lo,
        x_hi,
        y_lo,
        y_hi,
    )
    return frame, x_step, y_step


def _axes(frame: Frame, x_step: float, y_step: float, x_label: str) -> list[str]:
    parts = []
    for y in ticks(frame.y_lo, frame.y_hi, y_step):
        _, py = frame.px(frame.x_lo, y)
        parts.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.right}" y1="{py:.1f}" y2="{py:.1f}"/>'
            f'<text class="tick" x="{frame.left - 6}" y="{py:.1f}" text-anchor="end" '
            f'dominant-baseline="middle">{format_tick(y, y_step)}</text>'
        )
    for x in ticks(frame.x_lo, frame.x_hi, x_step):
        px, _ = frame.px(x, frame.y_lo)
        parts.append(
            f'<line class="axis" x1="{px:.1f}" x2="{px:.1f}" y1="{frame.bottom}" '
            f'y2="{frame.bottom + 4}"/><text class="tick" x="{px:.1f}" y="{frame.bottom + 16}" '
            f'text-anchor="middle">{format_tick(x, x_step)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{frame.left}" x2="{frame.right}" '
        f'y1="{frame.bottom}" y2="{frame.bottom}"/>'
        f'<text class="axis-label" x="{(frame.left + frame.right) / 2:.1f}" '
        f'y="{frame.bottom + 31}" text-anchor="middle">{escape(x_label)}</text>'
    )
    return parts


def _series(frame: Frame, series: Series, points: list[tuple[float, float]]) -> str:
    pixels = [frame.px(x, y) for x, y in points]
    style = "faint" if series.faint else "dashed" if series.dashed else "solid"
    label = escape(series.label, quote=True)
    out = [f'<g class="series {style}" data-label="{label}" data-points="{len(points)}">']
    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in pixels)
    out.append(f'<polyline fill="none" stroke="{series.colour}" points="{coords}"/>')
    dots = series.markers if series.markers is not None else len(points) <= FEW_POINTS
    if dots and not series.faint:
        out += [
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.6" fill="{series.colour}"/>'
            for px, py in pixels
        ]
    out.append("</g>")
    return "".join(out)


def _rule(frame: Frame, rule: Rule) -> str:
    """A dotted vertical line, labelled in the margin above the plot, where no curve runs."""
    px, _ = frame.px(rule.x, frame.y_lo)
    anchor = "end" if px > frame.right - 20 else "start" if px < frame.left + 20 else "middle"
    return (
        f'<g class="marker"><line x1="{px:.1f}" x2="{px:.1f}" y1="{frame.top}" '
        f'y2="{frame.bottom}"/><text x="{px:.1f}" y="{frame.top - 4}" '
        f'text-anchor="{anchor}">{escape(rule.label)}</text></g>'
    )


def _clip(frame: Frame, chart_id: str) -> str:
    """A clip path of the plot area (a little wider, so dots on its edges stay round)."""
    return (
        f'<defs><clipPath id="clip-{chart_id}"><rect x="{frame.left - 4}" y="{frame.top - 4}" '
        f'width="{frame.right - frame.left + 8}" height="{frame.bottom - frame.top + 8}"/>'
        "</clipPath></defs>"
    )


def line_chart(
    series: Sequence[Series],
    title: str,
    chart_id: str,
    x_label: str = "step",
    y_axis: YAxis = YAxis(),
    rules: Sequence[Rule] = (),
    size_px: tuple[int, int] = (360, 210),
) -> str:
    """An `<svg>` line chart of `series` against a shared x axis; "" when nothing is finite.

    Args:
        series: the lines, drawn in order (faint raw values first, then the rest).
        title: the accessible name of the chart (the page shows its own heading).
        chart_id: unique on the page (names the chart's clip path).
        x_label: the x axis caption.
        y_axis: how the y range is chosen (see YAxis).
        rules: vertical reference lines, e.g. the best step.
        size_px: (width, height) of the viewBox; the page scales it to the card.
    """
    drawn = [(s, _finite(s)) for s in series]
    drawn = [(s, p) for s, p in drawn if p]
    if not drawn:
        return ""
    width, height = size_px
    points = [p for _, ps in drawn for p in ps]
    frame, x_step, y_step = _frame(points, width, height, y_axis, 5, 4)
    body = [_clip(frame, chart_id), *_axes(frame, x_step, y_step, x_label)]
    body += [_rule(frame, r) for r in rules if frame.x_lo <= r.x <= frame.x_hi]
    lines = "".join(_series(frame, s, p) for s, p in drawn)
    body.append(f'<g clip-path="url(#clip-{chart_id})">{lines}</g>')
    return (
        f'<svg class="chart" id="svg-{chart_id}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title, quote=True)}"><title>{escape(title)}</title>'
        f"{''.join(body)}</svg>"
    )
