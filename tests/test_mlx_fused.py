"""The compiled fused kernels (kernels/ext via backends/mlx/fused.py) against pure MLX."""

import importlib.util
import os
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from gigamlx.backends.base import TileData
from gigamlx.backends.mlx import conv, conv_transpose, fused
from gigamlx.backends.mlx.backend import MLXBackend
from gigamlx.backends.mlx.model import _standardised
from gigamlx.backends.mlx.pixel_loss import bce_reference as _bce
from gigamlx.backends.mlx.pixel_loss import stat_rows_reference as _stat_rows
from gigamlx.core.geometry import Box, inside_at_scale, plan_tiles
from gigamlx.core.losses import Objective
from gigamlx.core.normalise import InputNorm

VALUE_RTOL = 1e-5
GRAD_RTOL = 1e-4


def _require_ext():
    module, reason = fused._load()
    if module is None:
        pytest.skip(f"fused extension not built: {reason}")


def _rel(actual: mx.array, expected: mx.array) -> float:
    """Largest error relative to the largest reference magnitude."""
    a, e = np.array(actual, dtype=np.float64), np.array(expected, dtype=np.float64)
    return float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-30))


def _reference_down1(x, weight, bias, keep_yx, stride=4, pad=6):
    """Pure-MLX first layer as GigaUNet.logits computes it: conv + ReLU + zeroing."""
    a = nn.relu(conv.conv2d(x, weight, bias, stride, pad))
    rows, cols = mx.arange(a.shape[1]), mx.arange(a.shape[2])
    y0, x0, y1, x1 = keep_yx
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return mx.where(inside[None, :, :, None], a, mx.zeros_like(a))


def _reference_tail(h2, x, w_up, b_up, w_head, b_head, keep_yx):
    """Pure-MLX up-sample + ReLU + zeroing + concat + 3x3 head: (N, H, W, 1)."""
    a = nn.relu(conv_transpose.conv_transpose2d(h2, w_up, b_up, w_up.shape[1]))
    rows, cols = mx.arange(a.shape[1]), mx.arange(a.shape[2])
    y0, x0, y1, x1 = keep_yx
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    a = mx.where(inside[None, :, :, None], a, mx.zeros_like(a))
    return conv.conv2d(mx.concatenate([a, x], axis=-1), w_head, b_head, 1, 1)


def _tail_inputs(n, h, w, seed, c_in=4, c_up=3, stride=4):
    """GigaUNet's tail by default (h2 4 channels, up1 to 3, stride 4, joined with RGB)."""
    mx.random.seed(seed)
    return [
        mx.random.normal((n, h, w, c_in)),  # h2
        mx.random.uniform(shape=(n, stride * h, stride * w, 3)),  # x
        mx.random.normal((c_up, stride, stride, c_in)) * 0.3,
        mx.random.normal((c_up,)) * 0.1,
        mx.random.normal((1, 3, 3, c_up + 3)) * 0.3,
        mx.random.normal((1,)),
    ]


def test_fused_extension_loads_whenever_installed():
    """An installed extension must pass its smoke test (an ABI mismatch with mlx fails here);
    CI sets GIGAMLX_REQUIRE_EXT=1 after setup.sh: there it must be installed on Linux."""
    required = os.environ.get("GIGAMLX_REQUIRE_EXT") == "1" and sys.platform.startswith("linux")
    if importlib.util.find_spec("gigamlx_fused") is None and not required:
        pytest.skip("the fused extension is not installed (bash setup.sh builds it)")
    module, reason = fused._load()
    assert module is not None, f"fused extension installed but not usable: {reason}"


def test_choose_kernels_is_explicit():
    assert fused.choose_kernels("mlx").name == "mlx"
    with pytest.raises(ValueError, match="unknown kernels 'gpu'"):
        fused.choose_kernels("gpu")
    if fused._load()[0] is None:
        with pytest.raises(ValueError, match="--kernels fused cannot run here"):
            fused.choose_kernels("fused")
    else:
        assert fused.choose_kernels("fused").fused and fused.choose_kernels("auto").fused


@pytest.mark.parametrize(
    ("c_in", "c_up", "stride"),
    [
        (2, 2, 4),  # neither GigaUNet's blocked up-sampling (3 x 4) nor its 6-channel head
        (4, 3, 2),  # the blocked up-sampling at another stride that divides 16
        (4, 3, 3),  # a stride that does not divide 16: weight patterns per block
    ],
)
def test_fused_tail_with_other_channels_and_strides_matches_pure_mlx(c_in, c_up, stride):
    """The kernel's general loops (the GigaUNet shapes take blocked ones) give the same
    values and gradients."""
    _require_ext()
    inputs = _tail_inputs(1, 7, 9, seed=c_in + c_up + stride, c_in=c_in, c_up=c_up, stride=stride)
    keep_yx = (1, 2, 7 * stride - 1, 9 * stride - 3)
    z, z_ref = fused.head_logits(*inputs, keep_yx), _reference_tail(*inputs, keep_yx)
    assert z.shape == z_ref.shape == (1, 7 * stride, 9 * stride, 1)
    assert _rel(z, z_ref) <= VALUE_RTOL
    x, params = inputs[1], [inputs[0], *inputs[2:]]
    cotangent = mx.random.normal(z_ref.shape)

    def grads(fn):
        return mx.vjp(lambda h2, *rest: fn(h2, x, *rest, keep_yx), params, [cotangent])[1]

    for name, got, want in zip(
        ("h2", "w_up", "b_up", "w_head", "b_head"),
        grads(fused.head_logits),
        grads(_reference_tail),
        strict=True,
    ):
        assert _rel(got, want) <= GRAD_RTOL, name


