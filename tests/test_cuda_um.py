"""The cuda-um backend: parity with mlx on the CPU, cross-backend checkpoints, the CUDA parts.

Parity runs cuda-um's own code on torch's CPU engine (`device="cpu"`) against the mlx backend
on the same weights and inputs. The CUDA allocator is compiled whenever nvcc exists; tests that
need a GPU are marked `gpu` and skipped with the reason where torch sees none.
"""

import ctypes
import threading
from functools import partial

import numpy as np
import pytest
import torch
from reference import loss_terms, mlx_whole_image, random_case

from gigamlx.backends import get_backend
from gigamlx.backends.base import Backend, TileData
from gigamlx.backends.cuda_um import managed
from gigamlx.backends.cuda_um.build import NvccNotFound, build_library, find_nvcc
from gigamlx.backends.cuda_um.model import from_torch_layout
from gigamlx.core.arrays import read_window
from gigamlx.core.geometry import padded_hw
from gigamlx.core.losses import Objective
from gigamlx.core.memory import current_rss_bytes
from gigamlx.runs.checkpoint import load_checkpoint
from gigamlx.runs.config import TrainConfig
from gigamlx.tiling import budget
from gigamlx.tiling.budget import tile_cost
from gigamlx.tiling.scheduler import tiled_predict, tiled_step
from gigamlx.train.loop import train
from gigamlx.train.run import start_run

HW = (200, 330)  # tiles of 128 do not divide it, nor does the stride
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False"
)


@pytest.fixture(scope="module")
def pair():
    """(mlx backend, mlx model, cuda-um CPU backend, cuda-um model) with the same weights."""
    mlx_backend, torch_backend = get_backend("mlx"), get_backend("cuda-um", device="cpu")
    mlx_model, torch_model = mlx_backend.build_model(7), torch_backend.build_model(7)
    torch_backend.load_params(torch_model, mlx_backend.flat_params(mlx_model))
    return mlx_backend, mlx_model, torch_backend, torch_model


def _assert_grads_close(expected: dict, actual: dict, rtol: float = 1e-4) -> None:
    assert expected.keys() == actual.keys()
    for name, g in expected.items():
        scale = np.abs(g).max()
        assert np.abs(actual[name] - g).max() <= rtol * scale, name


@pytest.mark.parametrize("loss", ["dice", "dice+bce"])
def test_cuda_um_tiled_step_matches_mlx(pair, loss):
    mlx_backend, mlx_model, torch_backend, torch_model = pair
    image, mask = random_case(HW, 3)
    expected = tiled_step(mlx_backend, mlx_model, image, mask, loss, tile=128)
    actual = tiled_step(torch_backend, torch_model, image, mask, loss, tile=128)
    assert len(actual.plan.tiles) == 6
    assert abs(actual.loss - expected.loss) <= 1e-5
    assert actual.stats.pixels == expected.stats.pixels
    _assert_grads_close(expected.grads, actual.grads)


@pytest.mark.parametrize("loss", ["dice", "bce"])
def test_cuda_um_whole_image_matches_mlx(pair, loss):
    mlx_backend, mlx_model, torch_backend, torch_model = pair
    image, mask = random_case(HW, 4)
    expected_loss, expected_grads = mlx_whole_image(mlx_model, image, mask, loss)
    padded = np.zeros((*padded_hw(HW), 3), np.uint8)
    padded[: HW[0], : HW[1]] = image
    x = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255.0
    z = torch_model.logits(x)[0, 0, : HW[0], : HW[1]]
    value = loss_terms(z, torch.from_numpy(mask.astype(np.float32)), loss, torch)
    value.backward()
    value = value.item()
    grads = {
        n: from_torch_layout(torch_model, n, p.grad.numpy()).astype(np.float64)
        for n, p in torch_model.named_parameters()
    }
    torch_model.zero_grad(set_to_none=True)
    assert abs(value - expected_loss) <= 1e-5
    _assert_grads_close(expected_grads, grads)
    one_tile = tiled_step(torch_backend, torch_model, image, mask, loss, tile=384)
    assert len(one_tile.plan.tiles) == 1 and abs(one_tile.loss - expected_loss) <= 1e-5


