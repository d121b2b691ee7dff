"""Strided conv with kernel a multiple of the stride, as one matmul plus a shift-and-add.

With kernel k = K*s, stride s and pad p, the padded input cut into s x s blocks
(space-to-depth) is `z` of shape (N, Ho+K-1, Wo+K-1, s*s*C), and the conv is
`y[o] = sum_{a,b < K} z[o + (a, b)] @ W[a, b]`. We do the one matmul `P = W_all @ z^T`
with W_all of shape (K*K*C_out, s*s*C), giving channel-first tap planes, and then add K*K
shifted slices of the small P. The backward is the transpose: pad-and-stack the cotangent
into dP, one matmul back to z, then depth-to-space. No input-dilated conv (MLX's scalar CPU
path) and no im2col buffer of (Ho*Wo, k*k*C). The same code serves stride 1 (K = k), e.g.
the 3x3 head.

Domain: square kernel k divisible by stride s, any pad p >= 0, any H, W with output size
Ho = (H + 2p - k) // s + 1 >= 1 (as mx.conv2d, trailing rows that no window reaches are
ignored and get zero gradient).
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import mlx.core as mx

from gigamlx.backends.mlx.conv_transpose import channel_sums


class ConvGeometry(NamedTuple):
    """Sizes of one strided conv along H and W; `blocks_*` = rows/cols of z (= out + K - 1)."""

    stride: int
    pad: int
    taps: int  # K = kernel // stride, kernel taps per axis in block units
    out_h: int
    out_w: int
    blocks_h: int
    blocks_w: int


def geometry(x_shape: tuple[int, ...], kernel: int, stride: int, pad: int) -> ConvGeometry:
    """Output and block-grid sizes for x of shape (N, H, W, C)."""
    if kernel % stride:
        raise ValueError(f"kernel {kernel} must be a multiple of stride {stride}")
    _, in_h, in_w, _ = x_shape
    out_h = (in_h + 2 * pad - kernel) // stride + 1
    out_w = (in_w + 2 * pad - kernel) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {in_h}x{in_w} too small for kernel {kernel} with pad {pad}")
    taps = kernel // stride
    return ConvGeometry(stride, pad, taps, out_h, out_w, out_h + taps - 1, out_w + taps - 1)


def _pad_or_crop(x: mx.array, lo: int, hi_h: int, hi_w: int) -> mx.array:
    """Zero-pad H and W by `lo` before and by `hi_*` after; a negative `hi_*` crops instead."""
    x = x[:, : x.shape[1] + min(hi_h, 0), : x.shape[2] + min(hi_w, 0)]
    pads = [(0, 0), (lo, max(hi_h, 0)), (lo, max(hi_w, 0)), (0, 0)]
    return mx.pad(x, pads) if lo or hi_h > 0 or hi_w > 0 else x


def _to_blocks(x: mx.array, g: ConvGeometry) -> mx.array:
    """x (N, H, W, C) -> z (N, blocks_h, blocks_w, s*s*C), channels ordered (dy, dx, c)."""
    s = g.stride
    n, in_h, in_w, c = x.shape
    x = _pad_or_crop(x, g.pad, g.blocks_h * s - g.pad - in_h, g.blocks_w * s - g.pad - in_w)
    if s == 1:
        return x
    x = x.reshape(n, g.blocks_h, s, g.blocks_w, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g.blocks_h, g.blocks_w, s * s * c)


def _from_blocks(grad_z: mx.array, g: ConvGeometry, in_h: int, in_w: int) -> mx.array:
    """Adjoint of `_to_blocks`: (N, blocks_h, blocks_w, s*s*C) -> (N, H, W, C)."""
    s = g.stride
    n = grad_z.shape[0]
    c = grad_z.shape[3] // (s * s)
    if s > 1:
        grad_z = grad_z.reshape(n, g.blocks_h, g.blocks_w, s, s, c).transpose(0, 1, 3, 2, 4, 5)
        grad_z = grad_z.reshape(n, g.blocks_h * s, g.blocks_w * s, c)
    grad = grad_z[:, g.pad : g.pad + in_h, g.pad : g.pad + in_w]
    missing_h, missing_w = in_h - grad.shape[1], in_w - grad.shape[2]
    if missing_h or missing_w:  # input rows past the last window got no gradient
        grad = mx.pad(grad, [(0, 0), (0, missing_h), (0, missing_w), (0, 0)])
    return grad


def _weight_matrix(weight: mx.array, g: ConvGeometry) -> mx.array:
    """(C_out, k, k, C) -> (K*K*C_out, s*s*C): rows (a, b, c_out), cols (dy, dx, c)."""
    c_out, _, _, c = weight.shape
    s, taps = g.stride, g.taps
    w = weight.reshape(c_out, taps, s, taps, s, c).transpose(1, 3, 0, 2, 4, 5)
    return w.reshape(taps * taps * c_out, s * s * c)


def _weight_from_matrix(w_mat: mx.array, g: ConvGeometry, c_out: int) -> mx.array:
    """Adjoint of `_weight_matrix`: (K*K*C_out, s*s*C) -> (C_out, k, k, C)."""
    s, taps = g.stride, g.taps
    c = w_mat.shape[1] // (s * s)
    w = w_mat.reshape(taps, taps, c_out, s, s, c).transpose(2, 0, 3, 1, 4, 5)
    return w.reshape(c_out, taps * s, taps * s, c)


def _shift_sum(planes: mx.array, g: ConvGeometry) -> mx.array:
    """P (K, K, C_out, N, blocks_h, blocks_w) -> (C_out, N, Ho, Wo), the sum of shifted taps.

    Tap planes are channel-first so each shifted slice reads whole contiguous rows.
    """
    out = None
    for a in range(g.taps):
        for b in range(g.taps):
            tap = planes[a, b, :, :, a : a + g.out_h, b : b + g.out_w]
            out = tap if out is None else out + tap
    return out


def spread(cotangent: mx.array, g: ConvGeometry, origin: int, extent_hw: tuple[int, int]):
    """Adjoint of `_shift_sum`: (N, Ho, Wo, C_out) -> dP (K*K*C_out, N*h*w).

    dP covers the block window starting at (origin, origin) of size extent_hw = (h, w): the
    whole block grid for strided convs, only the unpadded input for stride 1.
    """
    k1 = g.taps - 1
    # Pad once by K-1; tap (a, b) is then a plain window of the padded cotangent.
    grad = mx.pad(cotangent.transpose(3, 0, 1, 2), [(0, 0), (0, 0), (k1, k1), (k1, k1)])
    h, w = extent_hw
    windows = [
        grad[:, :, origin + k1 - a : origin + k1 - a + h, origin + k1 - b : origin + k1 - b + w]
        for a in range(g.taps)
        for b in range(g.taps)
    ]
    return mx.stack(windows).reshape(g.taps * g.taps * cotangent.shape[3], -1)


def _vjp_stride1(x, weight, cotangent, g: ConvGeometry):
    """Stride 1: z is the padded x, and its padding never needs a gradient, so spread dP over
    the unpadded input only; no re-padding of x and no crop of the input gradient."""
    n, in_h, in_w, c_in = x.shape
    grad_planes = spread(cotangent, g, g.pad, (in_h, in_w))  # (K*K*C_out, N*H*W)
    w_mat = _weight_matrix(weight, g)
    grad_x = (grad_planes.T @ w_mat).reshape(n, in_h, in_w, c_in)
    grad_w_mat = grad_planes @ x.reshape(-1, c_in)
    return grad_x, _weight_from_matrix(grad_w_mat, g, weight.shape[0])


def _grad_blocks(z, weight, cotangent, g: ConvGeometry):
    """Gradients of the conv of blocks z: (grad_z (N, blocks_h, blocks_w, s*s*C), grad_weight)."""
    grad_planes = spread(cotangent, g, 0, (g.blocks_h, g.blocks_w))  # (K*K*C_out, N*blocks)
    grad_z = (grad_planes.T @ _weight_matrix(weight, g)).reshape(z.shape)
    grad_w_mat = grad_planes @ z.reshape(-1, z.shape[3])
    return grad_z, _weight_from_matrix(grad_w_mat, g, weight.shape[0])


def _vjp_strided(x, weight, cotangent, g: ConvGeometry):
    """Stride > 1: dP over the whole block grid, one matmul back to z, depth-to-space."""
    z = _to_blocks(x, g)  # recomputed rather than kept from the forward: saves its memory
    grad_z, grad_weight = _grad_blocks(z, weight, cotangent, g)
    return _from_blocks(grad_z, g, x.shape[1], x.shape[2]), grad_weight


def _conv_blocks(z: mx.array, weight: mx.array, bias: mx.array, g: ConvGeometry) -> mx.array:
    """The conv of blocks z (N, blocks_h, blocks_w, s*s*C) -> (N, Ho, Wo, C_out)."""
    n, c_out = z.shape[0], weight.shape[0]
    # (K*K*C_out, N*blocks): B transposed is a BLAS flag, not a copy.
    planes = _weight_matrix(weight, g) @ z.reshape(-1, z.shape[3]).T
    planes = planes.reshape(g.taps, g.taps, c_out, n, g.blocks_h, g.blocks_w)
    return _shift_sum(planes, g).transpose(1, 2, 3, 0) + bias


@cache
def _make(kernel: int, stride: int, pad: int):
    """One custom_function per (kernel, stride, pad): custom functions take arrays only."""

    @mx.custom_function
    def conv(x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
        g = geometry(x.shape, kernel, stride, pad)
        return _conv_blocks(_to_blocks(x, g), weight, bias, g)

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        x, weight, _ = primals
        g = geometry(x.shape, kernel, stride, pad)
        vjp = _vjp_stride1 if stride == 1 else _vjp_strided
        grad_x, grad_weight = vjp(x, weight, cotangent, g)
        return grad_x, grad_weight, channel_sums(cotangent)

    return conv


@cache
def _make_on_blocks(kernel: int, stride: int, pad: int):
    """The conv of blocks z made outside, by differentiable ops that MLX's autodiff reverses
    (the input gradient); the graph keeps z for the weight gradient: no second space-to-depth
    in the backward, at the cost of holding z (the size of the padded input) until then."""

    @mx.custom_function
    def conv(z: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
        return _conv_blocks(z, weight, bias, _blocks_geometry(z.shape, kernel, stride, pad))

    @conv.vjp
    def conv_vjp(primals, cotangent, output):
        z, weight, _ = primals
        g = _blocks_geometry(z.shape, kernel, stride, pad)
        grad_z, grad_weight = _grad_blocks(z, weight, cotangent, g)
        return grad_z, grad_weight, channel_sums(cotangent)

    return conv


def _blocks_geometry(z_shape, kernel: int, stride: int, pad: int) -> ConvGeometry:
    """The geometry of a conv read off its blocks z (N, blocks_h, blocks_w, s*s*C)."""
    taps, (blocks_h, blocks_w) = kernel // stride, z_shape[1:3]
    return ConvGeometry(
        stride, pad, taps, blocks_h - taps + 1, blocks_w - taps + 1, blocks_h, blocks_w
    )


def conv2d(
    x: mx.array,
    weight: mx.array,
    bias: mx.array,
    stride: int,
    pad: int,
    keep_blocks: bool = True,
) -> mx.array:
    """Square-kernel conv via space-to-depth + one matmul + shift-and-add (see module doc).

    Args:
        x: (N, H, W, C_in) channels-last input.
        weight: (C_out, k, k, C_in), MLX layout; k must be a multiple of `stride`.
        bias: (C_out,).
        stride: s.
        pad: zero padding on every side, any value >= 0.
        keep_blocks: with stride > 1, keep the space-to-depth copy of x from the forward for
            the backward (faster) instead of building it again there (x's size less memory:
            for a layer reading the input window).

    Returns:
        (N, Ho, Wo, C_out), equal to `mx.conv2d(x, weight, stride, pad) + bias`.
    """
    _, k_h, k_w, _ = weight.shape
    if k_h != k_w:
        raise ValueError(f"square kernels only, got {k_h}x{k_w}")
    if keep_blocks and stride > 1:
        z = _to_blocks(x, geometry(x.shape, k_h, stride, pad))
        return _make_on_blocks(k_h, stride, pad)(z, weight, bias)
    return _make(k_h, stride, pad)(x, weight, bias)


def conv2d_reference(x: mx.array, weight: mx.array, bias: mx.array, stride: int, pad: int):
    """MLX's own op, the reference the fast version is tested against."""
    return mx.conv2d(x, weight, stride=stride, padding=pad) + bias
