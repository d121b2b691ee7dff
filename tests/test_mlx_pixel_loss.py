"""The pure-MLX path's per-pixel surrogate (pixel_loss.py) against MLX's own ops."""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import numpy as np
import pytest
from reference import loss_terms

from gigamlx.backends.mlx import pixel_loss
from gigamlx.core.losses import objective, stats_from_rows

COEFFICIENTS = (0.7, -0.2, 0.3)  # (a, b, c): Dice's a*g + b and the BCE weight c
# saturated, tiny and moderate logits, both signs (not z == 0 itself: there MLX differentiates
# the reference's max(z, 0) and |z| piecewise)
EXTREME = [1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 9.0, -9.0, 20.0, -20.0, 86.0, -86.0, 150.0]


def _rel(actual: mx.array, expected: mx.array) -> float:
    return (mx.abs(actual - expected).max() / (mx.abs(expected).max() + 1e-30)).item()


def _logits(case: str) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(5)
    if case == "extreme":
        z = np.array(EXTREME * 3, np.float32).reshape(3, len(EXTREME))
    else:
        z = rng.standard_normal((37, 53)) * {"small": 0.3, "moderate": 4.0, "large": 30.0}[case]
    g = (rng.random(z.shape) > 0.4).astype(np.float32)
    return mx.array(z.astype(np.float32)), mx.array(g)


@pytest.mark.parametrize("case", ["small", "moderate", "large", "extreme"])
def test_surrogate_matches_mlx_ops_in_value_rows_and_gradient(case):
    z, g = _logits(case)
    a, b, c = COEFFICIENTS
    value, rows = pixel_loss.surrogate(z, g, COEFFICIENTS)
    assert rows.shape == (6, z.shape[0])
    assert _rel(value, pixel_loss.value_reference(z, g, a, b, c)) < 1e-6
    assert _rel(rows, pixel_loss.stat_rows_reference(z, g)) < 1e-6
    dz = mx.grad(lambda z: pixel_loss.surrogate(z, g, COEFFICIENTS)[0])(z)
    dz_ref = mx.grad(lambda z: pixel_loss.value_reference(z, g, a, b, c))(z)
    assert _rel(dz, dz_ref) < 1e-6


@pytest.mark.parametrize("case", ["small", "large", "extreme"])
def test_compiled_stat_rows_match_mlx_ops(case):
    z, g = _logits(case)
    assert _rel(pixel_loss.stat_rows(z, g), pixel_loss.stat_rows_reference(z, g)) < 1e-6


def test_bce_keeps_precision_where_one_plus_exp_rounds_to_one():
    """log1p(e) for tiny e: log(1 + e) would give 0 there, relative error 1."""
    z = mx.array([[17.0, 30.0, -17.0, -30.0]])
    g = mx.array([[1.0, 1.0, 0.0, 0.0]])  # each pixel right: its bce is log1p(exp(-|z|)) alone
    bce = pixel_loss.stat_rows(z, g)[3]
    expected = float(np.log1p(np.exp(-17.0)) * 2 + np.log1p(np.exp(-30.0)) * 2)
    assert abs(bce.item() - expected) / expected < 1e-6


def test_surrogate_takes_a_strided_crop_of_the_logits():
    """The path feeds a cropped view of the window's logits, not a contiguous array."""
    window, _ = _logits("moderate")
    z = window[3:30, 5:50]
    g = mx.array((np.arange(27 * 45).reshape(27, 45) % 3 == 0).astype(np.float32))
    value, rows = pixel_loss.surrogate(z, g, COEFFICIENTS)
    assert _rel(value, pixel_loss.value_reference(mx.contiguous(z), g, *COEFFICIENTS)) < 1e-6
    assert _rel(rows, pixel_loss.stat_rows_reference(mx.contiguous(z), g)) < 1e-6


@pytest.mark.parametrize("loss", ["dice", "dice+bce"])
@pytest.mark.parametrize("case", ["small", "moderate", "extreme"])
def test_surrogate_of_own_sums_is_the_loss_gradient_in_one_graph(case, loss):
    """Coefficients from the tile's own sums, inside the graph: the gradient of the whole
    loss of z (MLX's ops), and the value and rows of `surrogate` with those coefficients."""
    z, g = _logits(case)
    objective_of = partial(objective, loss, pixels=g.size)
    value, rows = pixel_loss.surrogate_of_own_sums(z, g, objective_of)
    coefficients = objective_of(stats_from_rows(np.array(rows), g.size))
    expected_value, expected_rows = pixel_loss.surrogate(z, g, coefficients)
    assert _rel(value, expected_value) < 1e-6 and _rel(rows, expected_rows) == 0.0
    dz = mx.grad(lambda z: pixel_loss.surrogate_of_own_sums(z, g, objective_of)[0])(z)
    dz_ref = mx.grad(lambda z: loss_terms(z, g, loss, mx))(z)
    assert _rel(dz, dz_ref) < 1e-5


@pytest.mark.parametrize("case", ["small", "moderate", "large", "extreme"])
def test_surrogate_without_stats_has_the_same_bits(case):
    """The gradient that computes p from z again equals the one reading the forward's p, bit
    for bit, and both the reference's; the value and rows are unchanged."""
    z, g = _logits(case)
    a, b, c = COEFFICIENTS
    outputs = {}
    for with_stats in (True, False):

        def value_of(z, with_stats=with_stats):
            return pixel_loss.surrogate(z, g, COEFFICIENTS, with_stats)[0]

        value, rows = pixel_loss.surrogate(z, g, COEFFICIENTS, with_stats)
        outputs[with_stats] = (value, rows, mx.grad(value_of)(z))
    for got, expected in zip(outputs[False], outputs[True], strict=True):
        assert mx.array_equal(got.view(mx.uint32), expected.view(mx.uint32)).item()
    dz_ref = mx.grad(lambda z: pixel_loss.value_reference(z, g, a, b, c))(z)
    assert _rel(outputs[False][2], dz_ref) < 1e-6
