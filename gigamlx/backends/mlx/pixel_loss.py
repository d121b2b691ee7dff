"""A tile's surrogate and statistics per pixel on the pure-MLX path: one exp and one log.

For logits z and targets g on a tile's owned pixels, with p = sigmoid(z) and
bce = max(z, 0) - z*g + log1p(exp(-|z|)):

    value = sum((a*g + b) * p) + c * sum(bce)        dvalue/dz = (a*g + b)*p*(1 - p) + c*(p - g)
    rows  = per-row sums of p*g, p, g, bce, hard*g, hard   (hard = z > 0; losses.STAT_ROWS)

The straightforward graph (`value_reference`, `stat_rows_reference`) evaluates sigmoid twice,
exp(-|z|) twice and log1p twice per pixel, and MLX's autodiff adds a dozen more full-resolution
passes. Inside `value_and_grad` MLX runs compiled functions op by op (their inputs are
tracers), so the pass count is what a tile pays. Here one e = exp(-|z|) gives both p and the
log1p term, and the derivative above is written out in a custom vjp.

Two substitutions, both for MLX's Linux CPU build, where exp and log1p run element by element
through libm's fmaf, several times slower than `2**x` and `log` (docs/experiments.md):
e = 2**(-|z| * log2 e), whose rounding of the exponent costs at most
|z| * 2**-24 relative, i.e. < 3e-8 absolute for e <= 1; and log1p(e) by Kahan's
`log(u) * e / (u - 1)` with u = 1 + e (e itself where u rounds to 1), accurate to a few ulps.
On Metal all of these are fast either way; the saving there is the passes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from math import e as EULER
from math import log2

import mlx.core as mx

from gigamlx.core.losses import STAT_ROWS, Objective, TileStats

LOG2_E = log2(EULER)


def value_reference(z: mx.array, g: mx.array, a: float, b: float, c: float) -> mx.array:
    """The surrogate as MLX's own ops: what `surrogate` must equal (tests)."""
    return mx.sum((a * g + b) * mx.sigmoid(z)) + c * mx.sum(bce_reference(z, g))


def bce_reference(z: mx.array, g: mx.array) -> mx.array:
    """Per-pixel binary cross-entropy from logits, stable for large |z|."""
    return mx.maximum(z, 0) - z * g + mx.log1p(mx.exp(-mx.abs(z)))


def stat_rows_reference(z: mx.array, g: mx.array) -> mx.array:
    """Per-row sums (6, h) in the order of losses.STAT_ROWS, as MLX's own ops (tests)."""
    p = mx.sigmoid(z)
    hard = (z > 0).astype(mx.float32)
    parts = [p * g, p, g, bce_reference(z, g), hard * g, hard]
    return mx.stack([mx.sum(v, axis=1) for v in parts])


