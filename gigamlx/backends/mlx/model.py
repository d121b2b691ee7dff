"""GigaUNet-4492 as an mlx.nn.Module, built from the layer table in gigamlx.spec."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from gigamlx.backends.mlx import ops
from gigamlx.spec import GIGAUNET_4492, Layer, check_spec, scales
from gigamlx.tiling.geometry import Box, inside_at_scale


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
        self, x: mx.array, in_box: Box | None = None, padded_hw: tuple[int, int] | None = None
    ) -> mx.array:
        """Pre-sigmoid head output. x: (N, H, W, 3) -> (N, H, W, 1).

        Args:
            x: input (window), float32 in [0, 1].
            in_box: where this window sits in the image; None for a whole-image pass.
            padded_hw: the padded image size, required with `in_box`.
        """
        saved = {"input": x}
        h = x
        for index, layer in enumerate(self._spec):
            module = getattr(self, layer.name)
            if layer.kind == "conv":
                h = ops.conv2d(h, module.weight, module.bias, layer.stride, layer.pad)
            else:
                h = ops.conv_transpose2d(h, module.weight, module.bias, layer.stride)
            if index == len(self._spec) - 1:
                return h
            h = nn.relu(h)
            if in_box is not None:
                h = _zero_outside(h, in_box, padded_hw, self._scales[layer.name])
            saved[layer.name] = h
            if layer.skip is not None:
                h = mx.concatenate([h, saved[layer.skip]], axis=-1)
        raise AssertionError("empty spec")

    def __call__(self, x: mx.array) -> mx.array:
        return mx.sigmoid(self.logits(x))


def _zero_outside(h: mx.array, in_box: Box, padded_hw: tuple[int, int], scale: int) -> mx.array:
    """Zero the positions of a window tensor (N, h, w, C) that lie outside the padded image."""
    keep = inside_at_scale(in_box, padded_hw, scale)
    if keep is None:
        return h
    rows = mx.arange(h.shape[1])
    cols = mx.arange(h.shape[2])
    row_in = (rows >= keep.y0) & (rows < keep.y1)
    col_in = (cols >= keep.x0) & (cols < keep.x1)
    inside = (row_in[:, None] & col_in[None, :])[None, :, :, None]
    return mx.where(inside, h, mx.zeros_like(h))
