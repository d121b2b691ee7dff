"""The full-resolution head: a stride-1 conv to one channel over joined inputs, without the join.

The head reads concat(up-sampled, input) (N, H, W, C1 + C2). Forward, it is computed as
`y[n, i, j] = b + sum_{part, a, b, c} pad(part)[n, i + a, j + b, c] * w[a, b, c_part]`: k*k*C
multiply-adds of shifted views that `mx.compile` fuses into one pass writing only y, where
the matmul formulation (conv.py) materialises the concatenation and k*k tap planes.
Backward, the k*k stacked cotangents (conv.py's `_spread`) feed one BLAS call per part: the
weight gradient, and the input gradient of the parts that need one (the network input needs
none, and is never computed). On the pure-MLX path (Metal's) this is the layer that sets the
peak memory of a tile's gradient. Where MLX cannot compile (no C++ compiler on a Linux CPU),
the same graph runs op by op: the same values, more passes.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from gigamlx.backends.mlx import conv as fast_conv


@cache
def _forward(k: int, channels: tuple[int, ...]):
    """The compiled forward for one kernel size and the channels of each part."""

    def forward(padded: list[mx.array], w: mx.array, bias: mx.array) -> mx.array:
        out_h, out_w = padded[0].shape[1] - k + 1, padded[0].shape[2] - k + 1
        y, offset = bias[0], 0
        for xp, c_part in zip(padded, channels, strict=True):
            for tap in range(k * k):
                a, b = divmod(tap, k)
                view = xp[:, a : a + out_h, b : b + out_w]
                for c in range(c_part):
                    y = y + view[..., c] * w[tap, offset + c]
            offset += c_part
        return y[..., None]  # (N, Ho, Wo, 1)

    return mx.compile(forward)


def _pad(x: mx.array, pad: int) -> mx.array:
    return mx.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)]) if pad else x


@cache
def _make(k: int, pad: int, channels: tuple[int, ...]):
    forward = _forward(k, channels)
    c_in = sum(channels)

    @mx.custom_function
    def conv(parts: list[mx.array], weight: mx.array, bias: mx.array) -> mx.array:
        padded = [_pad(part, pad) for part in parts]
        return forward(padded, weight.reshape(k * k, c_in), bias)

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
        return grad_parts, grad_weight, cotangent.sum(axis=(0, 1, 2))

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
