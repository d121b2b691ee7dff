"""The mlx backend: tile forward, tile gradient and memory counters for GigaUNet on MLX."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from gigamlx.backends.base import FlatParams, MemoryReading, TileData, World
from gigamlx.backends.mlx import fused
from gigamlx.backends.mlx.blas import blas_info
from gigamlx.backends.mlx.distributed import mlx_world
from gigamlx.backends.mlx.model import GigaUNet
from gigamlx.core.geometry import Tile
from gigamlx.core.losses import Objective, TileStats


class MLXBackend:
    name = "mlx"

    def stage(self, data: TileData) -> TileData:
        return data  # unified memory: nothing to move

    def tile_stats(self, model: GigaUNet, data: TileData, padded_hw: tuple[int, int]) -> TileStats:
        _, rows = _surrogate(model, data, padded_hw, Objective(), _target(data))
        mx.eval(rows)  # sync point: one tile's forward graph
        return _to_stats(rows, data.tile)

    def tile_grad(
        self, model: GigaUNet, data: TileData, padded_hw: tuple[int, int], objective: Objective
    ) -> tuple[TileStats, FlatParams]:
        target = _target(data)

        def surrogate(params_model: GigaUNet):
            value, rows = _surrogate(params_model, data, padded_hw, objective, target)
            return value, mx.stop_gradient(rows)

        (_, rows), grads = nn.value_and_grad(model, surrogate)(model)
        mx.eval(rows, grads)  # sync point: one tile's forward + backward graph
        flat = {name: np.array(g, dtype=np.float64) for name, g in tree_flatten(grads)}
        return _to_stats(rows, data.tile), flat

    def tile_predict(
        self, model: GigaUNet, data: TileData, padded_hw: tuple[int, int]
    ) -> np.ndarray:
        p = mx.sigmoid(_owned_logits(model, data, padded_hw))
        mx.eval(p)  # sync point
        return np.array(p, dtype=np.float32)

    def flat_params(self, model: GigaUNet) -> FlatParams:
        return {name: np.array(v) for name, v in tree_flatten(model.trainable_parameters())}

    def to_tree(self, model: GigaUNet, flat: FlatParams):
        return tree_unflatten([(name, mx.array(v, dtype=mx.float32)) for name, v in flat.items()])

    def build_model(self, seed: int) -> GigaUNet:
        mx.random.seed(seed)
        model = GigaUNet()
        mx.eval(model.parameters())
        return model

    def load_params(self, model: GigaUNet, flat: FlatParams) -> None:
        model.update(self.to_tree(model, flat))
        mx.eval(model.parameters())

    def make_optimizer(self, model: GigaUNet, lr: float) -> optim.Adam:
        optimizer = optim.Adam(learning_rate=lr)
        optimizer.init(model.trainable_parameters())
        return optimizer

    def apply_gradients(self, model: GigaUNet, optimizer: optim.Adam, grads: FlatParams) -> None:
        optimizer.update(model, self.to_tree(model, grads))
        mx.eval(model.parameters(), optimizer.state)  # sync point: the update

    def optimizer_state(self, optimizer: optim.Adam) -> FlatParams:
        return {name: np.array(v) for name, v in tree_flatten(optimizer.state)}

    def load_optimizer_state(self, optimizer: optim.Adam, flat: FlatParams) -> None:
        optimizer.state = tree_unflatten([(k, mx.array(v)) for k, v in flat.items()])
        mx.eval(optimizer.state)

    def describe(self) -> dict[str, str]:
        """Device, BLAS and the fused tail kernel, for `gigamlx info`."""
        blas = blas_info()
        fused_on, fused_reason = fused.status()
        return {
            "fused tail kernel (cpu)": f"{'active' if fused_on else 'inactive'} ({fused_reason})",
            "mlx device": str(mx.default_device()),
            "mlx metal available": str(mx.metal.is_available()),
            "BLAS (mlx cpu)": f"{blas.name} {blas.path or ''} ({blas.reason})",
        }

    def world(self, timeout_s: float) -> World:
        return mlx_world(timeout_s)

    def memory(self) -> MemoryReading:
        limit = mx.get_memory_limit()
        return MemoryReading(mx.get_active_memory(), mx.get_peak_memory(), limit or None)

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def release_cache(self) -> None:
        mx.clear_cache()


def _surrogate(
    model: GigaUNet,
    data: TileData,
    padded_hw: tuple[int, int],
    objective: Objective,
    target: mx.array,
) -> tuple[mx.array, mx.array]:
    """Surrogate value () and stat rows (6, h_out) of one tile, fused on the CPU when built.

    The per-pixel cotangent of the real loss is a*g + b (Dice) and c*dbce (BCE).
    """
    if fused.active():
        tile: Tile = data.tile
        x = mx.array(data.image)[None]  # (1, h_in, w_in, 3) uint8: the kernels scale it
        z = model.logits(x, tile.in_box, padded_hw)  # (1, h_in, w_in, 1): the crop is fused
        if z.dtype == mx.float32:
            return fused.tile_loss(z, target, tile.crop_yx, objective)
    a, b, c = objective
    z = _owned_logits(model, data, padded_hw)
    p = mx.sigmoid(z)
    value = mx.sum((a * target + b) * p) + c * mx.sum(_bce(z, target))
    return value, _stat_rows(z, target)


def _target(data: TileData) -> mx.array:
    """The tile's {0, 1} target as float32 (it travels as uint8: a quarter of the host bytes)."""
    return mx.array(data.target).astype(mx.float32)


def _owned_logits(model: GigaUNet, data: TileData, padded_hw: tuple[int, int]) -> mx.array:
    """Logits on the tile's owned box: (h_out, w_out)."""
    tile: Tile = data.tile
    x = mx.array(data.image)[None].astype(mx.float32) / 255.0  # (1, h_in, w_in, 3)
    z = model.logits(x, tile.in_box, padded_hw)
    (cy, cx), (h, w) = tile.crop_yx, tile.out_box.hw
    return z[0, cy : cy + h, cx : cx + w, 0]


def _bce(z: mx.array, g: mx.array) -> mx.array:
    """Per-pixel binary cross-entropy from logits, stable for large |z|."""
    return mx.maximum(z, 0) - z * g + mx.log1p(mx.exp(-mx.abs(z)))


def _stat_rows(z: mx.array, g: mx.array) -> mx.array:
    """Per-row partial sums (7, h): short float32 sums, finished in float64 on the host."""
    p = mx.sigmoid(z)
    hard = (z > 0).astype(mx.float32)
    parts = [p * g, p, g, _bce(z, g), hard * g, hard]
    return mx.stack([mx.sum(v, axis=1) for v in parts])


def _to_stats(rows: mx.array, tile: Tile) -> TileStats:
    sums = np.array(rows, dtype=np.float64).sum(axis=1)
    return TileStats(*(float(s) for s in sums), pixels=tile.out_box.area())