@pytest.mark.parametrize("loss", ["dice", "dice+bce"])
def test_cuda_um_one_tile_dice_step_takes_one_pass(pair, monkeypatch, loss):
    """One tile: cuda-um's single forward + backward equals its two-pass route (Backend's
    default tile_loss_grad) and the mlx backend's one-tile step."""
    mlx_backend, mlx_model, torch_backend, torch_model = pair
    image, mask = random_case(HW, 6)
    expected = tiled_step(mlx_backend, mlx_model, image, mask, loss, tile=384)
    with monkeypatch.context() as patch:
        patch.setattr(
            torch_backend, "tile_loss_grad", partial(Backend.tile_loss_grad, torch_backend)
        )
        two = tiled_step(torch_backend, torch_model, image, mask, loss, tile=384)
    with monkeypatch.context() as patch:
        patch.setattr(torch_backend, "tile_stats", None)  # a pass 1 would fail
        one = tiled_step(torch_backend, torch_model, image, mask, loss, tile=384)
    assert len(one.plan.tiles) == 1 and one.forward_seconds == 0.0
    assert one.loss == pytest.approx(two.loss, abs=1e-7)
    np.testing.assert_allclose(one.stats, two.stats, rtol=1e-6)
    _assert_grads_close(two.grads, one.grads, rtol=1e-5)
    assert abs(one.loss - expected.loss) <= 1e-5
    _assert_grads_close(expected.grads, one.grads)


def test_cuda_um_predictions_match_mlx(pair):
    mlx_backend, mlx_model, torch_backend, torch_model = pair
    image, _ = random_case(HW, 5)
    expected = tiled_predict(mlx_backend, mlx_model, image, tile=128)
    actual = tiled_predict(torch_backend, torch_model, image, tile=128)
    assert actual.dtype == np.float32 and np.abs(actual - expected).max() <= 1e-5


@pytest.fixture(scope="module")
def slide(synth_store):
    return str(synth_store((320, 448), seed=2))


def _start(slide, out, backend: str, steps: int, init=None):
    """A run on `backend`; `init` (flat MLX-layout weights) replaces its seeded start."""
    config = TrainConfig(
        data=(slide,), region="256x384", steps=steps, tile=192, lr=0.01, out=str(out),
        checkpoint_every=1, backend=backend, device="cpu",
        # a constant rate: a run resumed with a new --steps keeps the straight run's rates
        warmup=0.0, lr_schedule="constant", val_fraction=0.0,
    )  # fmt: skip
    run = start_run(config, resume=False)
    if init is not None:
        run.backend.load_params(run.model, init)
    return run


@pytest.fixture(scope="module")
def mlx_straight(slide, tmp_path_factory):
    """Weights at the start and after 2 mlx steps."""
    run = _start(slide, tmp_path_factory.mktemp("mlx") / "run", "mlx", 2)
    init = run.backend.flat_params(run.model)
    train(run)
    return init, run.backend.flat_params(run.model)


def _assert_weights_close(expected: dict, actual: dict, atol: float = 1e-4) -> None:
    for name, w in expected.items():
        np.testing.assert_allclose(actual[name], w, rtol=0, atol=atol, err_msg=name)


def test_cuda_um_training_steps_match_mlx(slide, mlx_straight, tmp_path):
    init, expected = mlx_straight
    run = _start(slide, tmp_path / "run", "cuda-um", 2, init)
    train(run)
    _assert_weights_close(expected, run.backend.flat_params(run.model))
    _assert_weights_close(expected, load_checkpoint(tmp_path / "run").weights)


