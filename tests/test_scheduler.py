"""Tiled loss, gradients and predictions against a float64 whole-image reference."""

from functools import partial

import numpy as np
import pytest
from mlx.utils import tree_flatten
from reference import (
    disc_case,
    float64_reference,
    mlx_whole_image,
    perturbed,
    random_case,
    tie_free,
)

import gigamlx
from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend
from gigamlx.backends.mlx import fused
from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.core.normalise import InputNorm
from gigamlx.tiling.scheduler import tiled_predict, tiled_step

# (image H, W), tile side: non-square; tile not dividing the image; H, W not multiples of 64;
# an image smaller than one tile; a strip one tile wide.
CASES = [((640, 1344), 256), ((333, 517), 128), ((100, 70), 256), ((130, 1000), 192)]


@pytest.fixture(params=["fused", "mlx"])
def backend(request) -> MLXBackend:
    """Both model paths, each chosen explicitly: the compiled CPU kernels and the pure-MLX ops
    (what Metal runs). The fused one skips with its reason where the extension is missing."""
    if request.param == "fused" and fused._load()[0] is None:
        pytest.skip(f"fused kernels unavailable: {fused._load()[1]}")
    return MLXBackend(request.param)


def _concat(grads: dict, names) -> np.ndarray:
    return np.concatenate([np.ravel(grads[n]) for n in names])


@pytest.mark.parametrize("loss", ["dice", "bce", "dice+bce"])
@pytest.mark.parametrize("hw,tile", CASES)
def test_tiled_value_and_grad_matches_float64_whole_image(model, backend, hw, tile, loss):
    image, mask = random_case(hw, seed=hw[0])
    image = tie_free(backend.flat_params(model), image)
    ref_grads, tiled_grads = _assert_exact_per_tensor(backend, model, image, mask, loss, tile)
    names = sorted(ref_grads)
    ref_all = _concat(ref_grads, names)
    err_all = np.linalg.norm(_concat(tiled_grads, names) - ref_all) / np.linalg.norm(ref_all)
    assert err_all <= 1e-4, f"tiled gradient {err_all:.2e} from float64"


# (image H, W), tile, seed, weight noise: odd sizes and tiles; the noise makes the coarse
# layers' gradients 1e3-1e5 times smaller than the head's (sums with heavy cancellation)
HARD_CASES = [
    ((640, 1344), 256, 0, 0.2),
    ((333, 517), 128, 1, 0.05),
    ((130, 1000), 192, 2, 0.1),
    ((100, 70), 256, 3, 0.2),
    ((448, 389), 320, 4, 0.05),
]


@pytest.mark.parametrize("loss", ["dice", "bce", "dice+bce"])
@pytest.mark.parametrize("hw,tile,seed,noise", HARD_CASES)
def test_tiled_value_and_grad_matches_float64_under_heavy_cancellation(
    backend, hw, tile, seed, noise, loss
):
    """Per tensor, not the global norm: random images, disc masks, perturbed weights, where
    accumulation order and precision show (the fused first layer's float chain of 768
    products flipped a ReLU here before its rows were summed in double)."""
    model = backend.build_model(seed)
    flat = perturbed(backend.flat_params(model), noise, seed)
    backend.load_params(model, flat)
    image, mask = disc_case(hw, seed)
    image = tie_free(flat, image, seed)
    ref_grads, _ = _assert_exact_per_tensor(backend, model, image, mask, loss, tile)
    coarse = min(np.linalg.norm(ref_grads[n]) for n in ("down3.weight", "up3.weight"))
    assert coarse < 1e-2 * np.linalg.norm(ref_grads["head.weight"])  # still a hard case


def _assert_exact_per_tensor(backend, model, image, mask, loss, tile) -> tuple[dict, dict]:
    """Tiled loss within 1e-5 of float64, and each gradient tensor within max(1e-5, twice the
    whole-image float32 pass's error) relative to it; returns (float64, tiled) gradients."""
    flat = backend.flat_params(model)
    ref_loss, ref_grads, _ = float64_reference(flat, image, mask, loss)
    result = tiled_step(backend, model, image, mask, loss, tile)
    loss_value, tiled_grads = result.loss, result.grads
    assert set(tiled_grads) == set(ref_grads)
    whole_loss, whole_grads = mlx_whole_image(model, image, mask, loss)

    assert abs(loss_value - ref_loss) <= 1e-5
    for name in sorted(ref_grads):
        ref = ref_grads[name]
        err_tiled = np.linalg.norm(tiled_grads[name] - ref)
        err_whole = np.linalg.norm(whole_grads[name] - ref)
        # both float32 paths sit at rounding noise for some tensors (e.g. a bias whose
        # gradient is a sum with cancellation); below 1e-5 relative the 2x rule is noise
        floor = 1e-5 * np.linalg.norm(ref)
        assert err_tiled <= max(2 * err_whole, floor), f"{name}: {err_tiled:.3e} vs {err_whole:.3e}"
    return ref_grads, tiled_grads


