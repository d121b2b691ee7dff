"""The GigaUNet-4492 layer table as data, and everything derived from it.

Every other module (the MLX model, the torch model, the tile planner) reads the geometry from
here, so kernel sizes, strides and skip joins are written exactly once.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple


class Layer(NamedTuple):
    """One layer: a conv or conv-transpose, its activation, and an optional skip join.

    `skip` names an earlier tensor ("input" or a layer name) concatenated channels-last after
    the activation, so the next layer sees `out_ch + channels(skip)` channels.
    """

    name: str
    kind: Literal["conv", "conv_transpose"]
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    pad: int
    activation: Literal["relu", "sigmoid"]
    skip: str | None = None


GIGAUNET_4492: tuple[Layer, ...] = (
    Layer("down1", "conv", 3, 2, kernel=16, stride=4, pad=6, activation="relu"),
    Layer("down2", "conv", 2, 4, kernel=8, stride=4, pad=2, activation="relu"),
    Layer("down3", "conv", 4, 6, kernel=8, stride=4, pad=2, activation="relu"),
    Layer(
        "up3", "conv_transpose", 6, 4, kernel=4, stride=4, pad=0, activation="relu", skip="down2"
    ),
    Layer(
        "up2", "conv_transpose", 8, 2, kernel=4, stride=4, pad=0, activation="relu", skip="down1"
    ),
    Layer(
        "up1", "conv_transpose", 4, 3, kernel=4, stride=4, pad=0, activation="relu", skip="input"
    ),
    Layer("head", "conv", 6, 1, kernel=3, stride=1, pad=1, activation="sigmoid"),
)
INPUT_CHANNELS = 3


class Interval(NamedTuple):
    """Inclusive index range [lo, hi] along one axis at some tensor's own resolution."""

    lo: int
    hi: int


def param_count(spec: tuple[Layer, ...] = GIGAUNET_4492) -> int:
    """Trainable parameters: k*k*in*out weights plus out biases per layer."""
    return sum(layer.kernel**2 * layer.in_ch * layer.out_ch + layer.out_ch for layer in spec)


def scales(spec: tuple[Layer, ...] = GIGAUNET_4492) -> dict[str, int]:
    """Down-sampling factor of every tensor relative to the input, e.g. {"down3": 64}."""
    scale = {"input": 1}
    current = 1
    for layer in spec:
        if layer.kind == "conv":
            current *= layer.stride
        else:
            if current % layer.stride:
                raise ValueError(f"{layer.name}: upsampling by {layer.stride} below scale 1")
            current //= layer.stride
        scale[layer.name] = current
    return scale


def total_stride(spec: tuple[Layer, ...] = GIGAUNET_4492) -> int:
    """The coarsest scale: image sizes and tile origins must be multiples of it (64 here)."""
    return max(scales(spec).values())


def macs_per_px(spec: tuple[Layer, ...] = GIGAUNET_4492) -> tuple[float, float]:
    """Multiply-adds per input pixel of one (forward, backward) pass over a whole image.

    Forward: a conv computes k*k*in*out per output position, a conv-transpose (k/s)^2*in*out;
    a layer at scale f has 1/f^2 output positions per input pixel. Backward: each layer's
    weight gradient costs its forward again, and every layer but the first also passes a
    gradient to its input (the image needs none). Biases, activations and zeroing are not
    counted. GigaUNet-4492: about (165.5, 234.9).
    """
    scale = scales(spec)
    forward = []
    for layer in spec:
        taps = layer.kernel**2 if layer.kind == "conv" else (layer.kernel / layer.stride) ** 2
        forward.append(taps * layer.in_ch * layer.out_ch / scale[layer.name] ** 2)
    return sum(forward), sum(forward) + sum(forward[1:])


