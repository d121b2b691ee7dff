"""`gigamlx report RUN`: one self-contained HTML page of a run, written atomically.

Charts are inline SVG, overlays inline base64 PNG, the style inline CSS: the file opens
anywhere, offline, and prints. No scripts, nothing fetched.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from gigamlx.report.charts import Card, chart_cards
from gigamlx.report.facts import Fact, key_facts, missing
from gigamlx.report.run_data import Overlay, ReportError, RunData, load_run
from gigamlx.report.style import CSS
from gigamlx.runs.config import TrainConfig
from gigamlx.runs.files import write_text_atomic

REPORT = "report.html"
OVERLAY_MAX_SIDE_PX = 1200  # sharp in a full-width figure; about 1 MB a slide
TISSUE_TINT, TISSUE_OUTLINE = "#00be5a", "#006e28"  # as gigamlx.infer.export draws them


def _fact_html(fact: Fact) -> str:
    delta = f' · <span class="delta">{escape(fact.delta)}</span>' if fact.delta else ""
    return (
        f'<div class="card fact {fact.tone}"><div class="label">{escape(fact.label)}</div>'
        f'<div class="value">{escape(fact.value)}</div>'
        f'<div class="detail">{escape(fact.detail)}{delta}</div></div>'
    )


def _header(data: RunData, generated: str) -> str:
    notes = [escape(p) for p in data.problems]
    absent = missing(data)
    if absent:
        notes.insert(0, "not in this run: " + ", ".join(absent))
    notes_html = "".join(f"<span>{n}</span>" for n in notes)
    name = data.run_dir.resolve().name or str(data.run_dir)
    return (
        '<header><div class="eyebrow">gigamlx · training run report</div>'
        f"<h1>{escape(name)}</h1>"
        f'<p class="where"><code>{escape(str(data.run_dir))}</code> · {escape(generated)}</p>'
        f'<div class="facts">{"".join(_fact_html(f) for f in key_facts(data))}</div>'
        + (f'<p class="notes">{notes_html}</p>' if notes else "")
        + "</header>"
    )


def _swatch(series) -> str:
    dashed = ' class="dashed"' if series.dashed else ""
    line = f'<i{dashed} style="border-color:{series.colour}"></i>'
    return f"<span>{line}{escape(series.label)}</span>"


def _chart_html(card: Card) -> str:
    legend = "".join(_swatch(s) for s in card.legend)
    return (
        f'<article class="card chart-card" id="chart-{card.key}"><header>'
        f"<h3>{escape(card.title)}</h3>"
        f'<span class="latest">{escape(card.latest)}</span></header>'
        f'<div class="legend">{legend}</div>{card.svg}</article>'
    )


def _charts(data: RunData) -> str:
    cards = chart_cards(data)
    if not cards:
        return ""
    body = "".join(_chart_html(card) for card in cards)
    return f'<section><h2>Curves against step</h2><div class="grid">{body}</div></section>'


def png_data_uri(path: Path, max_side_px: int = OVERLAY_MAX_SIDE_PX) -> tuple[str, float]:
    """(data: URI of the image at `path` as a PNG at most max_side_px a side, width/height)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
        # 256 colours: a third smaller than RGB on slide texture, and looks the same
        palette = image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        palette.save(buffer, format="PNG", compress_level=9)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return uri, image.width / image.height


def _slide_dice(data: RunData) -> dict[str, float]:
    """{slide: Dice} of the newest validation, when it scored slides one by one."""
    per_slide = data.val[-1].get("val_slides") if data.val else None
    if not isinstance(per_slide, dict):
        return {}
    return {k: v for k, v in per_slide.items() if isinstance(v, int | float)}


