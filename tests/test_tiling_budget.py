"""Memory as a setting: flat peak in image size, tiles that fit the budget, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from reference import random_case

import gigamlx
from gigamlx.backends.mlx import fused
from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.tiling.budget import tile_cost
from gigamlx.tiling.scheduler import tiled_step


def test_peak_memory_flat_in_image_size_with_fixed_tile(model):
    backend = MLXBackend()
    peaks = []
    for hw in [(512, 512), (1024, 1024)]:
        image, mask = random_case(hw, seed=5)
        backend.release_cache()
        peaks.append(tiled_step(backend, model, image, mask, "dice", tile=256).peak_bytes)
    assert peaks[1] <= 1.15 * peaks[0], peaks


def _budget(model, engine_mb: int) -> int:
    """A process budget leaving `engine_mb` above the host's own measured memory."""
    return int(tile_cost(MLXBackend(), model, "grad").host_bytes) + engine_mb * 10**6


@pytest.mark.parametrize("engine_mb", [150, 400])
def test_budget_bounds_measured_peak(model, engine_mb):
    backend = MLXBackend()
    image, mask = random_case((900, 1300), seed=6)
    backend.release_cache()
    budget = _budget(model, engine_mb)
    result = tiled_step(backend, model, image, mask, "dice", budget_bytes=budget)
    cost = tile_cost(backend, model, "grad")
    assert result.peak_bytes <= budget - cost.host_bytes  # the engine stays within its share
    # and the calibration is not wildly pessimistic: the step peaks near what was planned
    # (1.2: the step's peak moved by up to 11 % between runs of the same code, 2 of ~10 CI
    # passes on 2026-12-01 went above 1.1; the budget bound above is the hard one)
    (tile_h, tile_w), halo = result.plan.tile_hw, result.plan.halo_px
    planned = cost.fixed_bytes + cost.bytes_per_px * (tile_h + 2 * halo) * (tile_w + 2 * halo)
    assert 0.5 * planned <= result.peak_bytes <= 1.2 * planned, (result.peak_bytes, planned)


def test_budget_picks_larger_tiles_for_larger_budgets(model):
    backend = MLXBackend()
    image, mask = random_case((900, 1300), seed=6)
    small = tiled_step(backend, model, image, mask, "bce", budget_bytes=_budget(model, 60)).plan
    large = tiled_step(backend, model, image, mask, "bce", budget_bytes=_budget(model, 600)).plan
    assert large.tile_hw[0] * large.tile_hw[1] > small.tile_hw[0] * small.tile_hw[1]


def test_on_a_cpu_tiles_stop_at_the_cap_whatever_the_budget(model, monkeypatch):
    """Past CPU_MAX_TILE_PX a side a larger budget buys no larger tile on a CPU (larger ones
    were slower there); a step planned under the cap gives the numbers of the same tiles."""
    from gigamlx.tiling import scheduler
    from gigamlx.tiling.budget import choose_tile_hw

    backend = MLXBackend()
    assert backend.runs_on_cpu
    cost = tile_cost(backend, model, "grad")
    free = choose_tile_hw(cost, 2 * 10**9, 0, (4096, 4096))
    capped = choose_tile_hw(cost, 2 * 10**9, 0, (4096, 4096), max_side_px=1000)
    assert max(capped) <= 1000 < max(free)
    assert choose_tile_hw(cost, 10**12, 0, (4096, 4096), max_side_px=1000) == capped

    monkeypatch.setattr(scheduler, "CPU_MAX_TILE_PX", 128)
    image, mask = random_case((333, 517), seed=7)
    auto = tiled_step(backend, model, image, mask, "dice", budget_bytes=10**10)
    assert auto.plan.tile_hw == (128, 128) and len(auto.plan.tiles) == 15
    given = tiled_step(backend, model, image, mask, "dice", tile=128)
    assert auto.loss == given.loss
    for name, g in given.grads.items():
        np.testing.assert_array_equal(auto.grads[name], g, err_msg=name)


class _Untouchable:
    """An image that fails if any pixel is read: proves errors come before any compute."""

    shape, dtype = (4096, 4096, 3), np.uint8

    def __getitem__(self, key):
        raise AssertionError("the image was read")


