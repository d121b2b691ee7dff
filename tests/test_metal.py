"""The Metal path (Apple Silicon): a tiled step on the GPU against the float64 reference.

Metal has no float64: an MLX op on the GPU stream with a float64 input or output raises when
it is built, so a step that completes there created float32 arrays only (float64 sums and
gradients stay on the host, in numpy; the distributed all_sum runs on the CPU stream). The
GPU tests skip with the reason elsewhere; the last test checks on any device that float64
values from the host come back as float32 engine arrays.
"""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference import float64_reference, random_case

from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.tiling.budget import tile_cost
from gigamlx.tiling.scheduler import tiled_step

needs_metal = pytest.mark.skipif(
    not mx.metal.is_available(),
    reason="no Metal device: mx.metal.is_available() is False (Apple Silicon only)",
)


@pytest.fixture
def on_gpu():
    previous = mx.default_device()
    mx.set_default_device(mx.gpu)
    try:
        yield
    finally:
        mx.set_default_device(previous)


def _engine_dtypes(model, optimizer) -> set:
    arrays = tree_flatten(model.parameters()) + tree_flatten(optimizer.state)
    return {v.dtype for _, v in arrays if v.dtype not in (mx.uint32, mx.int32, mx.uint64)}


@pytest.mark.gpu
@needs_metal
@pytest.mark.parametrize("tile", [128, 576])
def test_metal_tiled_step_matches_float64_reference(on_gpu, tile):
    """Several tiles, and one (its Dice coefficients in float64 on the CPU stream, inside the
    GPU's graph)."""
    backend = MLXBackend()  # "auto": the pure-MLX path on the GPU, as on Metal
    model = backend.build_model(0)
    assert backend.kernels.name == "mlx" and "default device" in backend.kernels.reason
    image, mask = random_case((333, 517), seed=333)
    ref_loss, ref_grads, _ = float64_reference(backend.flat_params(model), image, mask, "dice")
    result = tiled_step(backend, model, image, mask, "dice", tile=tile)
    assert (len(result.plan.tiles) == 1) == (tile == 576)
    assert abs(result.loss - ref_loss) <= 1e-5
    names = sorted(ref_grads)
    ref = np.concatenate([np.ravel(ref_grads[n]) for n in names])
    got = np.concatenate([np.ravel(result.grads[n]) for n in names])
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4
    optimizer = backend.make_optimizer(model, 1e-3)
    backend.apply_gradients(model, optimizer, result.grads)  # float64 grads in
    assert _engine_dtypes(model, optimizer) == {mx.float32}


@pytest.mark.gpu
@needs_metal
def test_metal_budget_bounds_active_and_cache(on_gpu):
    """On Metal MLX's cache may grow to the memory limit unless the budget sets it."""
    backend = MLXBackend()
    model = backend.build_model(0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2048, 3072, 3), dtype=np.uint8)
    mask = rng.integers(0, 2, (2048, 3072), dtype=np.uint8)
    budget = 600 * 10**6
    result = tiled_step(backend, model, image, mask, "dice", budget_bytes=budget)
    host = tile_cost(backend, model, "grad").host_bytes
    assert len(result.plan.tiles) > 1
    assert result.peak_bytes + result.cache_bytes <= budget - host


def test_host_float64_becomes_engine_float32(model):
    """Gradients and checkpoints arrive as float64 numpy; the engine must hold float32."""
    backend = MLXBackend()
    flat64 = {n: v.astype(np.float64) for n, v in backend.flat_params(model).items()}
    backend.load_params(model, flat64)
    optimizer = backend.make_optimizer(model, 1e-3)
    backend.apply_gradients(model, optimizer, {n: v * 1e-3 for n, v in flat64.items()})
    state64 = {k: np.asarray(v, np.float64) for k, v in backend.optimizer_state(optimizer).items()}
    backend.load_optimizer_state(optimizer, state64)
    assert _engine_dtypes(model, optimizer) == {mx.float32}