def _figure(overlay: Overlay, data: RunData, note: str) -> str | None:
    try:
        uri, aspect = png_data_uri(overlay.path)
    except (OSError, ValueError) as error:  # Pillow: UnidentifiedImageError is an OSError
        data.problems.append(f"overlay {overlay.path.name} is unreadable ({error})")
        return None
    name = escape(overlay.slide)
    wide = " wide" if aspect > 2.2 else ""  # a 16000x64000 strip gets the whole row
    return (
        f'<figure class="card{wide}"><img src="{uri}" alt="{name}: predicted tissue">'
        f'<figcaption><span class="mono">{name}</span>'
        f'<span class="detail">{escape(note)}</span></figcaption></figure>'
    )


def _overlay_notes(data: RunData) -> list[tuple[Overlay, str]]:
    """Overlays with their caption notes; scored ones hardest first, where a reader looks."""
    dice = _slide_dice(data)
    scored = sorted((o for o in data.overlays if o.slide in dice), key=lambda o: dice[o.slide])
    notes = [(o, f"Dice {dice[o.slide]:.4f}") for o in scored]
    if len(notes) > 1:
        notes[0] = (notes[0][0], notes[0][1] + " · hardest")
    return notes + [(o, "") for o in data.overlays if o.slide not in dice]


def _overlays(data: RunData) -> str:
    figures = [f for f in (_figure(o, data, note) for o, note in _overlay_notes(data)) if f]
    if not figures:
        return ""
    latest = f" at step {data.val[-1]['step']:,}" if data.val else ""
    cut = data.val[-1].get("val_threshold") if data.val else None
    cut_text = f"{cut:g}" if isinstance(cut, int | float) else "0.5"  # runs before cuts were chosen
    caption = (
        f"Each validation slide as last predicted{latest}: tissue (p ≥ {cut_text}) tinted"
        f'<i class="swatch" style="background:{TISSUE_TINT};opacity:.45"></i>and outlined'
        f'<i class="swatch" style="background:{TISSUE_OUTLINE}"></i>'
    )
    return (
        f'<section><h2>Validation overlays</h2><p class="caption">{caption}</p>'
        f'<div class="overlays">{"".join(figures)}</div></section>'
    )


def _value_html(value) -> str:
    if value is None or value == [] or value == "":
        return '<span class="none">—</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "<br>".join(escape(str(v)) for v in value)
    return escape(str(value))


def _config(data: RunData) -> str:
    if not data.config:
        return ""
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    rows = "".join(
        f'<tr><td class="key">{escape(str(key))}</td><td class="value">{_value_html(value)}'
        f'</td><td class="help">{escape(helps.get(key, ""))}</td></tr>'
        for key, value in data.config.items()
    )
    head = "<thead><tr><th>setting</th><th>value</th><th>meaning</th></tr></thead>"
    return (
        '<section><h2>Configuration <span class="mono">config.json</span></h2>'
        f'<table class="card config">{head}<tbody>{rows}</tbody></table></section>'
    )


def render_page(data: RunData, now: datetime | None = None) -> str:
    """The whole HTML document for `data`."""
    generated = (now or datetime.now(UTC)).strftime("generated %Y-%m-%d %H:%M UTC")
    # overlays and charts first: an unreadable overlay is noted in the header
    body = _charts(data) + _overlays(data) + _config(data)
    title = escape(data.run_dir.resolve().name or str(data.run_dir))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title} · gigamlx run report</title><style>{CSS}</style></head>"
        f"<body><main>{_header(data, generated)}{body}"
        "<footer>Written by <code>gigamlx report</code>. One self-contained file: no scripts, "
        "nothing fetched; charts are SVG, images are embedded.</footer></main></body></html>\n"
    )


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Render the report of `run_dir` to `out` (default RUN/report.html); return the path.

    Raises:
        ReportError: `run_dir` is not a run folder or holds nothing to report.
    """
    data = load_run(Path(run_dir))
    out = Path(out) if out is not None else data.run_dir / REPORT
    if out.is_dir():
        out = out / REPORT
    page = render_page(data)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, page)  # a reader never sees half a page
    except OSError as error:
        raise ReportError(f"cannot write {out} ({error.strerror}); choose another --out") from None
    return out
