"""The full-resolution head: a stride-1 conv to one channel over joined inputs, without the join.

The head reads concat(up-sampled, input) (N, H, W, C1 + C2): its forward is the layer with the
most multiply-adds per pixel (k*k*C) at full resolution. It is computed on the parts
zero-padded to (Hp, Wp) = (H + 2*pad, W + 2*pad), their pixels in row-major order (n, i, j)
as one row of length P = N*Hp*Wp. On that row a tap (a, b) is the plain offset a*Wp + b, so

    T = sum_part W_part (k*k, C_i) @ pixels_part.T (C_i, P)   BLAS: the channel sums of every tap
    y[j] = bias + sum_tap T[tap, j + offset]                  k*k contiguous slices, one pass

and y[(n*Hp + i)*Wp + j] is the output at (n, i, j); positions with i >= Ho or j >= Wo are
computed and never read (k - 1 columns per row). BLAS does the channel sums (vectorised),
leaving k*k terms per pixel instead of k*k*C. That matters most inside
`value_and_grad`, where MLX runs compiled functions op by op (their inputs are tracers): the
sum of k*k*C strided channel views this replaces cost 2*k*k*C strided passes there
(timings in docs/experiments.md). Where MLX cannot compile at all, the tap sum runs op by op.

Backward, the k*k stacked cotangents (conv.py's `spread`) feed one BLAS call per part: the
weight gradient, and the input gradient of the parts that need one (the network input needs
none, and is never computed). On the pure-MLX path (Metal's) this is the layer that sets the
peak memory of a tile's gradient.
"""

from __future__ import annotations

from functools import cache
from math import isqrt

import mlx.core as mx

from gigamlx.backends.mlx import conv as fast_conv
from gigamlx.backends.mlx.conv_transpose import channel_sums


def _tap_sum_graph(taps: mx.array, bias: mx.array) -> mx.array:
    """bias + sum over taps (a, b) of T[(a, b), j + a*Wp + b] for T (k*k, rows, Wp).

    Every offset follows from T's shape, so the compiled version re-traces per shape alone."""
    k, row_w = isqrt(taps.shape[0]), taps.shape[2]
    flat = taps.reshape(taps.shape[0], -1)
    # the last output (n-1, Ho-1, Wo-1) reads T up to P - 1: y needs P - the largest offset
    length = flat.shape[1] - (k - 1) * (row_w + 1)
    y = bias
    for a in range(k):
        for b in range(k):
            offset = a * row_w + b
            y = y + flat[a * k + b, offset : offset + length]
    return y


_tap_sum = mx.compile(_tap_sum_graph)


def _tap_planes(parts: list[mx.array], w_mat: mx.array, pad: int) -> mx.array:
    """T (k*k, P): each part's padded channels-last pixels are a transposed BLAS operand (no
    copy), and addmm adds each part's product into T where a join would copy the parts."""
    taps, offset = None, 0
    for part in parts:
        c_part = part.shape[3]
        pixels = mx.pad(part, [(0, 0), (pad, pad), (pad, pad), (0, 0)]).reshape(-1, c_part)
        w_part = w_mat[:, offset : offset + c_part]
        taps = w_part @ pixels.T if taps is None else mx.addmm(taps, w_part, pixels.T)
        offset += c_part
    return taps


def _forward(parts: list[mx.array], w_mat: mx.array, bias: mx.array, k: int, pad: int):
    n, in_h, in_w, _ = parts[0].shape
    row_h, row_w = in_h + 2 * pad, in_w + 2 * pad
    taps = _tap_planes(parts, w_mat, pad)  # (k*k, P)
    y = _tap_sum(taps.reshape(k * k, n * row_h, row_w), bias)
    return mx.as_strided(y, (n, row_h - k + 1, row_w - k + 1, 1), (row_h * row_w, row_w, 1, 1))


@cache
def _make(k: int, pad: int, channels: tuple[int, ...]):
    c_in = sum(channels)

    @mx.custom_function
    def conv(parts: list[mx.array], weight: mx.array, bias: mx.array) -> mx.array:
        return _forward(parts, weight.reshape(k * k, c_in), bias, k, pad)

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        parts, weight, _ = primals
        g = fast_conv.geometry(parts[0].shape, k, 1, pad)
        n, in_h, in_w, _ = parts[0].shape
        grad_planes = fast_conv.spread(cotangent, g, pad, (in_h, in_w))  # (k*k, N*H*W)
        w_mat = weight.reshape(k * k, c_in)
        grad_parts, grad_w_cols, offset = [], [], 0
        for part, c_part in zip(parts, channels, strict=True):
            w_part = w_mat[:, offset : offset + c_part]
            # lazily built: a part whose gradient nobody asks for (the input) costs nothing
            grad_parts.append((grad_planes.T @ w_part).reshape(n, in_h, in_w, c_part))
            grad_w_cols.append(grad_planes @ part.reshape(-1, c_part))  # (k*k, c_part)
            offset += c_part
        grad_weight = mx.concatenate(grad_w_cols, axis=1).reshape(weight.shape)
        return grad_parts, grad_weight, channel_sums(cotangent)

    return conv


def conv2d_parts(parts: list[mx.array], weight: mx.array, bias: mx.array, pad: int) -> mx.array:
    """`mx.conv2d(concatenate(parts, axis=-1), weight, padding=pad) + bias`, one output channel.

    Args:
        parts: (N, H, W, C_i) channels-last arrays, joined along channels in this order.
        weight: (1, k, k, sum C_i), MLX layout.
        bias: (1,).
        pad: zero padding on every side, 0 <= pad <= k - 1.

    Returns:
        (N, H + 2*pad - k + 1, W + 2*pad - k + 1, 1).
    """
    c_out, k, k_w, c_in = weight.shape
    channels = tuple(part.shape[3] for part in parts)
    if c_out != 1 or k != k_w or not 0 <= pad <= k - 1 or sum(channels) != c_in:
        raise ValueError(
            f"one output channel, square kernel, 0 <= pad < k and the parts' channels "
            f"{channels} summing to the weight's: got weight {weight.shape}, pad {pad}"
        )
    return _make(k, pad, channels)(list(parts), weight, bias)