@pytest.mark.parametrize("hw,tile", CASES)
def test_predict_matches_float64_whole_image(model, backend, hw, tile):
    image, mask = random_case(hw, seed=hw[1])
    _, _, ref_probs = float64_reference(backend.flat_params(model), image, mask, "bce")
    probs = tiled_predict(backend, model, image, tile)
    assert probs.shape == hw
    assert np.abs(probs - ref_probs).max() <= 1e-5


def test_public_api_matches_the_scheduler(model):
    """gigamlx.tiled_value_and_grad returns the scheduler's loss and grads as the model's tree."""
    image, mask = random_case((200, 300), seed=5)
    result = tiled_step(get_backend("mlx"), model, image, mask, "dice+bce", 128)  # as the API
    loss_value, tree = gigamlx.tiled_value_and_grad(model, image, mask, "dice+bce", tile=128)
    assert loss_value == pytest.approx(result.loss, abs=1e-7)
    for name, value in tree_flatten(tree):
        np.testing.assert_allclose(np.array(value), result.grads[name], rtol=1e-5, atol=1e-9)


def test_predict_writes_into_out_uint8(model):
    image, _ = random_case((200, 300), seed=3)
    out = np.zeros((200, 300), np.uint8)
    returned = gigamlx.predict(model, image, tile=128, out=out)
    assert returned is out
    expected = np.rint(gigamlx.predict(model, image, tile=256) * 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1


NORM = InputNorm(mean=(0.83, 0.62, 0.8), std=(0.11, 0.21, 0.09))  # near an H&E slide's


@pytest.mark.parametrize("hw,tile", [CASES[1], CASES[2]])
def test_a_standardised_model_matches_float64_whole_image(backend, hw, tile):
    """The input standardisation (core/normalise.py) keeps tiling exact: the reference
    standardises the zero-padded image itself; tiles must zero it outside the image."""
    model = backend.build_model(5)
    model.input_norm = NORM
    image, mask = random_case(hw, seed=hw[0] + 1)
    flat = backend.flat_params(model)
    ref_loss, ref_grads, ref_probs = float64_reference(flat, image, mask, "dice+bce", NORM)
    result = tiled_step(backend, model, image, mask, "dice+bce", tile)
    assert abs(result.loss - ref_loss) <= 1e-5
    names = sorted(ref_grads)
    ref_all = _concat(ref_grads, names)
    err = np.linalg.norm(_concat(result.grads, names) - ref_all) / np.linalg.norm(ref_all)
    assert err <= 1e-4, f"tiled gradient {err:.2e} from float64"
    assert np.abs(tiled_predict(backend, model, image, tile) - ref_probs).max() <= 1e-5
    model.input_norm = InputNorm()  # the raw model differs: the test can tell them apart
    assert np.abs(tiled_predict(backend, model, image, tile) - ref_probs).max() > 1e-3


@pytest.mark.parametrize("limit_tiles", [0, 2, 99])
def test_dice_pass_two_starts_with_the_windows_kept_from_pass_one(model, limit_tiles):
    """Windows from a store are kept for pass 2 as far as the budget's cache share allows
    (none, some, all): those are not read again, pass 2 starts with the newest, and loss and
    gradients are the bytes of a step that kept none."""
    from gigamlx.core.arrays import WindowArray
    from gigamlx.tiling.budget import CACHE_SHARE

    backend = get_backend("mlx")
    image, mask = random_case((333, 517), seed=5)
    reads = []

    def read(box):
        reads.append(box)
        return image[box.y0 : box.y1, box.x0 : box.x1]

    lazy = WindowArray(image.shape, image.dtype, read)  # not an ndarray: may be cached
    plain = tiled_step(backend, model, image, mask, "dice+bce", 128)
    tiles = plain.plan.tiles
    n_kept = min(limit_tiles, len(tiles))
    last = tiles[len(tiles) - n_kept :]
    budget = int(sum(t.in_box.area() * 3 + t.out_box.area() for t in last) / CACHE_SHARE) + 10
    kept = tiled_step(backend, model, lazy, mask, "dice+bce", 128, budget_bytes=budget)
    assert kept.kept_windows == n_kept and plain.kept_windows == 0
    assert kept.loss == plain.loss
    for name, g in plain.grads.items():
        np.testing.assert_array_equal(kept.grads[name], g, err_msg=name)
    first_pass, second_pass = reads[: len(tiles)], reads[len(tiles) :]
    assert len(second_pass) == len(tiles) - n_kept
    expected = [t.in_box for t in reversed(tiles[: len(tiles) - n_kept])]
    assert [(b.y0, b.x0) for b in second_pass] == [(max(b.y0, 0), max(b.x0, 0)) for b in expected]
    assert len(first_pass) == len(tiles)


def _count_calls(monkeypatch, backend, *names: str) -> dict[str, int]:
    """Count calls of the backend's tile methods `names` (the scheduler's and the defaults')."""
    calls = dict.fromkeys(names, 0)
    for name in names:

        def counted(*args, _name=name, _method=getattr(backend, name), **kwargs):
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(backend, name, counted)
    return calls


def _two_pass_route(backend: MLXBackend) -> MLXBackend:
    """The same backend with Backend's default tile_loss_grad: pass 1's sums, then tile_grad."""
    twin = MLXBackend(backend.kernels.name)
    twin.tile_loss_grad = partial(Backend.tile_loss_grad, twin)
    return twin


@pytest.mark.parametrize("loss", ["dice", "dice+bce"])
def test_one_tile_dice_step_takes_one_pass_equal_to_two(monkeypatch, backend, loss):
    """A plan of one tile needs no pass 1: one forward + backward gives the loss, the sums and
    the gradient of the two-pass route, and matches float64 as any tiled step does."""
    model = backend.build_model(2)
    image, mask = random_case((333, 517), seed=7)
    image = tie_free(backend.flat_params(model), image)
    names = ("tile_stats", "tile_grad", "tile_loss_grad")
    twin = _two_pass_route(backend)
    twin_calls = _count_calls(monkeypatch, twin, *names)
    two = tiled_step(twin, model, image, mask, loss, 576)
    calls = _count_calls(monkeypatch, backend, *names)
    one = tiled_step(backend, model, image, mask, loss, 576)
    assert len(one.plan.tiles) == 1 and one.forward_seconds == 0.0
    assert calls == {"tile_stats": 0, "tile_grad": 0, "tile_loss_grad": 1}
    assert twin_calls == {"tile_stats": 1, "tile_grad": 1, "tile_loss_grad": 1}
    assert one.loss == pytest.approx(two.loss, abs=1e-7)
    np.testing.assert_allclose(one.stats, two.stats, rtol=1e-6)
    for name, g in two.grads.items():
        np.testing.assert_allclose(one.grads[name], g, rtol=1e-5, atol=1e-9, err_msg=name)
    _assert_exact_per_tensor(backend, model, image, mask, loss, 576)


@pytest.mark.parametrize("loss,tile,expected", [
    ("dice", 128, {"tile_stats": 15, "tile_grad": 15, "tile_loss_grad": 0}),
    ("bce", 576, {"tile_stats": 0, "tile_grad": 1, "tile_loss_grad": 0}),
])  # fmt: skip
def test_multi_tile_dice_takes_two_passes_and_bce_one(monkeypatch, model, loss, tile, expected):
    """Dice over several tiles still sums in pass 1 first; BCE never needs a pass 1."""
    backend = MLXBackend("mlx")
    image, mask = random_case((333, 517), seed=8)
    calls = _count_calls(monkeypatch, backend, "tile_stats", "tile_grad", "tile_loss_grad")
    result = tiled_step(backend, model, image, mask, loss, tile)
    assert calls == expected and len(result.plan.tiles) == expected["tile_grad"]
    assert (result.forward_seconds > 0) == (loss == "dice")


def test_pass_two_takes_the_stats_of_pass_one(monkeypatch, model):
    """A Dice step over several tiles asks pass 2 for gradients only: its stats are pass 1's
    sums, as the tiles' own stats would give them; a BCE step (no pass 1) asks for both."""
    backend = MLXBackend("mlx")
    image, mask = random_case((333, 517), seed=8)
    asked, pass_one = [], []
    tile_grad, tile_stats = backend.tile_grad, backend.tile_stats

    def recorded_grad(model, data, padded_hw, objective, with_stats=True):
        asked.append(with_stats)
        return tile_grad(model, data, padded_hw, objective, with_stats)

    def recorded_stats(*args):
        pass_one.append(tile_stats(*args))
        return pass_one[-1]

    monkeypatch.setattr(backend, "tile_grad", recorded_grad)
    monkeypatch.setattr(backend, "tile_stats", recorded_stats)
    result = tiled_step(backend, model, image, mask, "dice", 128)
    assert asked == [False] * len(result.plan.tiles) == [False] * len(pass_one)
    np.testing.assert_allclose(result.stats, np.sum(pass_one, axis=0), rtol=1e-12)
    asked.clear()
    bce = tiled_step(backend, model, image, mask, "bce", 128)
    assert asked == [True] * len(bce.plan.tiles) and bce.stats.pixels == 333 * 517


@pytest.mark.parametrize("tile,trims", [(128, 1), (576, 0)])
def test_freed_memory_goes_back_after_a_step_of_several_tiles_only(monkeypatch, model, tile, trims):
    """Windows of several sizes fragment the heap, so their step hands freed blocks back; a
    one-tile step keeps them for the next step's identical buffers."""
    from gigamlx.tiling import scheduler

    calls = []
    monkeypatch.setattr(scheduler, "release_freed_memory", lambda: calls.append(1) or True)
    image, mask = random_case((333, 517), seed=9)
    tiled_step(MLXBackend("mlx"), model, image, mask, "dice", tile)
    assert len(calls) == trims
