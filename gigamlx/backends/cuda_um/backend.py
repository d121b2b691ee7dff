"""The cuda-um backend: GigaUNet on PyTorch with tile data in CUDA managed memory.

On a GPU, each tile's input window and target are written by the host straight into managed
memory and prefetched to the GPU on a side stream (`stage`; a caller that stages tile n+1 on
its reader thread overlaps that move with tile n's compute), and predictions come back by a
bulk prefetch to the host. `device="cpu"` runs the same code on torch's CPU engine, which is
how CI checks its numerics against the mlx backend. Parameters and optimizer state cross the
interface in the MLX layout, so checkpoints swap backends.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from gigamlx.backends.base import (
    Backend,
    FlatParams,
    MemoryReading,
    TileData,
    WindowTurner,
    World,
    WorldError,
)
from gigamlx.backends.cuda_um import managed
from gigamlx.backends.cuda_um.managed import ManagedMemory, resolve_device
from gigamlx.backends.cuda_um.model import TorchGigaUNet, from_torch_layout, to_torch_layout
from gigamlx.backends.cuda_um.optim import MLXAdam
from gigamlx.core.geometry import Box, Tile
from gigamlx.core.init import initial_weights
from gigamlx.core.losses import Objective, TileStats, stats_from_rows
from gigamlx.core.spec import halo_px, total_stride


class StagedTile(NamedTuple):
    """A tile's data already on the backend's device (managed memory on a GPU)."""

    tile: Tile
    image: torch.Tensor  # (h_in, w_in, 3) uint8
    target: torch.Tensor | None  # (h_out, w_out) float32
    ready: torch.cuda.Event | None  # recorded when the prefetch to the GPU is done


class CudaUMBackend(Backend):
    """The Backend protocol on PyTorch; see base.py for each method's contract.

    Args:
        device: "auto" or "cuda[:N]" (needs CUDA) or "cpu".
        managed_limit_bytes: cap on managed bytes (default: the GPU's free memory at start).
    """

    name = "cuda-um"

    def __init__(self, device: str = "auto", managed_limit_bytes: int | None = None):
        self.device = resolve_device(device)
        self.um = None
        if self.device.type == "cuda":
            self.um = ManagedMemory(self.device, managed_limit_bytes)
            # TF32 convolutions (cuDNN's default on Ampere+) would break float32 parity with mlx
            torch.backends.cudnn.allow_tf32 = False

    @property
    def compute_path(self) -> str:
        return f"torch-{self.device.type}"

    @property
    def runs_on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def window_turner(self) -> WindowTurner | None:
        return None  # numpy turns the windows (the native one lives in the mlx extension)

    def stage(self, data: TileData) -> StagedTile:
        """Move one tile's data to the device; safe to call on a reader thread.

        On a GPU the copy to the device is asynchronous (side stream); the tile methods wait
        for it. Call this for tile n+1 while tile n computes to hide the transfer.
        """
        if isinstance(data, StagedTile):
            return data
        if self.um is None:
            image = torch.from_numpy(np.ascontiguousarray(data.image))
            target = data.target
            if target is not None:
                target = torch.from_numpy(np.asarray(target, np.float32))
            return StagedTile(data.tile, image, target, None)
        image, ready = self.um.from_host(np.ascontiguousarray(data.image))
        target = None
        if data.target is not None:
            target, ready = self.um.from_host(np.ascontiguousarray(data.target, np.float32))
        # one side stream: the last event covers both prefetches
        return StagedTile(data.tile, image, target, ready)

    def tile_stats(self, model: TorchGigaUNet, data, padded_hw: tuple[int, int]) -> TileStats:
        staged = self._ready(data)
        with torch.no_grad():
            z = _owned_logits(model, staged, padded_hw)
            rows = _stat_rows(z, staged.target)
        return _to_stats(rows, staged.tile)  # sync point: one tile's forward

    def tile_grad(
        self,
        model: TorchGigaUNet,
        data,
        padded_hw: tuple[int, int],
        objective: Objective,
        with_stats: bool = True,
    ) -> tuple[TileStats | None, FlatParams]:
        staged = self._ready(data)
        z = _owned_logits(model, staged, padded_hw)
        flat = _surrogate_grads(model, z, staged.target, objective)
        if not with_stats:
            return None, flat
        with torch.no_grad():
            rows = _stat_rows(z.detach(), staged.target)
        return _to_stats(rows, staged.tile), flat

    def tile_loss_grad(
        self,
        model: TorchGigaUNet,
        data,
        padded_hw: tuple[int, int],
        objective_of: Callable[[TileStats], Objective],
    ) -> tuple[TileStats, FlatParams]:
        staged = self._ready(data)
        z = _owned_logits(model, staged, padded_hw)
        with torch.no_grad():
            stats = _to_stats(_stat_rows(z.detach(), staged.target), staged.tile)  # sync point
        return stats, _surrogate_grads(model, z, staged.target, objective_of(stats))

    def tile_predict(self, model: TorchGigaUNet, data, padded_hw: tuple[int, int]) -> np.ndarray:
        staged = self._ready(data)
        with torch.no_grad():
            p = torch.sigmoid(_owned_logits(model, staged, padded_hw))
            if self.um is None:
                return p.numpy().astype(np.float32, copy=True)
            out = self.um.empty_output(tuple(p.shape))  # (h_out, w_out), managed
            out.copy_(p)
        return self.um.to_host(out)  # sync point: bulk migration instead of page faults

    def flat_params(self, model: TorchGigaUNet) -> FlatParams:
        return model.mlx_layout()

    def to_tree(self, model: TorchGigaUNet, flat: FlatParams) -> dict[str, torch.Tensor]:
        """Flat MLX-layout arrays as float32 tensors in torch's layout, on the model's device."""
        tree = {}
        for name, value in flat.items():
            value = to_torch_layout(model, name, np.asarray(value, np.float32))
            tree[name] = torch.from_numpy(value).to(self.device)
        return tree

    def build_model(self, seed: int) -> TorchGigaUNet:
        """Weights from core/init.py: the same seed gives the same model on every backend."""
        model = TorchGigaUNet()
        model.load_mlx_layout(initial_weights(seed, model.spec))
        model.backend_device = str(self.device)  # backend_for(model) rebuilds this backend
        model.to(self.device)
        self._warm_up(model)
        return model

    def load_params(self, model: TorchGigaUNet, flat: FlatParams) -> None:
        model.load_mlx_layout({k: np.asarray(v, np.float32) for k, v in flat.items()})

    def make_optimizer(self, model: TorchGigaUNet, lr: float) -> MLXAdam:
        return MLXAdam(model, lr)

    def set_learning_rate(self, optimizer: MLXAdam, lr: float) -> None:
        optimizer.learning_rate = np.float32(lr)

    def apply_gradients(self, model: TorchGigaUNet, optimizer: MLXAdam, grads: FlatParams) -> None:
        optimizer.update(self.to_tree(model, grads))

    def optimizer_state(self, optimizer: MLXAdam) -> FlatParams:
        return {
            k: v if isinstance(v, np.ndarray) else _mlx_moment(optimizer.model, k, v)
            for k, v in optimizer.state().items()
        }

    def load_optimizer_state(self, optimizer: MLXAdam, flat: FlatParams) -> None:
        if not flat:  # a checkpoint without optimizer state: keep the fresh one
            return
        optimizer.load_state(
            {
                k: v if k in ("step", "learning_rate") else _torch_moment(optimizer.model, k, v)
                for k, v in flat.items()
            }
        )

    def world(self, timeout_s: float) -> World:
        """A world of one: cuda-um trains in one process (data parallelism is mlx's for now)."""
        ranks = int(os.environ.get("WORLD_SIZE", "1"))
        if ranks > 1:
            raise WorldError(
                f"cuda-um runs in one process, but this one was launched as one of {ranks} "
                "ranks; launch a single process, or use --backend mlx for data parallelism"
            )
        return World.single()

    def memory(self) -> MemoryReading:
        """GPU: torch's device counters (the managed pool included). CPU: the process RSS."""
        if self.device.type == "cuda":
            active = torch.cuda.memory_allocated(self.device)
            free_bytes, _ = torch.cuda.mem_get_info(self.device)
            limit = free_bytes + torch.cuda.memory_reserved(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            cached = torch.cuda.memory_reserved(self.device) - active
            return MemoryReading(active, peak, limit, cached)
        # trim first: the heap glibc keeps after a step is free, not active, memory, and
        # counting it would shrink the next step's tiles
        managed.trim_host_heap()
        return MemoryReading(managed.host_rss_bytes(), managed.host_peak_bytes(), None)

    def bound_memory(self, budget_bytes: int, cache_bytes: int) -> None:
        """Nothing to set: the managed pool is capped at start, torch's caches are emptied by
        `release_cache`, and the CPU path's freed heap is trimmed at every reading."""

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.um.reset_peak()
        else:
            managed.reset_host_peak()

    def release_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        else:
            managed.trim_host_heap()

    def _warm_up(self, model: TorchGigaUNet) -> None:
        """One smallest tile forward and backward, so one-time setup (thread pools, kernel
        selection, workspaces) is not counted as the first budget probe's tile cost."""
        halo, stride = halo_px(model.spec), total_stride(model.spec)
        window = stride + 2 * halo
        tile = Tile(Box(0, 0, stride, stride), Box(-halo, -halo, stride + halo, stride + halo))
        data = TileData(
            tile, np.zeros((window, window, 3), np.uint8), np.zeros((stride,) * 2, np.float32)
        )
        self.tile_grad(model, data, (stride, stride), Objective(1.0, 1.0, 1.0))
        self.release_cache()

    def _ready(self, data) -> StagedTile:
        """The tile's data on the device, with the compute stream ordered after its prefetch."""
        staged = self.stage(data)
        if staged.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(staged.ready)
        return staged


def _owned_logits(model: TorchGigaUNet, staged: StagedTile, padded_hw) -> torch.Tensor:
    """Logits on the tile's owned box: (h_out, w_out)."""
    tile = staged.tile
    x = staged.image.to(model.head.weight.device, non_blocking=True)
    x = x.permute(2, 0, 1)[None].to(torch.float32) / 255.0  # (1, 3, h_in, w_in)
    z = model.logits(x, tile.in_box, padded_hw)
    (cy, cx), (h, w) = tile.crop_yx, tile.out_box.hw
    return z[0, 0, cy : cy + h, cx : cx + w]


def _surrogate_grads(
    model: TorchGigaUNet, z: torch.Tensor, target: torch.Tensor, objective: Objective
) -> FlatParams:
    """Float64 parameter gradients (MLX layout) of the surrogate on logits z (h_out, w_out)."""
    a, b, c = objective
    p = torch.sigmoid(z)
    # the per-pixel cotangent of the real loss is a*g + b (Dice) and c*dbce (BCE)
    value = torch.sum((a * target + b) * p) + c * torch.sum(_bce(z, target))
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(value, params)
    return {  # sync point: one tile's backward
        name: from_torch_layout(model, name, g.cpu().numpy()).astype(np.float64)
        for name, g in zip(names, grads, strict=True)
    }


def _bce(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy from logits, stable for large |z| (as the mlx backend)."""
    return F.relu(z) - z * g + torch.log1p(torch.exp(-torch.abs(z)))


def _stat_rows(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-row partial sums (6, h) in the order of losses.STAT_ROWS."""
    p = torch.sigmoid(z)
    hard = (z > 0).to(torch.float32)
    parts = [p * g, p, g, _bce(z, g), hard * g, hard]
    return torch.stack([v.sum(dim=1) for v in parts])


def _to_stats(rows: torch.Tensor, tile: Tile) -> TileStats:
    return stats_from_rows(rows.cpu().numpy(), tile.out_box.area())


def _mlx_moment(model: TorchGigaUNet, key: str, value: torch.Tensor) -> np.ndarray:
    name = key.rsplit(".", 1)[0]  # "down1.weight.m" -> "down1.weight"
    return from_torch_layout(model, name, value.detach().cpu().numpy())


def _torch_moment(model: TorchGigaUNet, key: str, value: np.ndarray) -> np.ndarray:
    return to_torch_layout(model, key.rsplit(".", 1)[0], np.asarray(value, np.float32))
