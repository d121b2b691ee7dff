"""Fast conv and conv-transpose formulations against MLX's own ops: values and gradients."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gigamlx.backends.mlx import conv, conv_transpose, ops

VALUE_RTOL = 1e-5
GRAD_RTOL = 1e-4

# (x shape (N, H, W, C_in), kernel, stride, pad, C_out)
CONV_CASES = {
    "k16_square": ((1, 64, 64, 3), 16, 4, 6, 2),
    "k16_batch2_nonsquare": ((2, 48, 80, 3), 16, 4, 6, 2),
    "k8_pad2": ((1, 32, 64, 2), 8, 4, 2, 4),
    "k8_small": ((1, 16, 16, 4), 8, 4, 2, 6),
    "k8_ragged": ((1, 30, 45, 3), 8, 4, 2, 2),  # H, W not multiples of the stride
    "k8_pad0": ((2, 19, 22, 3), 8, 4, 0, 3),
    "k4_pad5": ((1, 21, 17, 2), 4, 2, 5, 3),  # pad larger than the kernel
    "head_k3": ((1, 24, 40, 6), 3, 1, 1, 1),
    "head_batch2": ((2, 17, 9, 6), 3, 1, 1, 2),
    "k3_pad4": ((1, 10, 12, 2), 3, 1, 4, 2),  # stride 1, pad larger than the kernel
}
# (x shape (N, h, w, C_in), stride, C_out)
CONV_TRANSPOSE_CASES = {
    "up3": ((1, 5, 5, 6), 4, 4),
    "up2_nonsquare": ((1, 8, 20, 8), 4, 2),
    "up1_batch2": ((2, 12, 7, 4), 4, 3),
    "stride2": ((1, 9, 6, 3), 2, 5),
}


def rel_err(actual: mx.array, expected: mx.array) -> float:
    """Max abs difference relative to the largest expected magnitude."""
    return (mx.abs(actual - expected).max() / (mx.abs(expected).max() + 1e-12)).item()


def random_params(x_shape, kernel: int, c_in: int, c_out: int):
    """x, weight (C_out, k, k, C_in) and bias; conv and conv-transpose share the layout."""
    key = mx.random.key(sum(x_shape) * 31 + kernel)
    k_x, k_w, k_b = mx.random.split(key, 3)
    w_shape = (c_out, kernel, kernel, c_in)
    x = mx.random.normal(x_shape, key=k_x)
    return x, mx.random.normal(w_shape, key=k_w) * 0.2, mx.random.normal((c_out,), key=k_b)


def assert_matches(fast, reference, primals) -> None:
    """Outputs within VALUE_RTOL, and vjp w.r.t. every primal within GRAD_RTOL."""
    expected = reference(*primals)
    cotangent = mx.random.normal(expected.shape, key=mx.random.key(7))
    out_fast, grads_fast = mx.vjp(fast, primals, [cotangent])
    out_ref, grads_ref = mx.vjp(reference, primals, [cotangent])
    assert out_fast[0].shape == out_ref[0].shape
    assert rel_err(out_fast[0], out_ref[0]) < VALUE_RTOL
    for name, got, want in zip(("x", "weight", "bias"), grads_fast, grads_ref, strict=True):
        assert got.shape == want.shape, name
        assert rel_err(got, want) < GRAD_RTOL, name


@pytest.mark.parametrize("keep_blocks", [True, False], ids=["kept_blocks", "rebuilt_blocks"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_reference(case, keep_blocks):
    x_shape, kernel, stride, pad, c_out = CONV_CASES[case]
    primals = random_params(x_shape, kernel, x_shape[3], c_out)
    assert_matches(
        lambda *p: conv.conv2d(*p, stride, pad, keep_blocks),
        lambda *p: conv.conv2d_reference(*p, stride, pad),
        list(primals),
    )


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose_matches_reference(case):
    x_shape, stride, c_out = CONV_TRANSPOSE_CASES[case]
    primals = random_params(x_shape, stride, x_shape[3], c_out)
    assert_matches(
        lambda *p: conv_transpose.conv_transpose2d(*p, stride),
        lambda *p: conv_transpose.conv_transpose2d_reference(*p, stride),
        list(primals),
    )


def test_conv_grad_of_sum_matches_reference():
    """mx.grad of a plain sum sends a broadcast cotangent; the vjp must handle it too."""
    x, weight, bias = random_params((1, 40, 24, 3), 16, 3, 2)

    def grads(op):
        return mx.grad(lambda *p: op(*p, 4, 6).sum(), argnums=(0, 1, 2))(x, weight, bias)

    for got, want in zip(grads(conv.conv2d), grads(conv.conv2d_reference), strict=True):
        assert rel_err(got, want) < GRAD_RTOL


def test_conv_rejects_kernel_not_multiple_of_stride():
    x, weight, bias = random_params((1, 16, 16, 2), 6, 2, 1)
    with pytest.raises(ValueError, match="multiple of stride"):
        conv.conv2d(x, weight, bias, 4, 1)


def test_conv_transpose_rejects_kernel_not_stride():
    x, weight, bias = random_params((1, 4, 4, 2), 4, 2, 1)
    with pytest.raises(ValueError, match="must equal stride"):
        conv_transpose.conv_transpose2d(x, weight, bias, 2)


@pytest.mark.parametrize("case", ["k16_batch2_nonsquare", "k8_ragged", "head_k3"])
def test_ops_conv2d_matches_reference(case):
    """The model's public op (whatever it routes to) equals MLX's conv."""
    x_shape, kernel, stride, pad, c_out = CONV_CASES[case]
    primals = random_params(x_shape, kernel, x_shape[3], c_out)
    assert_matches(
        lambda *p: ops.conv2d(*p, stride, pad),
        lambda *p: conv.conv2d_reference(*p, stride, pad),
        list(primals),
    )


@pytest.mark.parametrize("case", ["up3", "up2_nonsquare", "up1_batch2"])
def test_ops_conv_transpose2d_matches_reference(case):
    x_shape, stride, c_out = CONV_TRANSPOSE_CASES[case]
    primals = random_params(x_shape, stride, x_shape[3], c_out)
    assert_matches(
        lambda *p: ops.conv_transpose2d(*p, stride),
        lambda *p: conv_transpose.conv_transpose2d_reference(*p, stride),
        list(primals),
    )


@pytest.mark.parametrize("case", ["k16_batch2_nonsquare", "k8_ragged", "k4_pad5"])
def test_conv_kept_blocks_is_bit_identical_to_rebuilt(case):
    """Keeping the blocks changes where z comes from, not one multiply-add."""
    x_shape, kernel, stride, pad, c_out = CONV_CASES[case]
    primals = list(random_params(x_shape, kernel, x_shape[3], c_out))
    cotangent = mx.random.normal(conv.conv2d(*primals, stride, pad).shape, key=mx.random.key(5))

    def vjp(keep_blocks):
        return mx.vjp(lambda *p: conv.conv2d(*p, stride, pad, keep_blocks), primals, [cotangent])

    (kept,), kept_grads = vjp(True)
    (rebuilt,), rebuilt_grads = vjp(False)
    assert mx.array_equal(kept, rebuilt).item()
    for got, want in zip(kept_grads, rebuilt_grads, strict=True):
        assert mx.array_equal(got, want).item()


@pytest.mark.parametrize("shape", [(1, 40, 56, 2), (2, 17, 9, 3), (1, 12, 30, 1)])
def test_channel_sums_equal_float64_sums(shape):
    """The bias gradient is each channel's sum in float64, rounded once to float32."""
    cotangent = mx.random.normal(shape, key=mx.random.key(11)) * 100 + 3
    expected = np.array(cotangent).astype(np.float64).sum(axis=(0, 1, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.array(conv_transpose.channel_sums(cotangent)), expected)
