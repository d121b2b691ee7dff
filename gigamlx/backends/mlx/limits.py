"""MLX's memory limits under a budget: the buffer cache, Metal's wired memory, the device check.

MLX keeps freed buffers in a cache for reuse; on Metal that cache may grow to the whole memory
limit by default (32 MB on the Linux CPU build), so a budget bounds the process only if the
cache is bounded too. The arithmetic is plain (tested with Metal's numbers anywhere); `apply`
is the one place that changes MLX's process-wide settings.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import mlx.core as mx

from gigamlx.core.memory import format_bytes

log = logging.getLogger(__name__)


class DeviceMemory(NamedTuple):
    """What MLX may allocate on the default device, in bytes."""

    memory_limit_bytes: int  # mx.get_memory_limit(): MLX waits or fails past it
    recommended_bytes: int | None  # Metal's max_recommended_working_set_size; None elsewhere
    metal: bool


class MemoryLimits(NamedTuple):
    """Settings for one budget: cache limit, wired limit (Metal only) and a warning."""

    cache_bytes: int
    wired_bytes: int | None
    warning: str | None


def device_memory() -> DeviceMemory:
    """The default device's limits (device_info keys depend on the backend: guarded)."""
    metal = mx.default_device() == mx.gpu and mx.metal.is_available()
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    recommended = info.get("max_recommended_working_set_size") if metal else None
    return DeviceMemory(int(mx.get_memory_limit()), recommended and int(recommended), metal)


def plan_limits(budget_bytes: int, cache_bytes: int, device: DeviceMemory) -> MemoryLimits:
    """Cache and wired limits for a process budget; the warning says where the budget is
    larger than the GPU is recommended to keep resident.

    Raises:
        ValueError: if the budget exceeds what MLX may allocate at all; names the maximum.
    """
    if budget_bytes > device.memory_limit_bytes:
        raise ValueError(
            f"memory budget {format_bytes(budget_bytes)} is more than MLX may allocate on "
            f"{mx.default_device()} ({format_bytes(device.memory_limit_bytes)}); lower "
            f"--memory-budget to at most {format_bytes(device.memory_limit_bytes)}"
        )
    warning, wired = None, None
    if device.metal and device.recommended_bytes:
        # keep the budget's buffers resident: macOS may otherwise page a large working set
        # out between tiles; never more than the system allows (set_wired_limit fails there)
        wired = min(budget_bytes, device.recommended_bytes)
        if budget_bytes > device.recommended_bytes:
            warning = (
                f"memory budget {format_bytes(budget_bytes)} is above the GPU's recommended "
                f"working set ({format_bytes(device.recommended_bytes)}): expect paging; lower "
                "--memory-budget, or raise it with `sudo sysctl iogpu.wired_limit_mb=...`"
            )
    return MemoryLimits(min(cache_bytes, budget_bytes), wired, warning)


def apply(limits: MemoryLimits) -> None:
    """Set MLX's cache (and on Metal wired) limit; frees what the cache holds beyond it."""
    if limits.warning:
        log.warning(limits.warning)
    mx.set_cache_limit(limits.cache_bytes)
    if limits.wired_bytes is not None:
        try:
            mx.set_wired_limit(limits.wired_bytes)
        except (RuntimeError, ValueError) as error:  # above the system's wired limit
            log.warning("could not wire %d bytes (%s); continuing", limits.wired_bytes, error)
    mx.clear_cache()