@pytest.mark.parametrize(
    ("n", "h", "w", "keep_yx"),
    [
        (1, 8, 8, None),
        (1, 6, 13, None),  # non-square
        (2, 9, 5, (3, 6, 30, 17)),  # batch of two, a box cutting rows and cols
        (1, 16, 10, (0, 0, 64, 21)),  # box on one side only
        (1, 4, 4, (0, 0, 0, 0)),  # everything outside the image
    ],
)
def test_fused_tail_matches_pure_mlx(n, h, w, keep_yx):
    _require_ext()
    inputs = _tail_inputs(n, h, w, seed=n * 100 + h + w)
    keep_yx = keep_yx or (0, 0, 4 * h, 4 * w)
    z = fused.head_logits(*inputs, keep_yx)
    z_ref = _reference_tail(*inputs, keep_yx)
    assert z.shape == z_ref.shape == (n, 4 * h, 4 * w, 1)
    assert _rel(z, z_ref) <= VALUE_RTOL

    x = inputs[1]
    params = [inputs[0], *inputs[2:]]
    cotangent = mx.random.normal(z_ref.shape)

    def grads(fn):
        def call(h2, w_up, b_up, w_head, b_head):
            return fn(h2, x, w_up, b_up, w_head, b_head, keep_yx)

        return mx.vjp(call, params, [cotangent])[1]

    names = ("h2", "w_up", "b_up", "w_head", "b_head")
    for name, got, want in zip(
        names, grads(fused.head_logits), grads(_reference_tail), strict=True
    ):
        assert got.shape == want.shape, name
        assert _rel(got, want) <= GRAD_RTOL, name


