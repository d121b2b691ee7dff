"""The mlx backend: tile forward, tile gradient and memory counters for GigaUNet on MLX."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from gigamlx.backends.base import (
    Backend,
    FlatParams,
    MemoryReading,
    TileData,
    WindowTurner,
    World,
)
from gigamlx.backends.mlx import fused, limits, pixel_loss
from gigamlx.backends.mlx.blas import blas_info
from gigamlx.backends.mlx.distributed import mlx_world
from gigamlx.backends.mlx.model import GigaUNet
from gigamlx.core.geometry import Tile
from gigamlx.core.init import initial_weights
from gigamlx.core.losses import Objective, TileStats, stats_from_rows
from gigamlx.core.memory import format_bytes, keep_freed_memory


class MLXBackend(Backend):
    """GigaUNet on MLX (Metal, CPU or CUDA: MLX's default device).

    Args:
        kernels: "auto", "fused" or "mlx": which model path runs, chosen once here
            (fused.choose_kernels) and reported by `describe()` and the step metrics.
    """

    name = "mlx"

    def __init__(self, kernels: str = "auto"):
        self.kernels = fused.choose_kernels(kernels)

    @property
    def compute_path(self) -> str:
        return self.kernels.name  # "fused" or "mlx"

    @property
    def runs_on_cpu(self) -> bool:
        return mx.default_device() == mx.cpu

    @property
    def window_turner(self) -> WindowTurner | None:
        # only beside the fused kernels: the pure-MLX path runs no compiled code at all, as on
        # a Mac (CI's pure-MLX pass is how the numpy turn gets exercised end to end)
        return fused.turn_window if self.kernels.fused and fused.turns_windows() else None

    def stage(self, data: TileData) -> TileData:
        return data  # unified memory: nothing to move

    def tile_stats(self, model: GigaUNet, data: TileData, padded_hw: tuple[int, int]) -> TileStats:
        if self.kernels.fused:
            head = _loss_head(model, data, padded_hw, _target(data, True), True)
            _, rows = head.of(Objective())
        else:
            z = _owned_logits(model, data, padded_hw, False)
            rows = pixel_loss.stat_rows(z, _target(data, False))
        mx.eval(rows)  # sync point: one tile's forward graph
        return _to_stats(rows, data.tile)

    def tile_grad(
        self,
        model: GigaUNet,
        data: TileData,
        padded_hw: tuple[int, int],
        objective: Objective,
        with_stats: bool = True,
    ) -> tuple[TileStats | None, FlatParams]:
        def of(head: _LossHead) -> tuple[mx.array, mx.array]:
            return head.of(objective, with_stats)

        return _grad(model, data, padded_hw, self.kernels.fused, of, with_stats)

    def tile_loss_grad(
        self,
        model: GigaUNet,
        data: TileData,
        padded_hw: tuple[int, int],
        objective_of: Callable[[TileStats], Objective],
    ) -> tuple[TileStats, FlatParams]:
        def of_own_sums(head: _LossHead) -> tuple[mx.array, mx.array]:
            return head.of_own_sums(objective_of, data.tile)

        return _grad(model, data, padded_hw, self.kernels.fused, of_own_sums)

    def tile_predict(
        self, model: GigaUNet, data: TileData, padded_hw: tuple[int, int]
    ) -> np.ndarray:
        p = mx.sigmoid(_owned_logits(model, data, padded_hw, self.kernels.fused))
        mx.eval(p)  # sync point
        return np.array(p, dtype=np.float32)

    def flat_params(self, model: GigaUNet) -> FlatParams:
        return {name: np.array(v) for name, v in tree_flatten(model.trainable_parameters())}

    def to_tree(self, model: GigaUNet, flat: FlatParams):
        return tree_unflatten([(name, mx.array(v, dtype=mx.float32)) for name, v in flat.items()])

    def build_model(self, seed: int) -> GigaUNet:
        """Weights from core/init.py: the same seed gives the same model on every backend."""
        model = GigaUNet()
        self.load_params(model, initial_weights(seed, model.spec))
        return model

    def load_params(self, model: GigaUNet, flat: FlatParams) -> None:
        model.update(self.to_tree(model, flat))
        mx.eval(model.parameters())

    def make_optimizer(self, model: GigaUNet, lr: float) -> optim.Adam:
        optimizer = optim.Adam(learning_rate=lr)
        optimizer.init(model.trainable_parameters())
        return optimizer

    def set_learning_rate(self, optimizer: optim.Adam, lr: float) -> None:
        optimizer.learning_rate = lr  # a float32 scalar in its state, as at make_optimizer

    def apply_gradients(self, model: GigaUNet, optimizer: optim.Adam, grads: FlatParams) -> None:
        optimizer.update(model, self.to_tree(model, grads))
        mx.eval(model.parameters(), optimizer.state)  # sync point: the update

    def optimizer_state(self, optimizer: optim.Adam) -> FlatParams:
        return {name: np.array(v) for name, v in tree_flatten(optimizer.state)}

    def load_optimizer_state(self, optimizer: optim.Adam, flat: FlatParams) -> None:
        optimizer.state = tree_unflatten([(k, mx.array(v)) for k, v in flat.items()])
        mx.eval(optimizer.state)

    def describe(self) -> dict[str, str]:
        """Device, BLAS and the model path, for `gigamlx info`."""
        blas = blas_info()
        return {
            "kernels": f"{self.kernels.name} ({self.kernels.reason})",
            "training windows": "turned by the extension" if self.window_turner else "numpy",
            "mlx device": str(mx.default_device()),
            "mlx metal available": str(mx.metal.is_available()),
            "mlx memory": _describe_memory(limits.device_memory()),
            "BLAS (mlx cpu)": f"{blas.name} {blas.path or ''} ({blas.reason})",
        }

    def world(self, timeout_s: float) -> World:
        return mlx_world(timeout_s)

    def memory(self) -> MemoryReading:
        limit = mx.get_memory_limit() or None
        return MemoryReading(
            mx.get_active_memory(), mx.get_peak_memory(), limit, mx.get_cache_memory()
        )

    def bound_memory(self, budget_bytes: int, cache_bytes: int) -> None:
        limits.apply(limits.plan_limits(budget_bytes, cache_bytes, limits.device_memory()))
        # tiles reuse freed blocks instead of faulting in fresh zeroed pages (glibc only)
        keep_freed_memory(min(budget_bytes // 4, 1 << 30))

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def release_cache(self) -> None:
        mx.clear_cache()


def _describe_memory(device: limits.DeviceMemory) -> str:
    text = f"limit {format_bytes(device.memory_limit_bytes)}"
    if device.recommended_bytes:
        text += f", recommended working set {format_bytes(device.recommended_bytes)}"
    return text


class _LossHead(NamedTuple):
    """One tile's logits, built once, and its surrogate value () and stat rows (6, h_out) on
    them: fused on the fused path, where the loss op takes the tail's inputs from the logits'
    graph and computes them row by row, so they are never written out (extension 0.7.7). The
    per-pixel cotangent of the real loss is a*g + b (Dice) and c*dbce (BCE)."""

    z: mx.array  # (1, h_in, w_in, 1) window logits (fused), else (h_out, w_out) owned ones
    target: mx.array  # (h_out, w_out) float32
    crop_yx: tuple[int, int] | None  # the owned box in z on the fused path; None: z is it

    def of(self, objective: Objective, with_stats: bool = True) -> tuple[mx.array, mx.array]:
        if self.crop_yx is None:
            return pixel_loss.surrogate(self.z, self.target, objective, with_stats)
        return fused.tile_loss(self.z, self.target, self.crop_yx, objective)

    def of_own_sums(
        self, objective_of: Callable[[TileStats], Objective], tile: Tile
    ) -> tuple[mx.array, mx.array]:
        """The surrogate of `objective_of(the tile's own stats)`, in one forward."""
        if self.crop_yx is None:  # the coefficients inside the graph: one evaluation
            return pixel_loss.surrogate_of_own_sums(self.z, self.target, objective_of)
        # the kernels take the coefficients as numbers: the sums are evaluated first, and MLX
        # keeps a traced graph through an evaluation for the backward
        _, rows = self.of(Objective())
        mx.eval(rows)  # sync point: the tile's forward
        value, _ = self.of(objective_of(_to_stats(rows, tile)))
        # the statistics do not depend on the objective: these rows spare a second forward
        return value, rows


def _grad(
    model: GigaUNet,
    data: TileData,
    padded_hw: tuple[int, int],
    fused_kernels: bool,
    loss_of: Callable[[_LossHead], tuple[mx.array, mx.array]],
    with_stats: bool = True,
) -> tuple[TileStats | None, FlatParams]:
    """One tile's forward + backward of the surrogate `loss_of` its head; float64 gradients,
    and the tile's stats unless `with_stats` is False."""
    target = _target(data, fused_kernels)

    def surrogate(params_model: GigaUNet):
        value, rows = loss_of(_loss_head(params_model, data, padded_hw, target, fused_kernels))
        return value, mx.stop_gradient(rows)

    (_, rows), grads = nn.value_and_grad(model, surrogate)(model)
    # sync point: one tile's forward + backward graph. Without the stats the loss's own
    # forward (value and rows) is never evaluated: its vjp reads only the logits and targets
    mx.eval([rows, grads] if with_stats else grads)
    flat = {name: np.array(g, dtype=np.float64) for name, g in tree_flatten(grads)}
    return (_to_stats(rows, data.tile) if with_stats else None), flat


def _loss_head(
    model: GigaUNet,
    data: TileData,
    padded_hw: tuple[int, int],
    target: mx.array,
    fused_kernels: bool,
) -> _LossHead:
    if fused_kernels:
        tile: Tile = data.tile
        x = _window(data, True)  # uint8: the kernels scale it
        z = model.logits(x, tile.in_box, padded_hw, True)  # (1, h_in, w_in, 1): crop is fused
        if z.dtype == mx.float32:
            return _LossHead(z, target, tile.crop_yx)
    z = _owned_logits(model, data, padded_hw, fused_kernels)
    return _LossHead(z, target.astype(mx.float32), None)  # the pure loss reads float targets


def _window(data: TileData, fused_kernels: bool) -> mx.array:
    """The tile's input window (1, h_in, w_in, 3) uint8 (the model scales it to [0, 1])."""
    if fused_kernels and fused.copies_uint8():
        return fused.uint8_array(data.image)[None]
    return mx.array(data.image)[None]


def _target(data: TileData, fused_kernels: bool) -> mx.array:
    """The tile's {0, 1} target (it travels as uint8: a quarter of the host bytes): as it is
    where the fused loss reads uint8, else as float32."""
    if fused_kernels and fused.copies_uint8():
        return fused.uint8_array(data.target)
    return mx.array(data.target).astype(mx.float32)


def _owned_logits(
    model: GigaUNet, data: TileData, padded_hw: tuple[int, int], fused_kernels: bool
) -> mx.array:
    """Logits on the tile's owned box: (h_out, w_out)."""
    tile: Tile = data.tile
    z = model.logits(_window(data, fused_kernels), tile.in_box, padded_hw, fused_kernels)
    (cy, cx), (h, w) = tile.crop_yx, tile.out_box.hw
    return z[0, cy : cy + h, cx : cx + w, 0]


def _to_stats(rows: mx.array, tile: Tile) -> TileStats:
    return stats_from_rows(np.array(rows), tile.out_box.area())
