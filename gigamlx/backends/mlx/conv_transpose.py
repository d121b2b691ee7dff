"""Conv-transpose with kernel == stride as one matmul plus a depth-to-space rearrangement.

When the kernel equals the stride, output blocks never overlap: every input pixel writes its
own s x s block, so the op is `x @ W` followed by a reshape/transpose. MLX's CPU
conv_transpose2d instead runs an input-dilated conv on a scalar single-thread path.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx


def channel_sums(cotangent: mx.array) -> mx.array:
    """Bias gradient: (N, H, W, C) summed to (C,). These sums cancel heavily, so a float32
    chain over a window loses the digits that matter: in float64 on the CPU, elsewhere (no
    float64 on a GPU) each row first, then the rows."""
    if mx.default_device() == mx.cpu:
        n, h, w, c = cotangent.shape
        # rows first, as columns of an (N*H, W*C) matrix: that reduce runs along contiguous
        # rows, where one over (N, H, W) of a few channels steps through memory C at a time
        col_sums = cotangent.reshape(n * h, w * c).astype(mx.float64).sum(axis=0)
        return col_sums.reshape(w, c).sum(axis=0).astype(cotangent.dtype)
    return cotangent.sum(axis=2).sum(axis=(0, 1))


def depth_to_space(blocks: mx.array, stride: int) -> mx.array:
    """(N, h, w, s, s, C) -> (N, h*s, w*s, C): each pixel's s x s block laid out in place."""
    n, h, w, _, _, c = blocks.shape
    return blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * stride, w * stride, c)


def space_to_depth(x: mx.array, stride: int) -> mx.array:
    """(N, h*s, w*s, C) -> (N, h, w, s, s, C): inverse of `depth_to_space`."""
    n, hs, ws, c = x.shape
    blocks = x.reshape(n, hs // stride, stride, ws // stride, stride, c)
    return blocks.transpose(0, 1, 3, 2, 4, 5)


def _weight_matrix(weight: mx.array) -> mx.array:
    """MLX weight (C_out, s, s, C_in) -> (C_in, s*s*C_out), columns ordered (ky, kx, c_out)."""
    c_out, s, _, c_in = weight.shape
    return weight.transpose(3, 1, 2, 0).reshape(c_in, s * s * c_out)


@cache
def _make(stride: int):
    """One custom_function per stride (custom functions take arrays only)."""

    @mx.custom_function
    def conv_transpose(x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
        n, h, w, c_in = x.shape
        c_out = weight.shape[0]
        # the bias tiled along the matrix's rows: the same sums as a broadcast over the
        # (N, h, w, s, s, C_out) blocks, at the cost of a plain row-by-row add
        blocks = x.reshape(-1, c_in) @ _weight_matrix(weight) + mx.tile(bias, stride * stride)
        return depth_to_space(blocks.reshape(n, h, w, stride, stride, c_out), stride)

    @conv_transpose.vjp
    def conv_transpose_vjp(primals, cotangent, output):
        x, weight, _ = primals
        n, h, w, c_in = x.shape
        c_out = weight.shape[0]
        # (N*h*w, s*s*C_out): the output block each input pixel wrote, gathered back.
        grad_blocks = space_to_depth(cotangent, stride).reshape(n * h * w, -1)
        grad_x = (grad_blocks @ _weight_matrix(weight).T).reshape(n, h, w, c_in)
        grad_wmat = x.reshape(n * h * w, c_in).T @ grad_blocks  # (C_in, s*s*C_out)
        grad_weight = grad_wmat.reshape(c_in, stride, stride, c_out).transpose(3, 1, 2, 0)
        grad_bias = channel_sums(cotangent)
        return grad_x, grad_weight, grad_bias

    return conv_transpose


def conv_transpose2d(x: mx.array, weight: mx.array, bias: mx.array, stride: int) -> mx.array:
    """Conv-transpose with kernel == stride and no padding, as matmul + depth-to-space.

    Args:
        x: (N, h, w, C_in) channels-last input.
        weight: (C_out, s, s, C_in), MLX's conv_transpose2d layout.
        bias: (C_out,).
        stride: s; must equal the kernel size.

    Returns:
        (N, h*s, w*s, C_out), equal to `mx.conv_transpose2d(x, weight, stride=s) + bias`.
    """
    c_out, k_h, k_w, _ = weight.shape
    if k_h != stride or k_w != stride:
        raise ValueError(f"kernel {k_h}x{k_w} must equal stride {stride}")
    return _make(stride)(x, weight, bias)


def conv_transpose2d_reference(
    x: mx.array, weight: mx.array, bias: mx.array, stride: int
) -> mx.array:
    """MLX's own op, the reference the fast version is tested against."""
    return mx.conv_transpose2d(x, weight, stride=stride) + bias
