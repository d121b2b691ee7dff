"""The head over joined inputs (conv_taps.py) against MLX's conv of the concatenation, and the
compiled kernels of the pure-MLX path against the same graphs run uncompiled."""

from __future__ import annotations

import mlx.core as mx
import pytest

from gigamlx.backends.mlx import conv, conv_taps, ops

# (shapes (N, H, W, C_i) of the parts, kernel, pad)
CASES = {
    "head": (((1, 24, 40, 3), (1, 24, 40, 3)), 3, 1),
    "head_batch2_ragged": (((2, 17, 9, 3), (2, 17, 9, 3)), 3, 1),
    "k5_pad2_uneven_parts": (((1, 12, 10, 2), (1, 12, 10, 5)), 5, 2),
    "k3_pad0_three_parts": (((1, 9, 11, 1), (1, 9, 11, 2), (1, 9, 11, 3)), 3, 0),
    "one_part": (((1, 8, 8, 6),), 3, 1),
}


def _rel_err(actual: mx.array, expected: mx.array) -> float:
    return (mx.abs(actual - expected).max() / (mx.abs(expected).max() + 1e-12)).item()


def _primals(shapes, kernel: int):
    keys = mx.random.split(mx.random.key(sum(map(sum, shapes)) + kernel), len(shapes) + 2)
    parts = [mx.random.normal(s, key=k) for s, k in zip(shapes, keys, strict=False)]
    c_in = sum(s[3] for s in shapes)
    weight = mx.random.normal((1, kernel, kernel, c_in), key=keys[-2]) * 0.2
    return parts, weight, mx.random.normal((1,), key=keys[-1])


@pytest.mark.parametrize("case", CASES)
def test_conv_parts_matches_conv_of_concatenation(case):
    shapes, kernel, pad = CASES[case]
    parts, weight, bias = _primals(shapes, kernel)

    n = len(parts)

    def reference(*primals):
        joined = mx.concatenate(list(primals[:n]), axis=-1)
        return conv.conv2d_reference(joined, primals[n], primals[n + 1], 1, pad)

    def fast(*primals):
        return conv_taps.conv2d_parts(list(primals[:n]), primals[n], primals[n + 1], pad)

    primals = [*parts, weight, bias]
    expected = reference(*primals)
    cotangent = mx.random.normal(expected.shape, key=mx.random.key(7))
    (out,), grads = mx.vjp(fast, primals, [cotangent])
    _, grads_ref = mx.vjp(reference, primals, [cotangent])
    assert out.shape == expected.shape and _rel_err(out, expected) < 1e-5
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.shape == want.shape and _rel_err(got, want) < 1e-4


def test_ops_conv2d_parts_routes_the_head_and_joins_the_rest():
    parts, weight, bias = _primals(((1, 16, 16, 2), (1, 16, 16, 2)), 8)
    strided = ops.conv2d_parts(parts, mx.zeros((3, 8, 8, 4)) + weight[:1], bias, 4, 2)
    expected = conv.conv2d_reference(
        ops.join(parts), mx.zeros((3, 8, 8, 4)) + weight[:1], bias, 4, 2
    )
    assert _rel_err(strided, expected) < 1e-5


def test_conv_parts_rejects_mismatched_channels():
    parts, weight, bias = _primals(((1, 8, 8, 2), (1, 8, 8, 2)), 3)
    with pytest.raises(ValueError, match="summing to the weight"):
        conv_taps.conv2d_parts(parts[:1], weight, bias, 1)


def test_compiled_head_equals_uncompiled():
    parts, weight, bias = _primals(((1, 40, 56, 3), (1, 40, 56, 3)), 3)
    compiled = conv_taps.conv2d_parts(parts, weight, bias, 1)
    mx.disable_compile()
    try:
        plain = conv_taps.conv2d_parts(parts, weight, bias, 1)
        mx.eval(plain)
    finally:
        mx.enable_compile()
    assert _rel_err(compiled, plain) < 1e-6  # same multiply-adds; a compiler may fuse them
