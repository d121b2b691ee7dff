"""The exponential moving average of the weights: a shadow copy updated after every optimizer
step, validated beside the weights themselves because it is steadier from one validation to
the next, and saved in every checkpoint so a resumed run continues it bit for bit.

No debiasing: the shadow starts at the run's initial weights (whatever --init gave), not at
zero, so there is no pull toward zero to correct. Instead the decay warms up as
tf.train.ExponentialMovingAverage's does with `num_updates`: update n uses
min(decay, (1 + n) / (10 + n)), so the shadow forgets the untrained weights within a few
steps rather than the ~1 / (1 - decay) a fixed decay would take.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gigamlx.backends.base import Backend, FlatParams

WARMUP_UPDATES = 10  # the decay reaches 1 - 9 / (10 + n): TF's num_updates warm-up


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of update number `updates` (1-based): `decay`, held lower at first."""
    return min(decay, (1 + updates) / (WARMUP_UPDATES + updates))


class WeightAverage:
    """The shadow weights, float32 numpy by parameter name in the MLX layout (as
    `Backend.flat_params` gives them), and how many updates it has had."""

    def __init__(self, decay: float, shadow: FlatParams, updates: int = 0):
        self.decay, self.updates = decay, updates
        self.shadow = {name: np.array(value, np.float32) for name, value in shadow.items()}

    def update(self, weights: FlatParams) -> None:
        """ema = d * ema + (1 - d) * w, in float32, with d the warmed-up decay."""
        self.updates += 1
        d = warmed_decay(self.decay, self.updates)
        keep, take = np.float32(d), np.float32(1 - d)
        for name, value in weights.items():
            self.shadow[name] = keep * self.shadow[name] + take * np.asarray(value, np.float32)

    def matches(self, weights: FlatParams) -> bool:
        """Whether the shadow equals `weights` bit for bit (before the first update)."""
        return all(np.array_equal(self.shadow[n], np.asarray(v)) for n, v in weights.items())

    def as_model(self, backend: Backend) -> Any:
        """A second model of `backend` holding the shadow weights (the seed is irrelevant:
        every weight is overwritten)."""
        model = backend.build_model(0)
        backend.load_params(model, self.shadow)
        return model