@pytest.mark.parametrize("first,second", [("mlx", "cuda-um"), ("cuda-um", "mlx")])
def test_checkpoint_resumes_in_the_other_backend(slide, mlx_straight, tmp_path, first, second):
    init, expected = mlx_straight
    train(_start(slide, tmp_path / "run", first, 1, init))
    config = TrainConfig(out=str(tmp_path / "run"))
    run = start_run(config, resume=True, overrides={"steps": 2, "backend": second, "device": "cpu"})
    assert run.backend.name == second and run.step == 1
    train(run)
    _assert_weights_close(expected, run.backend.flat_params(run.model))
    saved = load_checkpoint(tmp_path / "run").optimizer
    assert saved["step"].item() == 2 and saved["down1.weight.m"].shape == (2, 16, 16, 3)


no_rss = pytest.mark.skipif(
    current_rss_bytes() is None,
    reason="no current-RSS reading: Linux with /proc hidden (macOS reads it through psutil)",
)


@no_rss
def test_cuda_um_cpu_memory_readings_drive_the_budget(pair):
    """On the CPU the budget is measured on the process RSS; a tile must cost bytes per pixel."""
    _, _, backend, model = pair
    cost = tile_cost(backend, model, "grad")
    # a gradient tile holds at least its float32 input (12 B/px) and, on this 4492-parameter
    # net, well under 2 kB per input pixel: a reading that drives nothing fails either bound
    assert 12 <= cost.bytes_per_px <= 2000, cost
    reading = backend.memory()
    assert 0 < reading.active_bytes <= reading.peak_bytes