@pytest.mark.parametrize(
    ("n", "h", "w", "keep_yx"),
    [
        (1, 32, 32, None),
        (1, 24, 52, None),  # non-square
        (2, 36, 20, (2, 1, 7, 4)),  # batch of two, a box cutting rows and cols
        (1, 40, 28, (0, 0, 10, 5)),  # box on one side only
        (1, 16, 16, (0, 0, 0, 0)),  # everything outside the image
    ],
)
def test_fused_down1_matches_pure_mlx(n, h, w, keep_yx):
    _require_ext()
    mx.random.seed(n * 100 + h + w)
    x = mx.random.uniform(shape=(n, h, w, 3))
    weight = mx.random.normal((2, 16, 16, 3)) * 0.05
    bias = mx.random.normal((2,)) * 0.1
    keep_yx = keep_yx or (0, 0, h // 4, w // 4)
    y = fused.down1(x, weight, bias, 4, 6, keep_yx)
    y_ref = _reference_down1(x, weight, bias, keep_yx)
    assert y.shape == y_ref.shape == (n, h // 4, w // 4, 2)
    assert _rel(y, y_ref) <= VALUE_RTOL

    cotangent = mx.random.normal(y_ref.shape)

    def grads(fn):
        return mx.vjp(lambda w, b: fn(x, w, b), [weight, bias], [cotangent])[1]

    def fused_fn(x, w, b):
        return fused.down1(x, w, b, 4, 6, keep_yx)

    def reference_fn(x, w, b):
        return _reference_down1(x, w, b, keep_yx)

    for name, got, want in zip(
        ("weight", "bias"), grads(fused_fn), grads(reference_fn), strict=True
    ):
        assert got.shape == want.shape, name
        if float(mx.abs(want).max()) > 0:
            assert _rel(got, want) <= GRAD_RTOL, name
        else:
            assert float(mx.abs(got).max()) == 0.0, name


def _down1_error_in_eps_of_terms(y, x_u8, weight, bias, stride, pad) -> np.ndarray:
    """|y - exact| over positive outputs, in units of float32 epsilon times the sum of the
    terms' magnitudes (|bias| + sum |w * x|): the scale at which any float32 sum errs."""
    import torch  # the float64 reference, as in tests/reference.py

    def conv(x, w, b):
        xt = torch.from_numpy(x).permute(0, 3, 1, 2)
        wt = torch.from_numpy(w).permute(0, 3, 1, 2)
        out = torch.nn.functional.conv2d(xt, wt, torch.from_numpy(b), stride=stride, padding=pad)
        return out.permute(0, 2, 3, 1).numpy()

    x = (x_u8.astype(np.float32) / np.float32(255)).astype(np.float64)  # the kernel's input
    w, b = np.array(weight, np.float64), np.array(bias, np.float64)
    exact = conv(x, w, b)
    terms = conv(np.abs(x), np.abs(w), np.abs(b))
    positive = exact > 0
    error = np.abs(np.array(y, np.float64) - np.maximum(exact, 0)) / (terms * 2.0**-24)
    return error[positive]


@pytest.mark.parametrize("seed,hw", [(0, (384, 640)), (1, (260, 404)), (2, (96, 1000))])
def test_fused_down1_sums_as_accurately_as_a_gemm(seed, hw):
    """The first layer's 768 products per output are summed a kernel row at a time in float
    and across rows in double: within one float32 epsilon of the terms' magnitude, as
    MLX's gemm is. One float chain over all taps erred up to 3.2 (rms 0.45) here, and each
    ulp moves the ReLU decisions that sit within rounding of zero downstream."""
    _require_ext()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (1, *hw, 3), dtype=np.uint8)
    weight = rng.normal(0, 0.3, (2, 16, 16, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (2,)).astype(np.float32)
    keep = (0, 0, hw[0] // 4, hw[1] // 4)
    y = fused.down1(mx.array(x), mx.array(weight), mx.array(bias), 4, 6, keep)
    error = _down1_error_in_eps_of_terms(y, x, weight, bias, 4, 6)
    assert error.max() <= 1.0 and np.sqrt(np.mean(error**2)) <= 0.2, (
        f"max {error.max():.2f}, rms {np.sqrt(np.mean(error**2)):.2f} epsilon of the terms"
    )


def test_fused_down1_generic_shape_matches_pure_mlx():
    """Other channel counts and kernels take the generic (non-blocked) loops."""
    _require_ext()
    mx.random.seed(11)
    x = mx.random.uniform(shape=(2, 20, 28, 2))
    weight, bias = mx.random.normal((3, 8, 8, 2)) * 0.2, mx.random.normal((3,)) * 0.1
    keep_yx = (1, 0, 5, 6)
    cotangent = mx.random.normal((2, 5, 7, 3))

    def fused_fn(w, b):
        return fused.down1(x, w, b, 4, 2, keep_yx)

    def reference_fn(w, b):
        return _reference_down1(x, w, b, keep_yx, stride=4, pad=2)

    (y,), got = mx.vjp(fused_fn, [weight, bias], [cotangent])
    (y_ref,), want = mx.vjp(reference_fn, [weight, bias], [cotangent])
    assert y.shape == y_ref.shape and _rel(y, y_ref) <= VALUE_RTOL
    for g, w in zip(got, want, strict=True):
        assert _rel(g, w) <= GRAD_RTOL
    if fused.reads_uint8():  # two channels' byte values looked up: bit for bit value / 255
        x_u8 = mx.array(np.random.default_rng(11).integers(0, 256, x.shape, dtype=np.uint8))

        def vjp_of(image):
            return mx.vjp(
                lambda w, b: fused.down1(image, w, b, 4, 2, keep_yx), [weight, bias], [cotangent]
            )

        (y8,), got8 = vjp_of(x_u8)
        (y,), got = vjp_of(x_u8.astype(mx.float32) / 255.0)
        assert mx.array_equal(y8, y)
        assert all(mx.array_equal(a, b) for a, b in zip(got8, got, strict=True))


def test_fused_kernels_read_uint8_images_as_value_over_255():
    """A uint8 image gives bit for bit what astype(float32) / 255 gives (odd sizes, a box)."""
    _require_ext()
    if not fused.reads_uint8():
        pytest.skip("extension built before 0.2 (float32 images only): bash setup.sh rebuilds it")
    rng = np.random.default_rng(5)
    x_u8 = mx.array(rng.integers(0, 256, (1, 44, 60, 3), dtype=np.uint8))
    x = x_u8.astype(mx.float32) / 255.0
    mx.random.seed(5)
    weight, bias = mx.random.normal((2, 16, 16, 3)) * 0.05, mx.random.normal((2,)) * 0.1
    keep = (1, 2, 10, 14)
    cotangent = mx.random.normal((1, 11, 15, 2))

    def down1(image):
        return lambda w, b: fused.down1(image, w, b, 4, 6, keep)

    (y8,), g8 = mx.vjp(down1(x_u8), [weight, bias], [cotangent])
    (y,), g = mx.vjp(down1(x), [weight, bias], [cotangent])
    assert mx.array_equal(y8, y) and all(mx.array_equal(a, b) for a, b in zip(g8, g, strict=True))

    h2, _, *tail = _tail_inputs(1, 11, 15, seed=5)
    box = (3, 5, 40, 57)
    z8 = fused.head_logits(h2, x_u8, *tail, box)
    assert mx.array_equal(z8, fused.head_logits(h2, x, *tail, box))
    with pytest.raises(ValueError, match="uint8 or float32"):
        fused.down1(x_u8.astype(mx.int32), weight, bias, 4, 6, keep)


def test_fused_kernels_standardise_as_the_pure_mlx_path_does():
    """Extension 0.3 standardises the window it reads, (x - mean) / std zeroed outside x_keep:
    bit for bit the model's pure-MLX standardisation, for uint8 and float32 windows."""
    _require_ext()
    if not fused.standardises():
        pytest.skip("extension built before 0.3 (no standardisation): bash setup.sh rebuilds it")
    rng = np.random.default_rng(6)
    x_u8 = mx.array(rng.integers(0, 256, (1, 44, 60, 3), dtype=np.uint8))
    norm = InputNorm((0.83, 0.62, 0.8), (0.11, 0.21, 0.09))
    in_box, padded_hw = Box(-8, 20, 36, 80), (30, 70)  # rows 38.., cols 50.. lie outside
    x_keep = tuple(inside_at_scale(in_box, padded_hw, 1))
    assert x_keep != (0, 0, 44, 60)
    x_std = _standardised(x_u8, norm, in_box, padded_hw)
    kernel_norm = (norm.mean, norm.std, x_keep)
    mx.random.seed(6)
    weight, bias = mx.random.normal((2, 16, 16, 3)) * 0.05, mx.random.normal((2,)) * 0.1
    keep, cotangent = (0, 0, 11, 15), mx.random.normal((1, 11, 15, 2))
    for image in (x_u8, x_u8.astype(mx.float32) / 255.0):
        (y_k,), g_k = mx.vjp(
            lambda w, b, image=image: fused.down1(image, w, b, 4, 6, keep, kernel_norm),
            [weight, bias],
            [cotangent],
        )
        (y,), g = mx.vjp(
            lambda w, b: fused.down1(x_std, w, b, 4, 6, keep), [weight, bias], [cotangent]
        )
        assert mx.array_equal(y_k, y)
        assert all(mx.array_equal(a, b) for a, b in zip(g_k, g, strict=True))
        h2, _, *tail = _tail_inputs(1, 11, 15, seed=6)
        box = (0, 0, 44, 60)
        z_k = fused.head_logits(h2, image, *tail, box, kernel_norm)
        assert mx.array_equal(z_k, fused.head_logits(h2, x_std, *tail, box))
    # and the standardisation is really applied: the raw window gives other numbers
    assert not mx.array_equal(fused.head_logits(h2, x_u8, *tail, box), z_k)


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),  # powers of two: exact reciprocals
        ((0.0, 1.0, 0.371), (1.0, 1e-3, 7.3)),  # no shift, a tiny and a large spread
        *[(tuple(m), tuple(s)) for m, s in np.random.default_rng(9).uniform(
            [[0.3] * 3, [0.02] * 3], [[0.95] * 3, [0.4] * 3], (4, 2, 3)).tolist()],
    ],
)  # fmt: skip
def test_fused_standardisation_is_bit_exact_for_every_byte_value(mean, std):
    """Every byte value of every channel, standardised in the kernels, is what the pure-MLX
    path computes bit for bit, whatever the slide's statistics (the kernels may compute the
    divisions as corrected products only where that gives the quotients exactly)."""
    _require_ext()
    if not fused.standardises():
        pytest.skip("extension built before 0.3 (no standardisation): bash setup.sh rebuilds it")
    rng = np.random.default_rng(10)
    values = np.stack([rng.permutation(256) for _ in range(3)], axis=-1)  # each byte, each channel
    x_u8 = mx.array(np.tile(values.reshape(16, 16, 3), (3, 4, 1))[None].astype(np.uint8))
    norm = InputNorm(mean, std)
    in_box = Box(0, 0, 48, 64)
    x_std = _standardised(x_u8, norm, in_box, (48, 64))
    kernel_norm = (norm.mean, norm.std, (0, 0, 48, 64))
    h2, _, *tail = _tail_inputs(1, 12, 16, seed=10)
    box = (0, 0, 48, 64)
    z = fused.head_logits(h2, x_u8, *tail, box, kernel_norm)
    assert mx.array_equal(z, fused.head_logits(h2, x_std, *tail, box))
    mx.random.seed(10)
    weight, bias = mx.random.normal((2, 16, 16, 3)) * 0.05, mx.random.normal((2,)) * 0.1
    keep = (0, 0, 12, 16)
    y = fused.down1(x_u8, weight, bias, 4, 6, keep, kernel_norm)
    assert mx.array_equal(y, fused.down1(x_std, weight, bias, 4, 6, keep))


