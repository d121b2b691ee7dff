"""Memory as a setting: flat peak in image size, tiles that fit the budget, clear errors."""

import numpy as np
import pytest
from reference import random_case

import gigamlx
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
    (tile_h, tile_w), halo = result.plan.tile_hw, result.plan.halo_px
    planned = cost.fixed_bytes + cost.bytes_per_px * (tile_h + 2 * halo) * (tile_w + 2 * halo)
    assert 0.5 * planned <= result.peak_bytes <= 1.1 * planned, (result.peak_bytes, planned)


def test_budget_picks_larger_tiles_for_larger_budgets(model):
    backend = MLXBackend()
    image, mask = random_case((900, 1300), seed=6)
    small = tiled_step(backend, model, image, mask, "bce", budget_bytes=_budget(model, 60)).plan
    large = tiled_step(backend, model, image, mask, "bce", budget_bytes=_budget(model, 600)).plan
    assert large.tile_hw[0] * large.tile_hw[1] > small.tile_hw[0] * small.tile_hw[1]


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
