"""`gigamlx report RUN`: the page is self-contained, shows every step, the configuration and
the overlays, degrades gracefully on partial runs, and bad input is a one-line error."""

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image
from report_fixture import make_run, write_overlay
from typer.testing import CliRunner

from gigamlx.cli import app
from gigamlx.report.page import REPORT, write_report
from gigamlx.report.run_data import ReportError, load_run

runner = CliRunner()


class Page(HTMLParser):
    """The parsed page: every start tag with its attributes, and the visible text."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: list[list[str]] = []  # table rows, the text of each cell
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.rows[-1].append("")
        elif tag == "br" and self.rows and self.rows[-1]:
            self.rows[-1][-1] += "\n"

    def handle_data(self, data):
        self.text.append(data)
        if self.rows and self.rows[-1]:
            self.rows[-1][-1] += data

    def all(self, tag: str, **attrs) -> list[dict]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]

    def series(self, chart: str) -> dict[str, int]:
        """{series label: points} of the chart with id svg-<chart> (in document order)."""
        found, inside = {}, False
        for tag, attrs in self.tags:
            if tag == "svg":
                inside = attrs.get("id") == f"svg-{chart}"
            elif inside and tag == "g" and "data-points" in attrs:
                found[attrs["data-label"]] = int(attrs["data-points"])
        return found

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def _page(run_dir, out=None) -> Page:
    return Page(write_report(run_dir, out).read_text())


def _rows(run_dir) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") != "val"], [r for r in rows if r.get("kind") == "val"]


def test_report_is_self_contained(tmp_path):
    page = _page(make_run(tmp_path / "run"))
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for _, attrs in page.tags:
        for name in ("src", "href", "srcset", "action"):
            value = attrs.get(name) or ""
            assert not value.lower().startswith(("http:", "https:", "//", "file:")), value
    html = (tmp_path / "run" / REPORT).read_text()
    assert "http://" not in html and "https://" not in html and "@import" not in html
    assert "url(" not in html.replace("url(#clip-", "")  # only the charts' own clip paths


def test_report_charts_have_a_point_per_step(tmp_path):
    run = make_run(tmp_path / "run", steps=120, val_every=20)
    train, val = _rows(run)
    page = _page(run)
    assert set(page.series("loss").values()) == {len(train)}  # raw and moving average
    dice = page.series("dice")
    assert dice["validation"] == len(val) == dice["Otsu on validation"]
    assert {dice[k] for k in dice if k.startswith("train")} == {len(train)}
    assert page.series("lr") == {"learning rate": len(train)}
    assert page.series("seconds") == {"seconds per step": len(train)}
    assert page.series("memory") == {"peak RSS": len(train), "peak engine": len(train)}
    detail = page.series("val_detail")
    assert set(detail) == {"Dice", "Otsu", "soft Dice", "precision", "recall"}
    assert set(detail.values()) == {len(val)}


@pytest.mark.parametrize("steps", [60, 200])  # the model below Otsu, then above
def test_report_header_shows_best_validation_against_otsu(tmp_path, steps):
    run = make_run(tmp_path / "run", steps=steps, val_every=10)
    _, val = _rows(run)
    best = max(val, key=lambda r: r["val_dice"])
    page = _page(run)
    words = page.words
    assert f"{best['val_dice']:.4f}" in words and f"step {best['step']}" in words
    assert f"Otsu {best['val_otsu_dice']:.4f}" in words
    delta = best["val_dice"] - best["val_otsu_dice"]
    assert f"{delta:+.4f} {'over' if delta >= 0 else 'under'} Otsu" in words
    tone = "good" if delta >= 0 else "bad"
    assert len([d for d in page.all("div") if d.get("class") == f"card fact {tone}"]) == 1
    assert "mlx" in words and "GB" in words and f"of {steps} planned" in words
    assert "validation 12.5 s each" in words


def test_report_shows_the_dice_at_the_cut_validation_chose(tmp_path):
    """Runs whose validation chose a threshold: the header gives the Dice `best` was kept for
    (at its cut), and the validation chart draws it beside the Dice at 0.5."""
    run = make_run(tmp_path / "run", steps=60, val_every=20, best=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    for row in rows:
        if row.get("kind") == "val":
            row |= {"val_threshold": 0.35, "val_threshold_dice": row["val_dice"] + 0.003}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = [r for r in rows if r.get("kind") == "val"][-1]
    page = _page(run)
    assert f"{best['val_threshold_dice']:.4f}" in page.words and "p ≥ 0.35" in page.words
    assert page.series("val_detail")["Dice at the chosen cut"] == 3
    assert "tissue (p ≥ 0.35)" in page.words  # the overlays are cut where validation chose


def test_report_shows_the_moving_average_beside_the_raw_weights(tmp_path):
    """Runs that validate the moving average of the weights: its series in the validation
    chart, and the header gives the Dice of the weights `best` holds (here the average's)."""
    run = make_run(tmp_path / "run", steps=60, val_every=20)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    for row in rows:
        if row.get("kind") == "val":
            row |= {"val_threshold": 0.35, "val_threshold_dice": row["val_dice"] + 0.003}
            row |= {"val_ema_threshold": 0.6, "val_ema_threshold_dice": row["val_dice"] + 0.004}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = [r for r in rows if r.get("kind") == "val"][-1]
    state = {"step": best["step"], "weights": "ema"}
    (run / "checkpoints" / "best" / "state.json").write_text(json.dumps(state))
    page = _page(run)
    assert page.series("val_detail")["EMA weights, at their cut"] == 3
    assert f"{best['val_ema_threshold_dice']:.4f}" in page.words and "p ≥ 0.6" in page.words
    assert "EMA weights" in page.words and load_run(run).best_weights == "ema"


def test_report_leads_with_the_tissue_mask_beside_both_detectors(tmp_path):
    """Runs whose validation scored a tissue mask: the header gives the mask's Dice (what
    `best` was kept for), its hole limit, the map at its cut, and the margin over the
    stronger detector."""
    run = make_run(tmp_path / "run", steps=60, val_every=20, best=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    for row in rows:
        if row.get("kind") == "val":
            row |= {"val_threshold": 0.35, "val_threshold_dice": 0.97, "val_dice_post": 0.995}
            row |= {"val_fill_holes_um2": 1e6, "val_otsu_dice": 0.98, "val_morph_dice": 0.992}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    words = _page(run).words
    assert "0.9950" in words and "tissue mask (holes ≤ 1 mm²)" in words
    assert "map 0.9700 at p ≥ 0.35" in words and "morph 0.9920" in words
    assert "+0.0030 over morph" in words
    drawn = _page(run).series("val_detail")
    assert drawn["tissue mask"] == 3 and "morphological" in drawn


def test_report_best_step_comes_from_the_best_checkpoint(tmp_path):
    run = make_run(tmp_path / "run", steps=60, val_every=10)
    (run / "checkpoints" / "best" / "state.json").write_text(json.dumps({"step": 20}))
    assert load_run(run).best_step == 20
    assert "step 20" in _page(run).words


def _as_shown(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == []:
        return "—"
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def test_report_shows_the_configuration(tmp_path):
    run = make_run(tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["tile"], config["note"] = 512, "<b>kept as text</b>"  # a key train does not know
    (run / "config.json").write_text(json.dumps(config))
    table = {row[0]: row[1] for row in _page(run).rows[1:]}  # after the header row
    assert table == {key: _as_shown(value) for key, value in config.items()}
    assert table["data"] == "a.zarr\nb.zarr" and table["augment"] == "yes"


def test_report_embeds_the_overlays(tmp_path):
    run = make_run(tmp_path / "run", overlays=("slide_a", "slide_b", "slide_c"))
    write_overlay(run / "val" / "wide_overlay.png", (4000, 1000))  # shrunk, given a whole row
    page = _page(run)
    images = page.all("img")
    assert len(images) == 4
    sizes = []
    for attrs in images:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        png = Image.open(io.BytesIO(base64.b64decode(attrs["src"][len(prefix) :])))
        sizes.append(png.size)
    assert sizes[:3] == [(96, 64)] * 3 and max(sizes[3]) == 1200
    assert sum("wide" in a.get("class", "") for a in page.all("figure")) == 1
    assert all(name in page.words for name in ("slide_a", "slide_b", "slide_c", "wide"))


def test_report_without_validation(tmp_path):
    run = make_run(tmp_path / "run", steps=30, val_every=None)
    page = _page(run)
    assert "validation" not in page.series("dice")
    assert page.series("val_detail") == {} and not page.all("img")
    assert "not in this run: validation, validation overlays" in page.words
    assert "train Dice" in page.words and "no validation in this run" in page.words


def test_report_of_a_single_step(tmp_path):
    run = make_run(tmp_path / "run", steps=1, val_every=1)
    page = _page(run)
    assert page.series("loss") == {"train": 1}
    assert page.series("dice") == {"train": 1, "validation": 1, "Otsu on validation": 1}
    assert page.all("circle")  # one point: drawn as a dot, not an invisible line


def test_report_of_an_empty_metrics_file_shows_the_configuration(tmp_path):
    run = make_run(tmp_path / "run", val_every=None)
    (run / "metrics.jsonl").write_text("")
    page = _page(run)
    assert not page.all("svg") and page.all("table")
    assert "training steps" in page.words


def test_report_without_lr_or_config(tmp_path):
    run = make_run(tmp_path / "run", steps=10, lr=False, config=False)
    page = _page(run)
    assert page.series("lr") == {} and not page.all("table")
    assert "learning rate" in page.words and "configuration (config.json)" in page.words


def test_report_skips_bad_lines_and_keeps_the_last_row_of_a_step(tmp_path):
    run = make_run(tmp_path / "run", steps=10, val_every=None)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 10, "loss": 0.5, "seconds": 1.0}\n{"step": 11, "lo\n[1, 2]\n')
    data = load_run(run)
    assert len(data.train) == 10 and data.train[-1]["loss"] == 0.5
    assert "skipped 2 unreadable line(s) of metrics.jsonl" in _page(run).words


def test_report_notes_an_unreadable_overlay(tmp_path):
    run = make_run(tmp_path / "run", overlays=("good",))
    (run / "val" / "bad_overlay.png").write_bytes(b"not a png")
    page = _page(run)
    assert len(page.all("img")) == 1 and "bad_overlay.png is unreadable" in page.words


def test_report_of_nothing_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="nothing to report"):
        write_report(tmp_path / "empty")
    assert not list((tmp_path / "empty").iterdir())  # nothing written


def test_cli_report_writes_the_page(tmp_path):
    run = make_run(tmp_path / "run")
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / REPORT).is_file() and "wrote" in result.output
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp file
    out = tmp_path / "elsewhere" / "page.html"
    result = runner.invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0 and Page(out.read_text()).all("svg")
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0 and (tmp_path / "elsewhere" / REPORT).is_file()  # a folder


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file, not a run folder"),
        (lambda p: (p / "e").mkdir() or p / "e", "nothing to report"),
    ],
)
def test_cli_report_bad_run_is_one_line(tmp_path, make, message):
    result = runner.invoke(app, ["report", str(make(tmp_path))])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_report_unwritable_out_is_one_line(tmp_path):
    run = make_run(tmp_path / "run", val_every=None)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "file" / "r.html")])
    assert result.exit_code == 2 and "choose another --out" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_report_of_a_real_training_run(tmp_path):
    from gigamlx.synth.slide import synth_slide

    slide = synth_slide(tmp_path / "s.zarr", (256, 320), seed=3)
    run = tmp_path / "run"
    small = ["--region", "256x320", "--memory-budget", "300MB", "--tile", "128", "--quiet"]
    result = runner.invoke(app, ["train", str(slide), *small, "--steps", "3", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    page = Page((run / REPORT).read_text())
    assert page.series("loss") == {"train": 3}
    assert page.series("memory") == {"peak RSS": 3, "peak engine": 3}
    assert "256x320" in page.words


def test_report_orders_overlays_hardest_first(tmp_path):
    run = make_run(tmp_path / "run", steps=40, overlays=("a", "b", "c"))
    (run / "val" / "unscored_overlay.png").write_bytes((run / "val" / "a_overlay.png").read_bytes())
    rows = (run / "metrics.jsonl").read_text().splitlines()
    last = json.loads(rows[-1])
    last["val_slides"] = {"a": 0.99, "b": 0.95, "c": 0.97}
    (run / "metrics.jsonl").write_text("\n".join([*rows[:-1], json.dumps(last)]) + "\n")
    page = _page(run)
    names = [a["alt"].split(":")[0] for a in page.all("img")]
    assert names == ["b", "c", "a", "unscored"]
    assert "Dice 0.9500 · hardest" in page.words and "Dice 0.9900" in page.words