def _kept(a: mx.array, keep_yx) -> mx.array:
    """`a` (N, H, W, C) zeroed outside the box (y0, x0, y1, x1), as a select."""
    rows, cols = mx.arange(a.shape[1]), mx.arange(a.shape[2])
    y0, x0, y1, x1 = keep_yx
    inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    return mx.where(inside[None, :, :, None], a, mx.zeros_like(a))


def _reference_middle(h1, params, down2, down3, keeps):
    """Pure-MLX middle: two strided convs down, two conv-transposes up joined with the skips,
    each ReLU'd and zeroed outside its box; then [up2, h1] along channels."""
    w2, b2, w3, b3, wu3, bu3, wu2, bu2 = params
    a2 = _kept(nn.relu(conv.conv2d(h1, w2, b2, *down2)), keeps[0])
    a3 = _kept(nn.relu(conv.conv2d(a2, w3, b3, *down3)), keeps[1])
    a4 = _kept(nn.relu(conv_transpose.conv_transpose2d(a3, wu3, bu3, wu3.shape[1])), keeps[2])
    joined = mx.concatenate([a4, a2], axis=-1)
    a5 = _kept(nn.relu(conv_transpose.conv_transpose2d(joined, wu2, bu2, wu2.shape[1])), keeps[3])
    return mx.concatenate([a5, h1], axis=-1)


