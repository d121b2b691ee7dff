"""Loss arithmetic from sums, and the Dice cotangent against a finite difference."""

import numpy as np
import pytest

from gigamlx.core.losses import TileStats, hard_dice, loss_value, objective, soft_dice_loss


def _stats(p: np.ndarray, g: np.ndarray) -> TileStats:
    z = np.log(p / (1 - p))
    bce = np.maximum(z, 0) - z * g + np.log1p(np.exp(-np.abs(z)))
    hard = (p > 0.5).astype(float)
    return TileStats(
        (p * g).sum(), p.sum(), g.sum(), bce.sum(), (hard * g).sum(), hard.sum(), p.size
    )


def test_soft_dice_hand_computed():
    stats = _stats(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
    assert soft_dice_loss(stats) == pytest.approx(1 - (2 * 0.5 + 1) / (1 + 1 + 1))


def test_hard_dice_both_empty_is_one():
    assert hard_dice(TileStats()) == 1.0


def test_stats_add_elementwise():
    a, b = TileStats(1, 2, 3, 4, 5, 6, 7), TileStats(10, 20, 30, 40, 50, 60, 70)
    assert a + b == TileStats(11, 22, 33, 44, 55, 66, 77)


@pytest.mark.parametrize("name", ["dice", "bce", "dice+bce"])
def test_objective_is_the_loss_gradient(name):
    """d loss / d z_i from the surrogate coefficients equals a central finite difference."""
    rng = np.random.default_rng(0)
    p, g = rng.uniform(0.05, 0.95, 50), (rng.random(50) > 0.5).astype(float)
    a, b, c = objective(name, _stats(p, g), p.size)
    analytic = (a * g + b) * p * (1 - p) + c * (p - g)  # chain rule through the sigmoid
    z = np.log(p / (1 - p))
    for i in (0, 17, 49):
        step = np.zeros_like(z)
        step[i] = 1e-6
        up = loss_value(name, _stats(1 / (1 + np.exp(-(z + step))), g))
        down = loss_value(name, _stats(1 / (1 + np.exp(-(z - step))), g))
        assert analytic[i] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-10)


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        loss_value("focal", TileStats())