@no_rss
def test_cuda_um_cpu_budget_without_resettable_peak(pair, monkeypatch, tmp_path):
    """macOS keeps no resettable peak RSS (no /proc/self/clear_refs): the sampled peak must
    still give a tile a cost per pixel."""
    _, _, backend, model = pair
    monkeypatch.setattr(managed, "_STATUS", tmp_path / "no-status")
    monkeypatch.setattr(managed, "_CLEAR_REFS", tmp_path / "no-clear-refs")
    monkeypatch.setattr(budget, "_cost_cache", {})
    block = np.ones(300 * 2**20 // 8)  # a lifetime peak above what the probes reach
    del block
    managed.trim_host_heap()
    cost = tile_cost(backend, model, "grad")
    assert cost.bytes_per_px > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_cuda_um_without_cuda_names_the_fix(device):
    with pytest.raises(ValueError, match=r"--device cpu.*--backend mlx"):
        get_backend("cuda-um", device=device)


def test_cuda_um_unknown_device_is_refused():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_backend("cuda-um", device="tpu")


def _nvcc() -> str:
    try:
        return find_nvcc()
    except NvccNotFound as error:
        pytest.skip(f"nvcc not found: {error}")


def test_managed_allocator_compiles_and_respects_its_limit(tmp_path):
    library = ctypes.CDLL(str(build_library(tmp_path, _nvcc())))
    entry_points = ("um_malloc", "um_free", "um_prefetch", "um_advise", "um_concurrent_access")
    for name in entry_points:
        assert hasattr(library, name), name
    library.um_malloc.restype = ctypes.c_void_p
    library.um_active_bytes.restype = ctypes.c_longlong
    library.um_set_limit(ctypes.c_longlong(1000))
    # over the limit: refused before CUDA is touched, so this runs without a GPU too
    assert library.um_malloc(ctypes.c_ssize_t(4096), 0, None) is None
    assert library.um_active_bytes() == 0


@pytest.mark.gpu
@needs_gpu
def test_cuda_um_tile_data_is_managed_and_grads_match_cpu(pair):
    _, _, cpu_backend, cpu_model = pair
    gpu_backend = get_backend("cuda-um", device="cuda")
    gpu_model = gpu_backend.build_model(0)
    gpu_backend.load_params(gpu_model, cpu_backend.flat_params(cpu_model))
    image, mask = random_case(HW, 6)
    expected = tiled_step(cpu_backend, cpu_model, image, mask, "dice", tile=128)
    actual = tiled_step(gpu_backend, gpu_model, image, mask, "dice", tile=128)
    assert abs(actual.loss - expected.loss) <= 1e-5
    _assert_grads_close(expected.grads, actual.grads)
    before = gpu_backend.memory().active_bytes
    staged = gpu_backend.stage(_tile_data(actual.plan.tiles[0], image, mask))
    assert gpu_backend.um.is_managed(staged.image) and gpu_backend.um.is_managed(staged.target)
    assert gpu_backend.um.active_bytes() >= staged.image.numel()  # held by our allocator
    assert gpu_backend.memory().active_bytes - before >= staged.image.numel()  # in the budget
    free_bytes, _ = torch.cuda.mem_get_info()
    assert 0 < gpu_backend.um.limit_bytes() <= free_bytes + gpu_backend.um.active_bytes()


@pytest.mark.gpu
@needs_gpu
def test_cuda_um_staging_ahead_on_a_thread_gives_the_same_grads(pair):
    """Tile n+1 staged (host write + prefetch on the side stream) while tile n computes."""
    _, _, cpu_backend, cpu_model = pair
    backend = get_backend("cuda-um", device="cuda")
    model = backend.build_model(0)
    backend.load_params(model, cpu_backend.flat_params(cpu_model))
    image, mask = random_case(HW, 7)
    plan = tiled_step(backend, model, image, mask, "bce", tile=128).plan
    tiles = [_tile_data(t, image, mask) for t in plan.tiles]
    ahead: list = [backend.stage(tiles[0])]
    objective = Objective(bce_weight=1.0 / (HW[0] * HW[1]))
    total = {}
    for n in range(len(tiles)):
        reader = threading.Thread(target=lambda n=n: ahead.append(_stage_next(backend, tiles, n)))
        reader.start()
        _, grads = backend.tile_grad(model, ahead[n], plan.padded_hw, objective)
        reader.join()
        total = {k: total.get(k, 0.0) + g for k, g in grads.items()}
    expected = tiled_step(cpu_backend, cpu_model, image, mask, "bce", tile=128)
    _assert_grads_close(expected.grads, total)


def _stage_next(backend, tiles, n):
    return backend.stage(tiles[n + 1]) if n + 1 < len(tiles) else None


def _tile_data(tile, image, mask) -> TileData:
    target = (read_window(mask, tile.out_box) != 0).astype(np.float32)
    return TileData(tile, read_window(image, tile.in_box), target)


_STUB_C = r"""
#include <stddef.h>
static long long limit_bytes = 0;
int um_prefetch(const void* p, size_t n, int d, void* s) { return 0; }
int um_advise(const void* p, size_t n, int a, int d) { return 0; }
int um_is_managed(const void* p) { return 0; }
int um_concurrent_access(int d) { return 1; }
long long um_active_bytes(void) { return 4294967297LL; }
long long um_peak_bytes(void) { return 6000000000LL; }
void um_reset_peak(void) {}
void um_set_limit(long long bytes) { limit_bytes = bytes; }
long long um_limit_bytes(void) { return limit_bytes; }
const char* um_error_string(int code) { return "stub"; }
"""


def test_managed_bindings_keep_64_bit_values(tmp_path):
    """Every entry point managed.py calls has a declared C signature: byte counts above
    2**32 (any GPU) survive the round trip instead of being truncated to a C int."""
    import re
    import shutil
    import subprocess

    from gigamlx.backends.cuda_um import managed

    used = set(re.findall(r"\blib\.(um_\w+)", open(managed.__file__).read()))
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stub allocator")
    source, library = tmp_path / "stub.c", tmp_path / "libstub.so"
    source.write_text(_STUB_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    lib = managed._bind(ctypes.CDLL(str(library)))
    assert used <= {n for n in dir(lib) if n.startswith("um_")}  # _bind touched each one
    lib.um_set_limit(5_000_000_000)
    assert lib.um_limit_bytes() == 5_000_000_000
    assert (lib.um_active_bytes(), lib.um_peak_bytes()) == (4294967297, 6_000_000_000)
    assert lib.um_error_string(3) == b"stub"
