"""The data-parallel world a run lives in: this rank, how many, and how to sum across them.

Engine-free: the sum across ranks is a callable the backend supplies (mx.distributed on the
mlx backend). A single process is a world of one whose sum is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gigamlx.backends.base import FlatParams

AllSum = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    all_sum: AllSum | None = None  # None: a world of one

    @classmethod
    def single(cls) -> World:
        return cls(0, 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.all_sum is None:
            return value
        return float(self.all_sum(np.array([value], np.float64))[0]) / self.size

    def mean_grads(self, grads: FlatParams) -> FlatParams:
        """Average gradients over ranks in one flat buffer (one collective per step)."""
        if self.all_sum is None:
            return grads
        names = sorted(grads)
        flat = np.concatenate([np.ravel(grads[n]) for n in names]).astype(np.float64)
        summed = self.all_sum(flat) / self.size
        out, offset = {}, 0
        for name in names:
            size = grads[name].size
            out[name] = summed[offset : offset + size].reshape(grads[name].shape)
            offset += size
        return out
