"""GigaUNet-4492 as an mlx.nn.Module, built from the layer table in gigamlx.core.spec."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from gigamlx.backends.mlx import fused, ops
from gigamlx.core.geometry import Box, inside_at_scale
from gigamlx.core.normalise import InputNorm
from gigamlx.core.spec import GIGAUNET_4492, Layer, check_spec, scales


class GigaUNet(nn.Module):
    """The tissue segmenter: (N, H, W, 3) float32 in [0, 1] -> (N, H, W, 1) probabilities.

    H and W must be multiples of the total stride (64). For a tile, pass the tile's input box
    and the padded image size: activations outside the image are then zeroed after every
    layer, so each layer sees the zero padding a whole-image pass would see.
    """

    backend_name = "mlx"

    def __init__(self, spec: tuple[Layer, ...] = GIGAUNET_4492):
        super().__init__()
        check_spec(spec)
        # plain attributes (not module state): the table is geometry, not parameters
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_scales", scales(spec))
        object.__setattr__(self, "_fusable_tail", _fusable_tail(spec))
        object.__setattr__(self, "_fusable_first", _fusable_first(spec))
        object.__setattr__(self, "_fusable_middle", _fusable_middle(spec))
        self.input_norm = InputNorm()  # a plain attribute: set from the run, never trained
        for layer in spec:
            kind = nn.Conv2d if layer.kind == "conv" else nn.ConvTranspose2d
            setattr(
                self,
                layer.name,
                kind(
                    layer.in_ch, layer.out_ch, layer.kernel, stride=layer.stride, padding=layer.pad
                ),
            )

    @property
    def spec(self) -> tuple[Layer, ...]:
        return self._spec

    def logits(
        self,
        x: mx.array,
        in_box: Box | None = None,
        padded_hw: tuple[int, int] | None = None,
        fused_kernels: bool = False,
    ) -> mx.array:
        """Pre-sigmoid head output. x: (N, H, W, 3) -> (N, H, W, 1).

        Args:
            x: input (window), float32 in [0, 1], or uint8 in 0..255 read as value / 255 (the
                fused kernels read it as is: no float copies of the window).
            in_box: where this window sits in the image; None for a whole-image pass.
            padded_hw: the padded image size, required with `in_box`.
            fused_kernels: compute the first layer and the full-resolution tail with the
                compiled CPU kernels (the backend decides, once; see fused.choose_kernels).
                Same values; no gradient flows to `x` then.
        """
        fusable = fused_kernels and x.dtype in (mx.float32, mx.uint8)
        fuse_at = len(self._spec) - 2 if fusable and self._fusable_tail else None
        fuse_first = fusable and self._fusable_first
        kernels_only = fuse_at is not None and fuse_first and fused.reads_uint8()
        fuse_middle = kernels_only and self._fusable_middle and fused.fuses_middle()
        kernel_norm = None  # the kernels standardise the window they read: no float copy
        if not self.input_norm.is_identity:
            if kernels_only and fused.standardises():
                x_keep = _keep_yx(in_box, padded_hw, 1, x.shape[1:3])
                kernel_norm = (self.input_norm.mean, self.input_norm.std, x_keep)
            else:
                x = _standardised(x, self.input_norm, in_box, padded_hw)
        if x.dtype == mx.uint8 and not kernels_only:
            x = x.astype(mx.float32) / 255.0  # a layer in pure MLX reads x: make it float
        saved = {"input": x}
        parts = [x]  # the next layer's input: channels joined only where a layer needs it
        for index, layer in enumerate(self._spec):
            if index == fuse_at:
                return self._fused_tail(ops.join(parts), x, in_box, padded_hw, kernel_norm)
            module = getattr(self, layer.name)
            if index == 0 and fuse_first:
                h = saved[layer.name] = self._fused_first(x, in_box, padded_hw, kernel_norm)
                parts = [h]
                if fuse_middle:  # every layer up to the tail in one op: the tail's input
                    return self._fused_tail(
                        self._fused_middle(h, in_box, padded_hw), x, in_box, padded_hw, kernel_norm
                    )
                continue
            if layer.kind == "conv":
                # the first layer's input is the window: its blocks are not worth holding
                h = ops.conv2d_parts(
                    parts, module.weight, module.bias, layer.stride, layer.pad, index > 0
                )
            else:
                h = ops.conv_transpose2d(ops.join(parts), module.weight, module.bias, layer.stride)
            if index == len(self._spec) - 1:
                return h
            h = _relu_inside(h, in_box, padded_hw, self._scales[layer.name])
            saved[layer.name] = h
            parts = [h] if layer.skip is None else [h, saved[layer.skip]]
        raise AssertionError("empty spec")

    def __call__(self, x: mx.array) -> mx.array:
        return mx.sigmoid(self.logits(x))

    def _fused_first(
        self,
        x: mx.array,
        in_box: Box | None,
        padded_hw: tuple[int, int] | None,
        norm: fused.KernelNorm | None = None,
    ) -> mx.array:
        """The first conv + ReLU + zeroing as one compiled kernel (backends/mlx/fused.py).

        x: (N, H, W, 3) -> (N, H/s, W/s, C); no gradient flows to x.
        """
        layer = self._spec[0]
        module = getattr(self, layer.name)
        out_hw = [(n + 2 * layer.pad - layer.kernel) // layer.stride + 1 for n in x.shape[1:3]]
        keep_yx = _keep_yx(in_box, padded_hw, self._scales[layer.name], out_hw)
        return fused.down1(x, module.weight, module.bias, layer.stride, layer.pad, keep_yx, norm)

    def _fused_middle(
        self, h1: mx.array, in_box: Box | None, padded_hw: tuple[int, int] | None
    ) -> mx.array:
        """The layers between the first and the last up-sampling, with their ReLUs, zeroing
        and skip joins, as one compiled op (backends/mlx/fused.py).

        h1: (N, H/s, W/s, C) the first layer's output -> the last up-sampling's input.
        """
        layers = self._spec[1:-2]
        params = [p for layer in layers for p in self._weight_and_bias(layer.name)]
        keeps = [_keep_yx(in_box, padded_hw, self._scales[layer.name], _ALL) for layer in layers]
        down2, down3 = ((layer.stride, layer.pad) for layer in layers[:2])
        return fused.middle(h1, params, down2, down3, keeps)

    def _weight_and_bias(self, name: str) -> tuple[mx.array, mx.array]:
        module = getattr(self, name)
        return module.weight, module.bias

    def _fused_tail(
        self,
        h: mx.array,
        x: mx.array,
        in_box: Box | None,
        padded_hw: tuple[int, int] | None,
        norm: fused.KernelNorm | None = None,
    ) -> mx.array:
        """The last up-sampling layer and the head as one compiled kernel (backends/mlx/fused.py).

        h: (N, H/s, W/s, C) the up-sampling layer's input; x: (N, H, W, 3) -> (N, H, W, 1).
        """
        up_layer, head_layer = self._spec[-2:]
        up, head = getattr(self, up_layer.name), getattr(self, head_layer.name)
        keep_yx = _keep_yx(in_box, padded_hw, self._scales[up_layer.name], x.shape[1:3])
        return fused.head_logits(h, x, up.weight, up.bias, head.weight, head.bias, keep_yx, norm)


def _fusable_tail(spec: tuple[Layer, ...]) -> bool:
    """Whether the spec ends the way the fused kernel computes: an up-sampling conv-transpose
    (kernel == stride, ReLU) joined with the input, then a 3x3 single-channel head."""
    if len(spec) < 2:
        return False
    up, head = spec[-2:]
    return (
        up.kind == "conv_transpose"
        and up.kernel == up.stride
        and up.pad == 0
        and up.activation == "relu"
        and up.skip == "input"
        and head.kind == "conv"
        and (head.kernel, head.stride, head.pad, head.out_ch) == (3, 1, 1, 1)
    )


def _fusable_middle(spec: tuple[Layer, ...]) -> bool:
    """Whether the layers between the first and the tail are what the fused middle computes:
    two strided convs down (kernel a multiple of the stride), two conv-transposes up (kernel
    == stride, no pad), each with ReLU, the first up joined with the second conv's output and
    the second with the first layer's."""
    if len(spec) != 7:  # the first layer, the four middle ones, up1 and the head
        return False
    first, down2, down3, up3, up2 = spec[:5]
    downs_ok = all(
        layer.kind == "conv" and layer.kernel % layer.stride == 0 and layer.skip is None
        for layer in (down2, down3)
    )
    ups_ok = all(
        layer.kind == "conv_transpose" and layer.kernel == layer.stride and layer.pad == 0
        for layer in (up3, up2)
    )
    return (
        downs_ok
        and ups_ok
        and all(layer.activation == "relu" for layer in (down2, down3, up3, up2))
        and (up3.skip, up2.skip) == (down2.name, first.name)
    )


