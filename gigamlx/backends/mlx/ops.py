"""The two hot ops of the MLX model, in one place so faster formulations can replace them.

Both are channels-last. Weights follow MLX's layout (C_out, kH, kW, C_in) for conv and
conv-transpose alike. They route to conv.py / conv_transpose.py (matmul formulations with
their own vjp, which avoid MLX's scalar CPU paths for strided-conv input gradients and
conv-transposes) and fall back to MLX's ops for shapes those formulations do not cover.
"""

from __future__ import annotations

import mlx.core as mx

from gigamlx.backends.mlx import conv as fast_conv
from gigamlx.backends.mlx import conv_transpose as fast_conv_transpose


def conv2d(x: mx.array, weight: mx.array, bias: mx.array, stride: int, pad: int) -> mx.array:
    """Square-kernel conv. x: (N, H, W, C_in) -> (N, H', W', C_out)."""
    _, k_h, k_w, _ = weight.shape
    if k_h == k_w and k_h % stride == 0:
        return fast_conv.conv2d(x, weight, bias, stride, pad)
    return mx.conv2d(x, weight, stride=stride, padding=pad) + bias


def conv_transpose2d(x: mx.array, weight: mx.array, bias: mx.array, stride: int) -> mx.array:
    """Conv-transpose, kernel == stride, no pad. x: (N, h, w, C_in) -> (N, h*s, w*s, C_out)."""
    _, k_h, k_w, _ = weight.shape
    if k_h == k_w == stride:
        return fast_conv_transpose.conv_transpose2d(x, weight, bias, stride)
    return mx.conv_transpose2d(x, weight, stride=stride) + bias
