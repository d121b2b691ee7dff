"""The small surface every engine implements; the scheduler and the loop see only this.

Everything crossing it is numpy or plain Python: uint8 image windows in, float64 sums and
gradients out. Each tile method evaluates its own graph (the engine's only sync points in a
step) and lets it go before returning, so one tile's activations are alive at a time.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from gigamlx.losses import Objective, TileStats
from gigamlx.tiling.geometry import Tile

FlatParams = dict[str, np.ndarray]  # "down1.weight" -> array, engine layout, float64 or float32


class MemoryReading(NamedTuple):
    active_bytes: int
    peak_bytes: int
    limit_bytes: int | None


class TileData(NamedTuple):
    """What one tile needs from the slide: its input window and the target on its owned box."""

    tile: Tile
    image: np.ndarray  # (h_in, w_in, 3) uint8, zero outside the image
    target: np.ndarray | None  # (h_out, w_out) float32 in {0, 1}; None for prediction


class Backend(Protocol):
    """One engine. `model` is the engine's own model; the scheduler never looks inside."""

    name: str

    def tile_stats(self, model: Any, data: TileData, padded_hw: tuple[int, int]) -> TileStats:
        """Forward only: loss sums over the tile's owned real pixels."""
        ...

    def tile_grad(
        self, model: Any, data: TileData, padded_hw: tuple[int, int], objective: Objective
    ) -> tuple[TileStats, FlatParams]:
        """Forward + backward of the surrogate `objective` on one tile; float64 gradients."""
        ...

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

    def apply_gradients(self, model: Any, optimizer: Any, grads: FlatParams) -> None: ...

    def optimizer_state(self, optimizer: Any) -> FlatParams: ...

    def load_optimizer_state(self, optimizer: Any, flat: FlatParams) -> None: ...

    def memory(self) -> MemoryReading: ...

    def reset_peak_memory(self) -> None: ...

    def release_cache(self) -> None:
        """Return freed buffers to the system (between tiles of different shapes)."""
        ...