def _fusable_first(spec: tuple[Layer, ...]) -> bool:
    """Whether the spec starts the way the fused first-layer kernel computes: a conv on the
    input with kernel a multiple of the stride, then ReLU, joined with nothing."""
    first = spec[0] if spec else None
    return (
        first is not None
        and first.kind == "conv"
        and first.kernel % first.stride == 0
        and first.activation == "relu"
        and first.skip is None
    )


def _standardised(
    x: mx.array, norm: InputNorm, in_box: Box | None, padded_hw: tuple[int, int] | None
) -> mx.array:
    """(x - mean) / std per channel as float32, zeroed outside the padded image: the zero
    padding a whole-image pass gives the standardised input (core/normalise.py)."""
    n, in_h, in_w, c = x.shape
    keep = None if in_box is None else inside_at_scale(in_box, padded_hw, 1)
    if keep is None:
        keep = Box(0, 0, in_h, in_w)
    elif keep.y1 <= keep.y0 or keep.x1 <= keep.x0:
        return mx.zeros(x.shape, mx.float32)
    # the kept box is cut out, standardised and zero-padded back: a select against a
    # broadcast mask takes MLX's general strided path (as in relu_in_box)
    inner = x[:, keep.y0 : keep.y1, keep.x0 : keep.x1]
    if inner.dtype == mx.uint8:
        inner = inner.astype(mx.float32) / 255.0
    # each row of pixels as one (w*C,) vector, the per-channel values tiled to match: the
    # same sums as a broadcast over the last axis, without its 3-element inner loop
    box_w = keep.x1 - keep.x0
    rows = inner.reshape(n, keep.y1 - keep.y0, box_w * c)
    mean, std = (mx.tile(mx.array(v, mx.float32), box_w) for v in (norm.mean, norm.std))
    inner = ((rows - mean) / std).reshape(n, keep.y1 - keep.y0, box_w, c)
    pads = [(0, 0), (keep.y0, in_h - keep.y1), (keep.x0, in_w - keep.x1), (0, 0)]
    return mx.pad(inner, pads) if inner.shape != x.shape else inner


