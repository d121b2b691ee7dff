"""The two hot ops of the MLX model, in one place so faster formulations can replace them.

Both are channels-last. Weights follow MLX's layout (C_out, kH, kW, C_in) for conv and
conv-transpose alike. They route to conv.py / conv_transpose.py (matmul formulations with
their own vjp, which avoid MLX's scalar CPU paths for strided-conv input gradients and
conv-transposes) and fall back to MLX's ops for shapes those formulations do not cover.
"""

from __future__ import annotations

import mlx.core as mx

from gigamlx.backends.mlx import conv as fast_conv
from gigamlx.backends.mlx import conv_taps
from gigamlx.backends.mlx import conv_transpose as fast_conv_transpose


def conv2d(
    x: mx.array, weight: mx.array, bias: mx.array, stride: int, pad: int, keep_blocks: bool = True
) -> mx.array:
    """Square-kernel conv. x: (N, H, W, C_in) -> (N, H', W', C_out); `keep_blocks` as in
    conv.conv2d."""
    _, k_h, k_w, _ = weight.shape
    if k_h == k_w and k_h % stride == 0:
        return fast_conv.conv2d(x, weight, bias, stride, pad, keep_blocks)
    return mx.conv2d(x, weight, stride=stride, padding=pad) + bias


def conv2d_parts(
    parts: list[mx.array],
    weight: mx.array,
    bias: mx.array,
    stride: int,
    pad: int,
    keep_blocks: bool = True,
) -> mx.array:
    """`conv2d` of the channel-concatenation of `parts` (N, H, W, C_i), never built for the
    one-channel stride-1 head (conv_taps.py); other layers join the parts first."""
    c_out, k_h, k_w, _ = weight.shape
    if len(parts) > 1 and c_out == 1 and stride == 1 and k_h == k_w and pad < k_h:
        return conv_taps.conv2d_parts(parts, weight, bias, pad)
    return conv2d(join(parts), weight, bias, stride, pad, keep_blocks)


def join(parts: list[mx.array]) -> mx.array:
    """Concatenate channels-last arrays along channels (one part: itself, no copy)."""
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


def conv_transpose2d(x: mx.array, weight: mx.array, bias: mx.array, stride: int) -> mx.array:
    """Conv-transpose, kernel == stride, no pad. x: (N, h, w, C_in) -> (N, h*s, w*s, C_out)."""
    _, k_h, k_w, _ = weight.shape
    if k_h == k_w == stride:
        return fast_conv_transpose.conv_transpose2d(x, weight, bias, stride)
    return mx.conv_transpose2d(x, weight, stride=stride) + bias
