"""The report page's stylesheet: system fonts, cards on a quiet background, a responsive
grid of small multiples, and a print layout (white, no shadows, nothing split across pages)."""

CSS = """
:root {
  --ink: #111827; --muted: #6b7280; --faint: #9ca3af; --line: #e5e7eb;
  --paper: #ffffff; --ground: #f5f6f8; --good: #047857; --bad: #b91c1c;
  --mono: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--ground); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
    "DejaVu Sans", Arial, sans-serif;
  font-variant-numeric: tabular-nums;
}
main { max-width: 1200px; margin: 0 auto; padding: 32px 24px 48px; }
code, .mono { font-family: var(--mono); font-size: 0.86em; }
h1 { font-size: 28px; line-height: 1.2; margin: 2px 0 4px; letter-spacing: -0.01em; }
h2 {
  font-size: 13px; text-transform: uppercase; letter-spacing: 0.08em; color: var(--muted);
  margin: 36px 0 12px; font-weight: 600;
}
.eyebrow { color: var(--muted); font-size: 13px; letter-spacing: 0.04em; }
.where { color: var(--muted); margin: 0 0 20px; font-size: 14px; overflow-wrap: anywhere; }
.card {
  background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
  box-shadow: 0 1px 2px rgba(17, 24, 39, 0.04);
}
.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: 12px; }
.fact { padding: 14px 16px; }
.fact .label { color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: 0.06em; }
.fact .value { font-size: 26px; font-weight: 650; line-height: 1.25; margin: 4px 0 2px; }
.fact .detail { color: var(--muted); font-size: 13px; line-height: 1.4; }
.fact.good .delta { color: var(--good); font-weight: 600; }
.fact.bad .delta { color: var(--bad); font-weight: 600; }
.notes { margin: 14px 0 0; color: var(--muted); font-size: 13px; }
.notes span { display: inline-block; background: #eef0f3; border-radius: 999px;
  padding: 1px 10px; margin: 2px 6px 2px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }
.chart-card { padding: 14px 14px 8px; }
.chart-card header { display: flex; justify-content: space-between; align-items: baseline;
  gap: 8px; }
.chart-card h3 { font-size: 15px; margin: 0; font-weight: 600; }
.chart-card .latest { color: var(--muted); font-size: 12px; white-space: nowrap; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 6px 0 2px;
  font-size: 12px; color: var(--muted); }
.legend i { display: inline-block; width: 16px; height: 0; border-top: 2.5px solid;
  vertical-align: middle; margin-right: 6px; }
.legend i.dashed { border-top-style: dashed; }
svg.chart { width: 100%; height: auto; display: block; overflow: visible; }
svg.chart text { font-family: inherit; fill: var(--muted); }
svg.chart .tick { font-size: 11px; }
svg.chart .axis-label { font-size: 11.5px; fill: var(--faint); }
svg.chart .grid { stroke: #eef0f3; stroke-width: 1; }
svg.chart .axis { stroke: #c7cbd1; stroke-width: 1; }
svg.chart .series polyline { stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .series.faint polyline { stroke-width: 1; opacity: 0.28; }
svg.chart .series.dashed polyline { stroke-width: 1.6; stroke-dasharray: 5 4; }
svg.chart .series circle { stroke: #fff; stroke-width: 1; }
svg.chart .marker line { stroke: #9ca3af; stroke-width: 1; stroke-dasharray: 2 3; }
svg.chart .marker text { font-size: 10.5px; fill: var(--ink); font-weight: 600; }
.overlays { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr));
  gap: 14px; }
figure { margin: 0; padding: 10px; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; border-radius: 6px;
  background: #fafafa; image-rendering: auto; }
figcaption { display: flex; justify-content: space-between; gap: 8px; font-size: 13px;
  padding: 8px 2px 0; }
figcaption .detail { color: var(--muted); }
.caption { color: var(--muted); font-size: 13px; margin: -4px 0 12px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  vertical-align: -1px; margin: 0 4px 0 8px; }
table.config { width: 100%; border-collapse: collapse; font-size: 14px; overflow: hidden; }
table.config th, table.config td { text-align: left; padding: 8px 16px;
  border-bottom: 1px solid var(--line); vertical-align: top; }
table.config tr:last-child td { border-bottom: 0; }
table.config thead th { font-size: 12px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: 0.06em; background: #fafbfc; }
table.config td.key { font-family: var(--mono); font-size: 13px; white-space: nowrap; }
table.config td.value { font-family: var(--mono); font-size: 13px; width: 42%;
  overflow-wrap: anywhere; }
table.config td.help { color: var(--muted); }
.none { color: var(--faint); }
footer { margin-top: 36px; color: var(--faint); font-size: 12px; }
@media (max-width: 640px) {
  main { padding: 20px 14px 32px; }
  h1 { font-size: 22px; }
  .facts { grid-template-columns: repeat(2, 1fr); }
  table.config td.help { display: none; }
}
@media print {
  body { background: #fff; font-size: 12px; }
  main { max-width: none; padding: 0; }
  .card { box-shadow: none; border-color: #d1d5db; }
  .grid { grid-template-columns: repeat(2, 1fr); }
  .overlays { grid-template-columns: repeat(2, 1fr); }
  .card, figure, tr { break-inside: avoid; }
  h2 { break-after: avoid; }
}
"""