def _relu_inside(
    h: mx.array, in_box: Box | None, padded_hw: tuple[int, int] | None, scale: int
) -> mx.array:
    """ReLU, then zero the positions of a window tensor (N, h, w, C) outside the padded image."""
    keep = None if in_box is None else inside_at_scale(in_box, padded_hw, scale)
    return relu(h) if keep is None else relu_in_box(h, keep)


_ALL = (1 << 30, 1 << 30)  # a tensor size no window reaches: "keep everything"


def _keep_yx(
    in_box: Box | None, padded_hw: tuple[int, int] | None, scale: int, hw
) -> tuple[int, int, int, int]:
    """The (y0, x0, y1, x1) box of a window tensor at `scale` that lies inside the padded
    image (the fused kernels' `keep`): all of `hw` = (h, w) when nothing is outside."""
    keep = None if in_box is None else inside_at_scale(in_box, padded_hw, scale)
    return (0, 0, *hw) if keep is None else tuple(keep)


def relu_in_box(h: mx.array, keep: Box) -> mx.array:
    """relu(h) inside `keep` (window rows and cols), 0 outside. h: (N, H, W, C) -> same shape.

    The box is cut out, rectified and zero-padded back: a select against a broadcast mask (or
    a multiply by one) takes MLX's general strided path, many times slower than these plain
    copies. The gradient outside the box is zero, as for the select.
    """
    _, in_h, in_w, _ = h.shape
    if keep.y1 <= keep.y0 or keep.x1 <= keep.x0:
        return mx.zeros_like(h)
    inner = relu(h[:, keep.y0 : keep.y1, keep.x0 : keep.x1])
    return mx.pad(inner, [(0, 0), (keep.y0, in_h - keep.y1), (keep.x0, in_w - keep.x1), (0, 0)])


def relu_reference(h: mx.array) -> mx.array:
    return mx.maximum(h, 0)


# compiled: one pass over the activation instead of one per op (bit-identical to the
# reference: element-wise ops only)
relu = mx.compile(relu_reference)