def check_spec(spec: tuple[Layer, ...] = GIGAUNET_4492) -> None:
    """Raise ValueError if channel counts or skip joins of the table do not line up."""
    channels = {"input": INPUT_CHANNELS}
    scale = scales(spec)
    previous = "input"
    for layer in spec:
        joined = channels[previous]
        if layer.in_ch != joined:
            raise ValueError(f"{layer.name}: in_ch {layer.in_ch} but receives {joined} channels")
        channels[layer.name] = layer.out_ch
        if layer.skip is not None:
            if scale[layer.skip] != scale[layer.name]:
                raise ValueError(f"{layer.name}: skip {layer.skip} is at another scale")
            channels[layer.name] += channels[layer.skip]
        if layer.kind == "conv" and layer.stride > 1 and layer.kernel < layer.stride:
            raise ValueError(f"{layer.name}: kernel {layer.kernel} skips input pixels")
        previous = layer.name
    if channels[previous] != 1 or scale[previous] != 1:
        raise ValueError("the last layer must give one channel at full resolution")


def _forward_valid(layer: Layer, valid: Interval) -> Interval:
    """Outputs of `layer` that depend only on inputs inside `valid` (one axis)."""
    k, s, p = layer.kernel, layer.stride, layer.pad
    if layer.kind == "conv":
        # output j reads inputs s*j - p .. s*j - p + k - 1
        return Interval(-((-(valid.lo + p)) // s), (valid.hi + p - k + 1) // s)
    # conv-transpose: output i receives inputs j with s*j - p <= i <= s*j - p + k - 1
    return Interval(s * (valid.lo - 1) - p + k, s * (valid.hi + 1) - p - 1)


def window_margins_px(spec: tuple[Layer, ...] = GIGAUNET_4492) -> tuple[int, int]:
    """Output pixels at the (low, high) edge of a window that a window pass gets wrong.

    A window pass pads its own edges with zeros where the whole image has real neighbours;
    this propagates the set of still-correct positions through every layer and skip join.
    The window length is any multiple of the total stride large enough not to vanish.
    """
    length = 64 * total_stride(spec)
    valid = {"input": Interval(0, length - 1)}
    scale = scales(spec)
    previous = "input"
    for layer in spec:
        out = _forward_valid(layer, valid[previous])
        if layer.skip is not None:
            skip = valid[layer.skip]
            out = Interval(max(out.lo, skip.lo), min(out.hi, skip.hi))
        valid[layer.name] = out
        previous = layer.name
    last = valid[previous]
    n_out = length // scale[previous]
    return last.lo, n_out - 1 - last.hi


def halo_px(spec: tuple[Layer, ...] = GIGAUNET_4492) -> int:
    """Input pixels added on every side of a tile: the window margin, rounded up to the stride.

    Rounding to the total stride keeps every strided layer on the whole-image sampling grid.
    """
    stride = total_stride(spec)
    return stride * math.ceil(max(window_margins_px(spec)) / stride)


def receptive_field_px(spec: tuple[Layer, ...] = GIGAUNET_4492) -> int:
    """Furthest input pixel, on one side, that any output pixel depends on (110 here)."""
    stride = total_stride(spec)
    reach = 0
    for pos in range(stride):
        lo, hi = _input_dependency(spec, Interval(pos, pos))
        reach = max(reach, pos - lo, hi - pos)
    return reach


def _input_dependency(spec: tuple[Layer, ...], out: Interval) -> Interval:
    """Hull of input positions that output positions `out` (at full resolution) depend on."""
    needed = {spec[-1].name: out}
    names = ["input"] + [layer.name for layer in spec]
    for index in range(len(spec) - 1, -1, -1):
        layer = spec[index]
        if layer.name not in needed:
            continue
        want = needed.pop(layer.name)
        # the next layer read this tensor's concat; the skip part passes through unchanged
        if layer.skip is not None:
            _merge(needed, layer.skip, want)
        k, s, p = layer.kernel, layer.stride, layer.pad
        if layer.kind == "conv":
            source = Interval(s * want.lo - p, s * want.hi - p + k - 1)
        else:
            source = Interval(-((-(want.lo + p - k + 1)) // s), (want.hi + p) // s)
        _merge(needed, names[index], source)
    return needed["input"]


def _merge(needed: dict[str, Interval], name: str, extra: Interval) -> None:
    if name in needed:
        old = needed[name]
        extra = Interval(min(old.lo, extra.lo), max(old.hi, extra.hi))
    needed[name] = extra
