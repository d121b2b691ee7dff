"""Loss arithmetic on global sums, engine-free: soft Dice, mean BCE, and their per-pixel cotangents.

A tiled step never sees the whole prediction, only per-tile sums (accumulated here in float64).
Soft Dice is a function of three global sums, so its gradient w.r.t. each probability p_i is
affine in the target g_i; BCE is a sum over pixels. Both reduce to a per-tile surrogate
J = sum_i (a*g_i + b)*p_i + c*sum_i bce_i whose parameter gradient equals the loss gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LOSSES: tuple[str, ...] = ("dice", "bce", "dice+bce")
DICE_SMOOTH = 1.0


class TileStats(NamedTuple):
    """Sums over the real pixels a tile owns (or, added up, over a whole image)."""

    sum_pg: float = 0.0  # sum p*g
    sum_p: float = 0.0
    sum_g: float = 0.0
    sum_bce: float = 0.0  # sum of per-pixel binary cross-entropy
    hard_tp: float = 0.0  # pixels with p > 0.5 and g = 1
    hard_p: float = 0.0  # pixels with p > 0.5
    pixels: int = 0

    def __add__(self, other: TileStats) -> TileStats:  # type: ignore[override]
        return TileStats(*(a + b for a, b in zip(self, other, strict=True)))


# The per-row partial sums every engine returns for a tile, in this order: a (6, h) float32
# array (kernels/ext/src/loss.h computes the same rows). Short float32 sums along each row,
# finished in float64 by `stats_from_rows`, keep the totals exact at gigapixel sizes.
STAT_ROWS: tuple[str, ...] = TileStats._fields[:6]


def stats_from_rows(rows: np.ndarray, pixels: int) -> TileStats:
    """TileStats of one tile from its (len(STAT_ROWS), h) per-row sums."""
    sums = np.asarray(rows, dtype=np.float64).sum(axis=1)
    if sums.shape != (len(STAT_ROWS),):
        raise ValueError(f"expected {len(STAT_ROWS)} stat rows, got {sums.shape}")
    return TileStats(*(float(s) for s in sums), pixels=pixels)


class Objective(NamedTuple):
    """Coefficients of the per-tile surrogate J = sum (dice_a*g + dice_b)*p + bce_weight*sum bce."""

    dice_a: float = 0.0
    dice_b: float = 0.0
    bce_weight: float = 0.0


def check_loss(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def needs_two_passes(name: str) -> bool:
    """Dice needs the global sums before any per-pixel gradient is known."""
    return "dice" in name


def soft_dice_loss(stats: TileStats) -> float:
    """1 - (2*sum pg + 1) / (sum p + sum g + 1)."""
    return 1.0 - (2.0 * stats.sum_pg + DICE_SMOOTH) / (stats.sum_p + stats.sum_g + DICE_SMOOTH)


def hard_dice(stats: TileStats) -> float:
    """Dice of the 0.5-thresholded prediction; 1 when prediction and target are both empty."""
    denominator = stats.hard_p + stats.sum_g
    return 1.0 if denominator == 0 else 2.0 * stats.hard_tp / denominator


def loss_value(name: str, stats: TileStats) -> float:
    """The loss of a whole image from its summed stats (BCE is a mean over real pixels)."""
    check_loss(name)
    value = 0.0
    if "dice" in name:
        value += soft_dice_loss(stats)
    if "bce" in name:
        value += stats.sum_bce / stats.pixels
    return value


def objective(name: str, stats: TileStats | None, pixels: int) -> Objective:
    """Surrogate coefficients for pass 2 (or the only pass, for BCE).

    Plain arithmetic on the sums' fields: the pure-MLX path also runs it on lazy float64
    scalars inside one graph (backends/mlx/pixel_loss.surrogate_of_own_sums).

    Args:
        name: loss name.
        stats: pass-1 sums over the whole image (needed for Dice, ignored for BCE).
        pixels: real pixels in the image (the BCE mean's denominator).
    """
    check_loss(name)
    dice_a = dice_b = bce_weight = 0.0
    if "dice" in name:
        if stats is None:
            raise ValueError("the Dice gradient needs the pass-1 sums")
        # L = 1 - N/D with N = 2I + s, D = P + G + s: dL/dp_i = -(2 g_i D - N) / D^2
        numerator = 2.0 * stats.sum_pg + DICE_SMOOTH
        denominator = stats.sum_p + stats.sum_g + DICE_SMOOTH
        dice_a = -2.0 / denominator
        dice_b = numerator / denominator**2
    if "bce" in name:
        bce_weight = 1.0 / pixels
    return Objective(dice_a, dice_b, bce_weight)
