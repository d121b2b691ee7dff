"""GigaUNet-4492: parameter count, shapes, ranges, and the spec it is built from."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

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
