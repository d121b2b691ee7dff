"""GigaUNet-4492: parameter count, shapes, ranges, and the spec it is built from."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from gigamlx.backends.mlx.model import _standardised, relu_in_box
from gigamlx.core.geometry import Box, inside_at_scale
from gigamlx.core.normalise import InputNorm
from gigamlx.core.spec import (
    GIGAUNET_4492,
    Layer,
    check_spec,
    macs_per_px,
    param_count,
    scales,
    window_margins_px,
)


def test_model_has_4492_trainable_parameters(model):
    count = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    assert count == 4492 == param_count()


def test_model_output_shape_and_range(model):
    x = mx.random.uniform(shape=(2, 128, 192, 3))
    probs = model(x)
    assert probs.shape == (2, 128, 192, 1)
    values = np.array(probs)
    assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(np.array(mx.sigmoid(model.logits(x))), values, atol=1e-7)


def test_macs_per_px_sums_the_layer_table():
    forward, backward = macs_per_px()
    # down1 16*16*3*2 / 4^2, down2 8*8*2*4 / 16^2, down3 8*8*4*6 / 64^2, up3 6*4 / 16^2,
    # up2 8*2 / 4^2, up1 4*3, head 3*3*6
    by_layer = [96.0, 2.0, 0.375, 0.09375, 1.0, 12.0, 54.0]
    assert forward == pytest.approx(sum(by_layer))
    assert backward == pytest.approx(2 * sum(by_layer) - by_layer[0])  # no image gradient
    tiny = (Layer("down1", "conv", 3, 1, 4, 2, 1, "relu"),)
    assert macs_per_px(tiny) == (pytest.approx(16 * 3 / 4), pytest.approx(16 * 3 / 4))


def test_spec_scales_follow_the_table():
    assert scales()["down3"] == 64 and scales()["up1"] == 1


def test_spec_rejects_channel_mismatch():
    broken = (
        Layer("down1", "conv", 3, 2, 16, 4, 6, "relu"),
        Layer("head", "conv", 3, 1, 3, 1, 1, "sigmoid"),
    )
    with pytest.raises(ValueError, match="in_ch"):
        check_spec(broken)


def test_window_margins_match_a_window_pass(model):
    """Outputs further than the derived margin from a window edge equal the whole-image pass."""
    x = mx.random.uniform(shape=(1, 512, 512, 3))
    whole = np.array(model.logits(x))[0, ..., 0]
    window = np.array(model.logits(x[:, 128:384, 128:384]))[0, ..., 0]
    lo, hi = window_margins_px(GIGAUNET_4492)
    inner = slice(lo, 256 - hi)
    np.testing.assert_allclose(
        window[inner, inner], whole[128:384, 128:384][inner, inner], atol=1e-5
    )
    # and a halo is needed at all: inside the margin the window pass is wrong
    edge = window[:lo, inner] - whole[128 : 128 + lo, 128:384][:, inner]
    assert np.abs(edge).max() > 1e-3


def _relu_where(h: mx.array, keep: Box) -> mx.array:
    """ReLU, then a select against the box's row and column masks: what relu_in_box replaces."""
    rows, cols = mx.arange(h.shape[1]), mx.arange(h.shape[2])
    row_in = (rows >= keep.y0) & (rows < keep.y1)
    col_in = (cols >= keep.x0) & (cols < keep.x1)
    inside = (row_in[:, None] & col_in[None, :])[None, :, :, None]
    return mx.where(inside, mx.maximum(h, 0), 0)


@pytest.mark.parametrize(
    "keep",
    [
        Box(3, 5, 30, 41),  # cut on every side
        Box(0, 0, 33, 40),  # the far edges (right, bottom) only
        Box(7, 0, 33, 47),  # the top only
        Box(0, 0, 33, 47),  # the whole tensor
        Box(32, 46, 33, 47),  # one pixel
        Box(10, 10, 10, 20),  # empty
    ],
)
def test_relu_in_box_is_bit_identical_to_the_select(keep):
    """The forward equals ReLU-then-select bit for bit, and the vjp value for value (the select's
    gradient outside the box is -0 where the cotangent is negative; here +0)."""
    h = mx.random.normal((2, 33, 47, 3), key=mx.random.key(3))
    h = mx.where(mx.abs(h) < 0.3, 0.0, h)  # exact zeros: the ReLU's tie
    cotangent = mx.random.normal(h.shape, key=mx.random.key(4))
    out, (grad,) = mx.vjp(lambda a: relu_in_box(a, keep), [h], [cotangent])
    out_ref, (grad_ref,) = mx.vjp(lambda a: _relu_where(a, keep), [h], [cotangent])
    assert mx.array_equal(out[0].view(mx.uint32), out_ref[0].view(mx.uint32)).item()
    assert mx.array_equal(grad, grad_ref).item()


def _standardised_where(x, norm, keep):
    """The standardisation as a select against broadcast row × column masks (the reference)."""
    if x.dtype == mx.uint8:
        x = x.astype(mx.float32) / 255.0
    x = (x - mx.array(norm.mean, mx.float32)) / mx.array(norm.std, mx.float32)
    rows, cols = mx.arange(x.shape[1]), mx.arange(x.shape[2])
    row_in = (rows >= keep.y0) & (rows < keep.y1)
    col_in = (cols >= keep.x0) & (cols < keep.x1)
    return mx.where((row_in[:, None] & col_in[None, :])[None, :, :, None], x, 0.0)


@pytest.mark.parametrize("dtype", [mx.uint8, mx.float32])
@pytest.mark.parametrize(
    "in_box, padded_hw",
    [
        (Box(-8, 20, 36, 80), (30, 70)),  # cut at the top, bottom and right
        (Box(4, -12, 48, 48), (100, 100)),  # the left only
        (Box(4, 4, 48, 64), (100, 100)),  # all inside
        (Box(40, 4, 84, 64), (30, 100)),  # all outside
        (None, None),  # a whole-image pass
    ],
)
def test_standardised_is_bit_identical_to_the_select(dtype, in_box, padded_hw):
    """Cut, standardised along tiled rows and padded back: the select's bits, for uint8 and
    float32 windows, on interior, edge and empty keep boxes."""
    norm = InputNorm((0.83, 0.62, 0.8), (0.11, 0.21, 0.09))
    x = mx.array(np.random.default_rng(7).integers(0, 256, (2, 44, 60, 3), dtype=np.uint8))
    x = x if dtype == mx.uint8 else x.astype(mx.float32) / 255.0
    keep = Box(0, 0, 44, 60) if in_box is None else inside_at_scale(in_box, padded_hw, 1)
    keep = keep or Box(0, 0, 44, 60)
    out = _standardised(x, norm, in_box, padded_hw)
    expected = _standardised_where(x, norm, keep)
    assert out.shape == expected.shape and out.dtype == mx.float32
    assert mx.array_equal(out.view(mx.uint32), expected.view(mx.uint32)).item()