# (channels c1..c5, down2 (k, s, p), down3 (k, s, p)): GigaUNet's, then other channel counts
# and strides (kernel rows of 1, 2 and 3 vectors of taps; conv-transpose blocks of 6 to 16)
MIDDLES = [
    ((2, 4, 6, 4, 2), (8, 4, 2), (8, 4, 2)),
    ((3, 5, 7, 3, 4), (4, 2, 1), (4, 2, 1)),
    ((1, 5, 2, 3, 1), (8, 4, 2), (8, 4, 2)),
]


@pytest.mark.parametrize("channels,down2,down3", MIDDLES)
@pytest.mark.parametrize(
    ("n", "scale_hw", "boxes"),
    [
        (1, (2, 3), None),  # everything kept
        (2, (3, 2), "cut"),  # batch of two, boxes cutting rows and columns at every layer
        (1, (1, 1), "empty"),  # everything outside the image
    ],
)
def test_fused_middle_matches_pure_mlx(channels, down2, down3, n, scale_hw, boxes):
    """The fused middle (extension 0.8), values and the gradients of h1 and every parameter,
    against the same layers in pure MLX."""
    _require_ext()
    if not fused.fuses_middle():
        pytest.skip("the built extension predates the fused middle: `bash setup.sh`")
    c1, c2, c3, c4, c5 = channels
    (k2, s2, _), (k3, s3, _) = down2, down3
    h, w = (s2 * s3 * v for v in scale_hw)  # at down3's scale: scale_hw
    mx.random.seed(n * 10 + c1 + k2)
    h1 = mx.maximum(mx.random.normal((n, h, w, c1)), 0)
    params = [
        mx.random.normal((c2, k2, k2, c1)) * 0.3,
        mx.random.normal((c2,)) * 0.1,
        mx.random.normal((c3, k3, k3, c2)) * 0.3,
        mx.random.normal((c3,)) * 0.1,
        mx.random.normal((c4, s3, s3, c3)) * 0.3,
        mx.random.normal((c4,)) * 0.1,
        mx.random.normal((c5, s2, s2, c4 + c2)) * 0.3,
        mx.random.normal((c5,)) * 0.1,
    ]
    sizes = [(h // s2, w // s2), (h // (s2 * s3), w // (s2 * s3)), (h // s2, w // s2), (h, w)]
    if boxes is None:
        keeps = [(0, 0, *hw) for hw in sizes]
    elif boxes == "cut":
        keeps = [(1, 0, hh - 1, ww // 2 + 1) for hh, ww in sizes]
    else:
        keeps = [(0, 0, 0, 0)] * 4
    y = fused.middle(h1, params, down2[1:], down3[1:], keeps)
    y_ref = _reference_middle(h1, params, down2[1:], down3[1:], keeps)
    assert y.shape == y_ref.shape == (n, h, w, c5 + c1)
    assert _rel(y, y_ref) <= VALUE_RTOL

    cotangent = mx.random.normal(y_ref.shape)

    def grads(fn):
        def call(h1, *params):
            return fn(h1, list(params), down2[1:], down3[1:], keeps)

        return mx.vjp(call, [h1, *params], [cotangent])[1]

    names = ("h1", "w_down2", "b_down2", "w_down3", "b_down3", "w_up3", "b_up3", "w_up2", "b_up2")
    for name, got, want in zip(names, grads(fused.middle), grads(_reference_middle), strict=True):
        assert got.shape == want.shape, name
        if float(mx.abs(want).max()) > 0:
            assert _rel(got, want) <= GRAD_RTOL, name
        else:
            assert float(mx.abs(got).max()) == 0.0, name


def test_fused_middle_refuses_layers_that_do_not_join():
    """Shapes that cannot make GigaUNet's joins are refused, naming the layer."""
    _require_ext()
    if not fused.fuses_middle():
        pytest.skip("the built extension predates the fused middle: `bash setup.sh`")
    h1 = mx.zeros((1, 32, 32, 2))
    params = [
        *(mx.zeros((4, 8, 8, 2)), mx.zeros(4)),
        *(mx.zeros((6, 8, 8, 4)), mx.zeros(6)),
        *(mx.zeros((4, 4, 4, 6)), mx.zeros(4)),
        *(mx.zeros((2, 4, 4, 8)), mx.zeros(2)),
    ]
    keeps = [(0, 0, 64, 64)] * 4
    mx.eval(fused.middle(h1, params, (4, 2), (4, 2), keeps))  # GigaUNet's: accepted
    bad_down3 = [*params[:2], mx.zeros((6, 8, 8, 3)), *params[3:]]
    with pytest.raises(ValueError, match="down3's weight"):
        fused.middle(h1, bad_down3, (4, 2), (4, 2), keeps)
    with pytest.raises(ValueError, match="down2's kernel must be a multiple of its stride"):
        fused.middle(h1, params, (3, 2), (4, 2), keeps)
    bad_up2 = [*params[:6], mx.zeros((2, 4, 4, 6)), params[7]]
    with pytest.raises(ValueError, match="up2's weight"):
        fused.middle(h1, bad_up2, (4, 2), (4, 2), keeps)


def test_fused_middle_is_taken_only_for_the_layers_it_computes():
    """GigaUNet's middle fuses; a middle whose skips join other layers does not."""
    from gigamlx.backends.mlx.model import _fusable_middle
    from gigamlx.core.spec import GIGAUNET_4492

    assert _fusable_middle(GIGAUNET_4492)
    up2 = GIGAUNET_4492[4]._replace(skip=None)
    assert not _fusable_middle((*GIGAUNET_4492[:4], up2, *GIGAUNET_4492[5:]))
    assert not _fusable_middle(GIGAUNET_4492[1:])


def test_fused_down1_refuses_an_input_gradient():
    _require_ext()
    x = mx.random.uniform(shape=(1, 16, 16, 3))
    weight, bias = mx.random.normal((2, 16, 16, 3)), mx.zeros((2,))
    with pytest.raises(ValueError, match="no gradient with respect to x"):
        mx.grad(lambda x: fused.down1(x, weight, bias, 4, 6, (0, 0, 4, 4)).sum())(x)


@pytest.mark.parametrize(("crop_yx", "crop_hw"), [((0, 0), (32, 48)), ((5, 7), (20, 33))])
def test_fused_tile_loss_matches_pure_mlx(crop_yx, crop_hw):
    _require_ext()
    mx.random.seed(7)
    z = mx.random.normal((1, 32, 48, 1)) * 4
    g = (mx.random.uniform(shape=crop_hw) > 0.4).astype(mx.float32)
    (cy, cx), (h, w) = crop_yx, crop_hw
    a, b, c = 0.7, -0.2, 0.3

    def reference(z):
        zc = z[0, cy : cy + h, cx : cx + w, 0]
        value = mx.sum((a * g + b) * mx.sigmoid(zc)) + c * mx.sum(_bce(zc, g))
        return value, _stat_rows(zc, g)

    value, rows = fused.tile_loss(z, g, crop_yx, (a, b, c))
    value_ref, rows_ref = reference(z)
    assert rows.shape == rows_ref.shape == (6, h)
    assert _rel(value, value_ref) <= VALUE_RTOL and _rel(rows, rows_ref) <= VALUE_RTOL
    dz = mx.grad(lambda z: fused.tile_loss(z, g, crop_yx, (a, b, c))[0])(z)
    assert _rel(dz, mx.grad(lambda z: reference(z)[0])(z)) <= GRAD_RTOL
    if fused.copies_uint8():  # uint8 targets give the float targets' numbers bit for bit
        g8 = g.astype(mx.uint8)
        value8, rows8 = fused.tile_loss(z, g8, crop_yx, (a, b, c))
        dz8 = mx.grad(lambda z: fused.tile_loss(z, g8, crop_yx, (a, b, c))[0])(z)
        for got, want in ((value8, value), (rows8, rows), (dz8, dz)):
            assert mx.array_equal(got, want)


@pytest.mark.parametrize(
    ("hw", "crop", "u8_target"),
    [
        ((64, 128), (4, 8, 50, 100), True),  # a crop with a halo, as a training tile's
        ((68, 132), (0, 0, 68, 132), False),  # the whole window, float targets
        ((100, 200), (99, 199, 1, 1), True),  # one pixel in the corner
    ],
)
def test_fused_loss_of_the_tail_gives_the_two_ops_bits(hw, crop, u8_target):
    """tile_loss on head_logits's unevaluated logits computes them row by row inside the loss
    (extension 0.7.7): value, rows and every gradient the same bits as the loss of the logits
    evaluated first, with the loss's own vjp chained into the tail's."""
    _require_ext()
    if not fused.copies_uint8():
        pytest.skip("extension before 0.7: no uint8 windows")
    (h, w), (cy, cx, ch, cw) = hw, crop
    rng = np.random.default_rng(h + w)
    h2, _, w_up, b_up, w_head, b_head = _tail_inputs(1, h // 4, w // 4, seed=h)
    h2 = mx.maximum(h2, 0)
    x = mx.array(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
    norm = ((0.7, 0.6, 0.75), (0.2, 0.25, 0.18), (0, 0, h, w))
    g = mx.array((rng.random((ch, cw)) > 0.5).astype(np.uint8 if u8_target else np.float32))
    coefficients, keep_yx = (-0.3, 0.2, 0.7), (3, 5, h - 2, w - 7)

    def tail(*params):
        return fused.head_logits(params[0], x, *params[1:], keep_yx, norm)

    def loss(z):
        return fused.tile_loss(z, g, (cy, cx), coefficients)

    params = [h2, w_up, b_up, w_head, b_head]
    value, rows = loss(tail(*params))  # one op: the logits never written out
    z = tail(*params)
    mx.eval(z)
    value_two, rows_two = loss(z)  # the logits evaluated first: two ops
    assert mx.array_equal(value, value_two) and mx.array_equal(rows, rows_two)
    cotangent = mx.array(1.5)
    _, grads = mx.vjp(lambda *p: [loss(tail(*p))[0]], params, [cotangent])
    _, (dz,) = mx.vjp(lambda z: [loss(z)[0]], [z], [cotangent])
    _, grads_two = mx.vjp(lambda *p: [tail(*p)], params, [dz])
    for got, want in zip(grads, grads_two, strict=True):
        assert got.shape == want.shape and mx.array_equal(got, want)
    with pytest.raises(ValueError, match="one window"):  # the one op, not the two: batch 1
        loss(
            fused.head_logits(
                mx.concatenate([h2, h2]), mx.concatenate([x, x]), *params[1:], keep_yx, norm
            )
        )


@pytest.mark.parametrize("shape", [(37, 53, 3), (3, 5), (0, 4), (1 << 22) + 3])
def test_uint8_array_copies_as_mx_array(shape):
    """The extension's copy into MLX: same shape, dtype and bytes as mx.array, any size (the
    chunked copy's last chunk short, an empty array), a strided input made contiguous first,
    and a copy: later writes to the source do not reach it."""
    _require_ext()
    if not fused.copies_uint8():
        pytest.skip("extension older than 0.7: rebuild with `bash setup.sh`")
    source = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    got = fused.uint8_array(source)
    assert got.dtype == mx.uint8 and got.shape == source.shape
    assert np.array_equal(np.array(got), source)
    if source.size:
        source.reshape(-1)[0] ^= 0xFF
        assert np.array(got).reshape(-1)[0] != source.reshape(-1)[0]
    if source.ndim == 3:
        turned = source[::-1, ::2]
        assert np.array_equal(np.array(fused.uint8_array(turned)), turned)


def test_fused_tile_loss_handles_extreme_logits():
    """The vectorized exp/log1p: saturated and tiny logits, a row not a multiple of 16. (Not
    z == 0 itself: there MLX differentiates the reference's max(z, 0) and |z| piecewise.)"""
    _require_ext()
    row = [1e-30, -1e-30, 1e-8, -1e-8, 0.5, -0.5, 20.0, -20.0, 86.0, -86.0, 88.0, -88.0, 150.0]
    z = mx.array(np.array(row * 3, np.float32).reshape(1, 3, len(row), 1))
    g = mx.array((np.arange(3 * len(row)) % 2).reshape(3, len(row)).astype(np.float32))
    a, b, c = 0.3, -0.1, 1.0

    def reference(z):
        zc = z[0, :, :, 0]
        value = mx.sum((a * g + b) * mx.sigmoid(zc)) + c * mx.sum(_bce(zc, g))
        return value, _stat_rows(zc, g)

    value, rows = fused.tile_loss(z, g, (0, 0), (a, b, c))
    value_ref, rows_ref = reference(z)
    assert _rel(value, value_ref) <= VALUE_RTOL and _rel(rows, rows_ref) <= VALUE_RTOL
    dz = mx.grad(lambda z: fused.tile_loss(z, g, (0, 0), (a, b, c))[0])(z)
    assert _rel(dz, mx.grad(lambda z: reference(z)[0])(z)) <= GRAD_RTOL


def _edge_tile_data():
    """An edge tile of a non-square image: its window reaches past the image (zeroing on)."""
    rng = np.random.default_rng(3)
    plan = plan_tiles((150, 230), 128)
    tile = plan.tiles[-1]
    image = rng.integers(0, 256, (*tile.in_box.hw, 3), dtype=np.uint8)
    target = (rng.random(tile.out_box.hw) > 0.5).astype(np.float32)
    return plan, TileData(tile, image, target)


def test_fused_model_and_backend_match_pure_mlx(model):
    """GigaUNet.logits and tile_grad on the fused path vs the pure-MLX path."""
    _require_ext()
    plan, data = _edge_tile_data()
    x = mx.array(data.image)[None].astype(mx.float32) / 255.0
    objective = Objective(0.5, -0.25, 1.0)

    def run(kernels: str):
        backend = MLXBackend(kernels)
        z = model.logits(x, data.tile.in_box, plan.padded_hw, backend.kernels.fused)
        stats, grads = backend.tile_grad(model, data, plan.padded_hw, objective)
        # without the stats (pass 2 of a Dice step): none, and the same gradients bit for bit
        none, same = backend.tile_grad(model, data, plan.padded_hw, objective, with_stats=False)
        assert none is None and all(np.array_equal(same[k], g) for k, g in grads.items())
        return z, stats, grads

    z, stats, grads = run("fused")
    z_ref, stats_ref, grads_ref = run("mlx")
    assert _rel(z, z_ref) <= VALUE_RTOL
    np.testing.assert_allclose(np.array(stats[:6]), np.array(stats_ref[:6]), rtol=VALUE_RTOL)
    for name, g in grads.items():
        assert _rel(mx.array(g), mx.array(grads_ref[name])) <= GRAD_RTOL, name
    assert len(tree_flatten(model.trainable_parameters())) == len(grads)


def test_model_takes_uint8_images_on_both_paths(model):
    """logits(uint8) == logits(float32 / 255), fused and pure MLX."""
    x_u8 = mx.array(np.random.default_rng(2).integers(0, 256, (1, 128, 192, 3), dtype=np.uint8))
    x = x_u8.astype(mx.float32) / 255.0
    box, padded = Box(64, 0, 192, 192), (512, 256)
    for fused_kernels in (True, False):
        z_u8 = model.logits(x_u8, box, padded, fused_kernels)
        assert mx.array_equal(z_u8, model.logits(x, box, padded, fused_kernels))


def test_fused_model_matches_pure_mlx_inside_the_image(model):
    """A window fully inside the image (no zeroing box) and a whole-image pass (no box)."""
    _require_ext()
    x = mx.random.uniform(shape=(1, 128, 192, 3))
    cases = [(Box(64, 64, 192, 256), (512, 512)), (None, None)]
    fused_z = [model.logits(x, box, padded, fused_kernels=True) for box, padded in cases]
    for z, (box, padded) in zip(fused_z, cases, strict=True):
        assert _rel(z, model.logits(x, box, padded)) <= VALUE_RTOL


def test_native_window_turn_gives_numpys_bytes(monkeypatch):
    """Extension 0.5 turns, recolours and lights a training window in one pass: the same bytes
    as train/regions.py's numpy for every flip and turn, contiguous or strided (planar) windows,
    masks, with and without the colour table and the illumination gains; and a region view
    reads the same through it."""
    from gigamlx.train import regions
    from gigamlx.train.augment import apply_gains, draw_illumination, draw_jitter, lut32, unpack_rgb
    from gigamlx.train.regions import Region, region_view, turn

    _require_ext()
    if not fused.turns_windows():
        pytest.skip("extension built before 0.5 (no turn_window gains): bash setup.sh rebuilds it")
    assert MLXBackend("fused").window_turner is fused.turn_window
    assert MLXBackend("mlx").window_turner is None  # the pure-MLX path runs no compiled code
    rng = np.random.default_rng(9)
    jitter = draw_jitter(rng, 1.0)
    table = lut32(jitter)
    # a window smaller than one of the kernel's blocks, and one spanning several, partial
    # blocks at its edges (quarter turns copy 256 x 32 blocks, a mask 8 x 8 pixels at a time)
    for hw in ((37, 70), (300, 517)):
        rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        planar = np.ascontiguousarray(rgb.transpose(2, 0, 1)).transpose(1, 2, 0)  # (h, w, 3) view
        mask = rng.integers(0, 2, hw, dtype=np.uint8)
        for flip in (False, True):
            for rot90 in range(4):
                strided = (mask[3:, ::2], mask[:, ::-1], rgb[1:, ::-1])
                for block in (rgb, planar, mask, *strided):
                    want = np.ascontiguousarray(turn(block, flip, rot90))
                    got = fused.turn_window(block, None, flip, rot90)
                    assert got.flags.c_contiguous and got.base is None
                    np.testing.assert_array_equal(got, want)
                recoloured = unpack_rgb(np.ascontiguousarray(turn(jitter.lookup(rgb), flip, rot90)))
                out_hw = recoloured.shape[:2]
                # gains round to .5 on some pixels (x.5 * 2 = odd): rounding half to even is tested
                rows, cols = np.arange(out_hw[0]), np.arange(out_hw[1])
                row_gains = np.where(rows % 2 == 0, 1.0, rng.uniform(0.5, 1.5, out_hw[0]))
                gains = (
                    row_gains.astype(np.float32),
                    np.where(cols % 3 == 0, 0.5, 1.25).astype(np.float32),
                )
                for block in (rgb, planar):
                    got = fused.turn_window(block, table, flip, rot90)
                    np.testing.assert_array_equal(got, recoloured)
                    got = fused.turn_window(block, table, flip, rot90, gains)
                    np.testing.assert_array_equal(got, apply_gains(recoloured, *gains))
                    plain = np.ascontiguousarray(turn(block, flip, rot90))
                    got = fused.turn_window(block, None, flip, rot90, gains)
                    np.testing.assert_array_equal(got, apply_gains(plain, *gains))
    # into rows of a larger window, as a read's bands write: only those rows change
    window = np.full((3 * 300, 517, 3), 7, np.uint8)
    got = fused.turn_window(rgb, table, True, 2, None, window[300:600])
    assert got.base is window
    np.testing.assert_array_equal(window[300:600], unpack_rgb(turn(jitter.lookup(rgb), True, 2)))
    assert (window[:300] == 7).all() and (window[600:] == 7).all()
    with pytest.raises(ValueError, match=r"out must be C-contiguous uint8 \(517, 300, 3\)"):
        fused.turn_window(rgb, table, True, 1, None, window[300:600])
    with pytest.raises(ValueError, match="colour table"):
        fused.turn_window(mask, table, False, 0)
    with pytest.raises(ValueError, match="gains"):
        fused.turn_window(mask, None, False, 0, (np.ones(37, np.float32), np.ones(70, np.float32)))
    monkeypatch.setattr(regions, "LUT_MIN_REGION_PX", 1)  # this small region takes the table
    light = draw_illumination(rng, 2.0)
    region = Region(0, (3, 5), (30, 60), True, 3, jitter, light)
    for array, color, lit in ((rgb, jitter, light), (rgb, None, light), (mask, None, None)):
        numpy_view = region_view(array, region, color, light=lit)
        native_view = region_view(array, region, color, fused.turn_window, lit)
        for box in (Box(0, 0, 60, 30), Box(7, 3, 41, 22)):
            np.testing.assert_array_equal(native_view.read(box), numpy_view.read(box))