def test_budget_too_small_names_budget_and_minimum(model):
    mask = np.zeros((4096, 4096), np.uint8)
    with pytest.raises(ValueError, match=r"memory budget 1 MB is too small.*needs about"):
        gigamlx.tiled_value_and_grad(model, _Untouchable(), mask, budget_bytes=10**6)


def test_tile_cost_grows_with_window(model):
    cost = tile_cost(MLXBackend(), model, "grad")
    assert cost.bytes_per_px > 0
    assert cost.peak_bytes(512, 128) > cost.peak_bytes(64, 128)


@pytest.mark.parametrize(
    "image,mask,message",
    [
        (np.zeros((64, 64, 3), np.float32), np.zeros((64, 64)), "uint8"),
        (np.zeros((64, 64), np.uint8), np.zeros((64, 64)), r"\(H, W, 3\)"),
        (np.zeros((64, 64, 4), np.uint8), np.zeros((64, 64)), r"\(H, W, 3\)"),
        (np.zeros((64, 64, 3), np.uint8), np.zeros((64, 65)), "does not match"),
        (np.zeros((0, 64, 3), np.uint8), np.zeros((0, 64)), "empty"),
    ],
)
def test_bad_input_is_a_clear_error(model, image, mask, message):
    with pytest.raises(ValueError, match=message):
        gigamlx.tiled_value_and_grad(model, image, mask, tile=64)


def test_unknown_loss_is_a_clear_error(model):
    image, mask = random_case((64, 64), seed=1)
    with pytest.raises(ValueError, match="unknown loss"):
        gigamlx.tiled_value_and_grad(model, image, mask, loss="l2", tile=64)


_METAL_CACHE_STEP = """
import json, sys
import gigamlx.backends.mlx  # noqa: F401  (first: the BLAS)
import mlx.core as mx
import numpy as np
from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.core.memory import SampledPeak
from gigamlx.tiling.budget import tile_cost
from gigamlx.tiling.scheduler import tiled_step
# sampled, not ru_maxrss: Linux carries a forked parent's resident pages into the child's
rss = SampledPeak(0.001)
rss.reset()
mx.set_cache_limit(mx.get_memory_limit())  # MLX's default on Metal (32 MB on the CPU build)
backend, budget = MLXBackend(sys.argv[2]), int(sys.argv[1])
model = backend.build_model(0)
rng = np.random.default_rng(0)  # uint8 straight away: no float64 temporaries in the peak
hw = (2048, int(sys.argv[3]))
image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
mask = rng.integers(0, 2, hw, dtype=np.uint8)
result = tiled_step(backend, model, image, mask, "dice", budget_bytes=budget)
host = tile_cost(backend, model, "grad").host_bytes
print(json.dumps({"peak": result.peak_bytes, "cache": result.cache_bytes, "host": host,
                  "rss_peak": rss.peak(), "tiles": len(result.plan.tiles)}))
"""


# image widths (2048 rows) the budget must split: the fused path takes less memory per pixel,
# and where no RSS reading is subtracted (/proc hidden) its tile covers 2048 x 3072 whole
METAL_CACHE_IMAGE_W = {"mlx": 3072, "fused": 6144}


@pytest.mark.parametrize("kernels", ["mlx", "fused"])
def test_budget_bounds_process_with_metal_sized_cache(tmp_path, kernels):
    """Metal's cache limit defaults to the memory limit: the budget must bound it (issue 11).

    Before the cache limit was set from the budget, the pure-MLX path (Metal's) kept a 322 MB
    active peak plus 555 MB of cache and a 687 MB peak RSS under this 600 MB budget."""
    budget = 600 * 10**6
    if kernels == "fused" and fused._load()[0] is None:
        pytest.skip(f"fused kernels unavailable: {fused._load()[1]}")
    width = str(METAL_CACHE_IMAGE_W[kernels])
    done = subprocess.run(
        [sys.executable, "-c", _METAL_CACHE_STEP, str(budget), kernels, width],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["tiles"] > 1  # the budget, not the image, chose the tiles
    assert got["peak"] + got["cache"] <= budget - got["host"], got
    assert got["rss_peak"] is None or got["rss_peak"] <= budget, got  # None: /proc hidden
