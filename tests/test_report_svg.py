"""The hand-written SVG charts: nice ticks, tick labels, one vertex per finite point."""

import math
import re

import pytest

from gigamlx.report.svg import (
    Rule,
    Series,
    YAxis,
    format_tick,
    line_chart,
    nice_domain,
    nice_step,
    ticks,
)


@pytest.mark.parametrize(
    "lo, hi", [(1, 10), (0.55, 0.993), (3e-5, 1e-3), (1, 4940), (-2.5, 7.1), (0.98, 0.981)]
)
def test_nice_domain_covers_the_data_with_round_ticks(lo, hi):
    start, stop, step = nice_domain(lo, hi, 5)
    assert start <= lo and stop >= hi
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9
    values = ticks(start, stop, step)
    assert 2 <= len(values) - 1 <= 10  # about `count` intervals, never hundreds
    assert values[0] == pytest.approx(start) and values[-1] == pytest.approx(stop)


def test_nice_domain_gives_a_flat_range_room():
    start, stop, _ = nice_domain(1e-3, 1e-3)
    assert start < 1e-3 < stop
    start, stop, _ = nice_domain(0.0, 0.0)
    assert start < 0 < stop


def test_nice_step_is_about_a_fifth_of_the_span():
    assert nice_step(10, 5) == 2
    assert nice_step(1, 5) == pytest.approx(0.2)
    assert nice_step(5000, 5) == 1000


@pytest.mark.parametrize(
    "value, step, text",
    [
        (0, 0.1, "0"),
        (0.25, 0.05, "0.25"),
        (0.9, 0.1, "0.9"),
        (4000, 1000, "4,000"),
        (20000, 5000, "20k"),
        (0.0004, 0.0002, "0.0004"),
        (2e-5, 1e-5, "2e-5"),
        (1.5e-5, 5e-6, "1.5e-5"),
    ],
)
def test_format_tick(value, step, text):
    assert format_tick(value, step) == text


def _vertices(svg: str) -> list[list[tuple[float, float]]]:
    polylines = re.findall(r'<polyline[^>]* points="([^"]*)"', svg)
    return [[tuple(map(float, p.split(","))) for p in line.split()] for line in polylines]


def _y_labels(svg: str) -> list[str]:
    return re.findall(r'class="tick"[^>]*text-anchor="end"[^>]*>([^<]*)<', svg)


def _x_labels(svg: str) -> list[str]:
    return re.findall(r'class="tick"[^>]*text-anchor="middle"[^>]*>([^<]*)<', svg)


def test_line_chart_has_one_vertex_per_finite_point():
    xs = list(range(1, 11))
    ys = [1.0 / x for x in xs]
    ys[3] = math.nan
    svg = line_chart([Series("loss", xs, ys, "#000")], "loss", "c1")
    (points,) = _vertices(svg)
    assert len(points) == 9
    assert 'data-points="9"' in svg
    assert svg.count("<circle") == 9  # few points: each one marked
    xs_px = [x for x, _ in points]
    assert xs_px == sorted(xs_px)  # steps go left to right
    assert points[0][1] < points[-1][1]  # falling loss: the first point is higher (smaller y)


def test_line_chart_puts_points_inside_the_plot_area():
    svg = line_chart([Series("a", [1, 2, 3], [0.2, 0.9, 0.5], "#000")], "t", "c2")
    width, height = map(float, re.search(r'viewBox="0 0 (\S+) (\S+)"', svg).groups())
    for x, y in _vertices(svg)[0]:
        assert 0 < x < width and 0 < y < height


def test_line_chart_of_a_single_point_draws_a_dot():
    svg = line_chart([Series("loss", [1], [0.7], "#123456")], "loss", "c3")
    assert svg.count("<circle") == 1
    assert len(_vertices(svg)[0]) == 1


def test_line_chart_of_nothing_is_empty():
    assert line_chart([], "t", "c4") == ""
    assert line_chart([Series("a", [1, 2], [math.nan, math.inf], "#000")], "t", "c5") == ""


def test_line_chart_respects_limits_and_zero():
    series = [Series("dice", [1, 2, 3], [0.6, 0.95, 0.999], "#000")]
    svg = line_chart(series, "d", "c6", y_axis=YAxis((0, 1)))
    assert max(float(t) for t in _y_labels(svg)) <= 1.0
    assert _x_labels(svg) == ["1", "2", "3"]  # steps: whole numbers only
    zero = line_chart(series, "d", "c7", y_axis=YAxis(from_zero=True))
    assert ">0<" in zero


def test_line_chart_focus_clips_outside_points():
    series = [Series("dice", [1, 2, 3, 4], [0.3, 0.98, 0.99, 0.992], "#000")]
    svg = line_chart(series, "d", "c8", y_axis=YAxis(focus=(0.98, 0.992)))
    assert 'clip-path="url(#clip-c8)"' in svg and 'id="clip-c8"' in svg
    assert float(_y_labels(svg)[0]) >= 0.9  # the axis starts near the focus, not at 0.3


def test_line_chart_draws_rules_and_escapes_labels():
    series = [Series("a<b", [1, 50, 100], [1, 2, 3], "#000")]
    svg = line_chart(series, "t&", "c9", rules=[Rule(50, "best"), Rule(1e6, "off")])
    assert ">best<" in svg and ">off<" not in svg  # a rule off the axis is left out
    assert "a<b" not in svg and "a&lt;b" in svg and "t&amp;" in svg
