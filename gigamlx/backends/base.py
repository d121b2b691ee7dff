"""The small surface every engine implements; the scheduler and the loop see only this.

Everything crossing it is numpy or plain Python: uint8 image windows in, float64 sums and
gradients out. Each tile method evaluates its own graph (the engine's only sync points in a
step) and lets it go before returning, so one tile's activations are alive at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from gigamlx.core.geometry import Tile
from gigamlx.core.losses import Objective, TileStats

FlatParams = dict[str, np.ndarray]  # "down1.weight" -> array, engine layout, float64 or float32
AllSum = Callable[[np.ndarray], np.ndarray]  # float64 (n,) -> the same on every rank, summed
# (block, colour table or None, flip, rot90, (gain_y, gain_x) or None, out or None) -> the
# turned, recoloured, lit block, written into `out` where given (train/regions.py)
WindowTurner = Callable[
    [
        np.ndarray,
        np.ndarray | None,
        bool,
        int,
        tuple[np.ndarray, np.ndarray] | None,
        np.ndarray | None,
    ],
    np.ndarray,
]


class MemoryReading(NamedTuple):
    active_bytes: int  # held by live arrays now
    peak_bytes: int  # most active bytes since the last reset
    limit_bytes: int | None
    cache_bytes: int = 0  # freed but kept by the engine for reuse: the process holds it too


class TileData(NamedTuple):
    """What one tile needs from the slide: its input window and the target on its owned box."""

    tile: Tile
    image: np.ndarray  # (h_in, w_in, 3) uint8, zero outside the image
    target: np.ndarray | None  # (h_out, w_out) uint8 in {0, 1}; None for prediction


class WorldError(RuntimeError):
    """The ranks of a data-parallel run lost each other or disagree; the message says which."""


@dataclass(frozen=True)
class World:
    """The data-parallel world a run lives in: this rank, how many, and how to sum across them.

    Engine-free: the sum across ranks is a callable the backend supplies (mx.distributed on the
    mlx backend). A single process is a world of one whose sum is the identity.
    """

    rank: int
    size: int
    all_sum: AllSum | None = None  # None: a world of one

    @classmethod
    def single(cls) -> World:
        return cls(0, 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """Element-wise sum of `values` over ranks (one collective)."""
        if self.all_sum is None:
            return tuple(values)
        return tuple(float(v) for v in self.all_sum(np.array(values, np.float64)))

    def mean_grads(self, grads: FlatParams) -> FlatParams:
        """Average gradients over ranks in one flat float64 buffer (one collective per step)."""
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

    def check_same(self, what: str, payload: bytes) -> None:
        """Raise WorldError unless every rank passed the same `payload` (one tiny collective).

        Sums a 20-bit hash h and h*h over ranks: both sums are exact in float64, and the
        ranks agree iff the variance size*sum(h^2) - sum(h)^2 is zero (up to hash collisions).
        """
        if self.all_sum is None:
            return
        h = float(zlib.crc32(payload) & 0xFFFFF)
        total, squares = (int(v) for v in self.all_sum(np.array([h, h * h], np.float64)))
        if self.size * squares != total * total:
            raise WorldError(
                f"the {self.size} ranks disagree on {what} (seen by rank {self.rank}): they "
                "must start from the same checkpoint and config and apply the same updates"
            )


class Backend(Protocol):
    """One engine. `model` is the engine's own model; the scheduler never looks inside.

    Engines subclass it, so they inherit the defaults of the methods that have one.
    """

    name: str

    @property
    def compute_path(self) -> str:
        """Which code computes the model, chosen once when the backend was built ("fused" or
        "mlx" on mlx, "torch-cuda" or "torch-cpu" on cuda-um); reported in every step's metrics."""
        ...

    @property
    def runs_on_cpu(self) -> bool:
        """The model computes on the host's cores (the scheduler caps the tile size there:
        larger tiles bring page faults and fewer, longer reads to overlap, not speed)."""
        ...

    @property
    def window_turner(self) -> WindowTurner | None:
        """A native turn and colour lookup of training windows, one pass on the prefetch
        thread (the same bytes as `train.regions`' numpy), or None where there is none."""
        ...

    def stage(self, data: TileData) -> TileData:
        """Start moving a tile's data to the device; called on the prefetch thread, one tile
        ahead. Identity where host and device share memory (mlx)."""
        ...

    def tile_stats(self, model: Any, data: TileData, padded_hw: tuple[int, int]) -> TileStats:
        """Forward only: loss sums over the tile's owned real pixels."""
        ...

    def tile_grad(
        self,
        model: Any,
        data: TileData,
        padded_hw: tuple[int, int],
        objective: Objective,
        with_stats: bool = True,
    ) -> tuple[TileStats | None, FlatParams]:
        """Forward + backward of the surrogate `objective` on one tile; float64 gradients.

        `with_stats=False`: the caller has the tile's stats already (pass 1 of a Dice step),
        so an engine may skip computing them and return None for them.
        """
        ...

    def tile_loss_grad(
        self,
        model: Any,
        data: TileData,
        padded_hw: tuple[int, int],
        objective_of: Callable[[TileStats], Objective],
    ) -> tuple[TileStats, FlatParams]:
        """`tile_grad` of the surrogate `objective_of(this tile's stats)`: the gradient of a
        loss of the tile's own sums (the whole image's Dice, on a one-tile plan).

        This default makes two passes (`tile_stats`, then `tile_grad`); a backend opts in to
        one forward by overriding it, taking the sums between its forward and its backward.
        `objective_of` is plain arithmetic on the stats' fields, so an engine may call it on
        its own lazy scalars inside the graph (the pure-MLX path does).
        """
        stats = self.tile_stats(model, data, padded_hw)
        return self.tile_grad(model, data, padded_hw, objective_of(stats))

    def tile_predict(self, model: Any, data: TileData, padded_hw: tuple[int, int]) -> np.ndarray:
        """Probabilities on the owned box, (h_out, w_out) float32."""
        ...

    def flat_params(self, model: Any) -> FlatParams:
        """Trainable parameters by dotted name, as numpy in the engine's layout."""
        ...

    def to_tree(self, model: Any, flat: FlatParams) -> Any:
        """A flat gradient as the engine's tree of the model's trainable parameters."""
        ...

    def build_model(self, seed: int) -> Any:
        """A freshly initialised model; the same seed gives the same weights."""
        ...

    def load_params(self, model: Any, flat: FlatParams) -> None: ...

    def make_optimizer(self, model: Any, lr: float) -> Any:
        """Adam over the model's trainable parameters."""
        ...

    def set_learning_rate(self, optimizer: Any, lr: float) -> None:
        """Use `lr` from the next update on (the loop sets it from the config every step)."""
        ...

    def apply_gradients(self, model: Any, optimizer: Any, grads: FlatParams) -> None: ...

    def optimizer_state(self, optimizer: Any) -> FlatParams: ...

    def load_optimizer_state(self, optimizer: Any, flat: FlatParams) -> None: ...

    def world(self, timeout_s: float) -> World:
        """The data-parallel world this process was launched into (a world of one if none).

        Args:
            timeout_s: a collective waiting longer than this for the other ranks ends the
                process with a clear error (a peer hung or became unreachable).
        """
        ...

    def memory(self) -> MemoryReading: ...

    def reset_peak_memory(self) -> None: ...

    def bound_memory(self, budget_bytes: int, cache_bytes: int) -> None:
        """Hold the process to `budget_bytes`: keep at most `cache_bytes` of freed buffers.

        Raises:
            ValueError: if the device cannot give the budget at all; names the maximum.
        """
        ...

    def release_cache(self) -> None:
        """Return freed buffers to the system (between tiles of different shapes)."""
        ...
