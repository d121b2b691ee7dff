"""MLX's limits under a budget, with Metal's numbers (a 128 GB Mac Studio) and this machine's."""

import mlx.core as mx
import pytest

from gigamlx.backends.mlx import limits
from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.backends.mlx.limits import DeviceMemory, plan_limits

GB = 10**9
# M1 Ultra, 128 GB: max_recommended_working_set_size ~ 0.75 of memory; MLX's memory limit is
# min(1.5 x that, 0.95 x memory)
STUDIO = DeviceMemory(int(0.95 * 128 * GB), 96 * GB, metal=True)


def test_metal_budget_wires_and_bounds_the_cache():
    planned = plan_limits(16 * GB, 3 * GB, STUDIO)
    assert planned == (3 * GB, 16 * GB, None)


def test_metal_budget_above_recommended_set_warns_and_wires_at_most_that():
    planned = plan_limits(110 * GB, 20 * GB, STUDIO)
    assert planned.wired_bytes == 96 * GB
    assert "recommended working set" in planned.warning
    assert "iogpu.wired_limit_mb" in planned.warning


def test_budget_above_memory_limit_names_the_maximum():
    with pytest.raises(ValueError, match=r"more than MLX may allocate.*at most 122 GB"):
        plan_limits(200 * GB, GB, STUDIO)


def test_cpu_budget_sets_no_wired_limit():
    planned = plan_limits(2 * GB, 4 * GB, DeviceMemory(20 * GB, None, metal=False))
    assert planned == (2 * GB, None, None)  # the cache never exceeds the budget


def test_device_memory_reads_this_device():
    device = limits.device_memory()
    assert device.memory_limit_bytes == mx.get_memory_limit() > 0
    assert device.metal == (mx.default_device() == mx.gpu and mx.metal.is_available())


def test_bound_memory_sets_mlx_cache_limit():
    backend = MLXBackend()
    previous = mx.set_cache_limit(0)
    try:
        backend.bound_memory(10**9, 123 * 10**6)
        assert mx.set_cache_limit(previous) == 123 * 10**6
        assert backend.memory().cache_bytes == mx.get_cache_memory()
    finally:
        mx.set_cache_limit(previous)