def _sigmoid_parts(z: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """(e, u, p): e = exp(-|z|), u = 1 + e and p = sigmoid(z) (see the module doc)."""
    e = mx.power(mx.array(2.0, mx.float32), mx.abs(z) * -LOG2_E)
    u = 1.0 + e
    return e, u, mx.where(z >= 0, 1.0, e) / u


def _p_and_bce(z: mx.array, g: mx.array) -> tuple[mx.array, mx.array]:
    """sigmoid(z) and bce(z, g) from one e = exp(-|z|) (see the module doc)."""
    e, u, p = _sigmoid_parts(z)
    log1p_e = mx.where(u == 1.0, e, mx.log(u) * (e / (u - 1.0)))
    return p, mx.maximum(z, 0) - z * g + log1p_e


def _rows(z: mx.array, g: mx.array, p: mx.array, bce: mx.array) -> mx.array:
    hard = (z > 0).astype(mx.float32)
    return mx.stack([mx.sum(v, axis=1) for v in (p * g, p, g, bce, hard * g, hard)])


def _stat_rows(z: mx.array, g: mx.array) -> mx.array:
    """Per-row sums (6, h) of p*g, p, g, bce, hard*g, hard for logits z (h, w), g (h, w)."""
    p, bce = _p_and_bce(z, g)
    return _rows(z, g, p, bce)


# compiled: it serves a tile's forward sums, where nothing is differentiated, so the
# element-wise ops fuse
stat_rows = mx.compile(_stat_rows)


# (rows (6, h), given (3,)) -> the surrogate's coefficients (a, b, c), float32 (3,)
CoefficientsOf = Callable[[mx.array, mx.array], mx.array]


def _make_surrogate(coefficients_of: CoefficientsOf, p_from_forward: bool = True):
    """The surrogate as a custom function. With `p_from_forward` False (coefficients given, no
    stats wanted) the vjp computes p from z again: reading the forward's outputs would make
    MLX evaluate all of them (bce, rows, value) only for p."""

    @mx.custom_function
    def surrogate(z: mx.array, g: mx.array, given: mx.array):
        p, bce = _p_and_bce(z, g)
        rows = _rows(z, g, p, bce)
        coefficients = coefficients_of(rows, given)
        a, b, c = coefficients[0], coefficients[1], coefficients[2]
        value = mx.sum((a * g + b) * p) + c * mx.sum(bce)
        return value, rows, p, coefficients

    @surrogate.vjp
    def surrogate_vjp(primals, cotangents, outputs):
        # only the value carries a gradient: rows, p and the coefficients are statistics
        z, g, given = primals
        if p_from_forward:
            p, coefficients = outputs[2], outputs[3]
        else:
            p, coefficients = _sigmoid_parts(z)[2], given
        a, b, c = coefficients[0], coefficients[1], coefficients[2]
        dz = cotangents[0] * ((a * g + b) * (p * (1.0 - p)) + c * (p - g))
        return dz, mx.zeros_like(g), mx.zeros_like(given)

    return surrogate


@cache
def _given_surrogate(p_from_forward: bool):
    return _make_surrogate(lambda rows, given: given, p_from_forward)


def surrogate(
    z: mx.array, g: mx.array, coefficients: tuple[float, float, float], with_stats: bool = True
) -> tuple[mx.array, mx.array]:
    """value () = sum((a*g + b)*p) + c*sum(bce), differentiable in z, and rows (6, h), not.

    Args:
        z: (h, w) logits of a tile's owned pixels.
        g: (h, w) float32 {0, 1} targets.
        coefficients: (a, b, c), losses.Objective.
        with_stats: whether the value or rows will be evaluated. Without, the gradient reads
            z alone and the forward (bce, rows, value) is never evaluated; with, the gradient
            reuses the forward's p. Same values either way.
    """
    surrogate_of = _given_surrogate(with_stats)
    value, rows, _, _ = surrogate_of(z, g, mx.array(coefficients, mx.float32))
    return value, mx.stop_gradient(rows)


def surrogate_of_own_sums(
    z: mx.array, g: mx.array, objective_of: Callable[[TileStats], Objective]
) -> tuple[mx.array, mx.array]:
    """`surrogate` with the coefficients `objective_of(the tile's own sums)`, in one graph.

    The rows are summed and `objective_of`'s arithmetic runs in float64 on the CPU stream (a
    few scalars; Metal has no float64), on lazy scalars: the forward, the coefficients and the
    backward are one evaluation, with the two-pass route's float64 coefficients.
    """

    def coefficients_of(rows: mx.array, _: mx.array) -> mx.array:
        with mx.stream(mx.cpu):
            sums = mx.sum(rows.astype(mx.float64), axis=1)  # (6,)
            stats = TileStats(*(sums[i] for i in range(len(STAT_ROWS))), pixels=g.size)
            terms = [v if isinstance(v, mx.array) else mx.array(v) for v in objective_of(stats)]
            return mx.stack([v.astype(mx.float64) for v in terms]).astype(mx.float32)

    value, rows, _, _ = _make_surrogate(coefficients_of)(z, g, mx.zeros(3))
    return value, mx.stop_gradient(rows)
