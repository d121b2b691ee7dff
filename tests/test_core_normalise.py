"""The per-slide input standardisation: its statistics, and the errors it raises."""

import numpy as np
import pytest

from gigamlx.core.normalise import MIN_STD, InputNorm, slide_norm
from gigamlx.runs.config import TrainConfig


def test_slide_norm_measures_the_slide_it_is_given():
    rng = np.random.default_rng(0)
    image = rng.normal((200, 120, 180), (10, 30, 5), (1000, 1500, 3)).clip(0, 255).astype(np.uint8)
    norm = slide_norm(image)
    np.testing.assert_allclose(norm.mean, np.array([200, 120, 180]) / 255, atol=2e-3)
    np.testing.assert_allclose(norm.std, np.array([10, 30, 5]) / 255, rtol=0.03)
    # only the area asked for: the right half (pure glass) changes nothing
    image[:, 750:] = 255
    assert slide_norm(image, (1000, 750)) == slide_norm(image[:, :750])
    assert slide_norm(image) != norm


def test_a_blank_slide_does_not_divide_by_zero():
    norm = slide_norm(np.full((300, 300, 3), 240, np.uint8))
    assert norm.std == (MIN_STD,) * 3 and not norm.is_identity


@pytest.mark.parametrize("mean,std", [((0.5, 0.5), (1, 1, 1)), ((0, 0, 0), (1, 0, 1))])
def test_bad_statistics_are_refused(mean, std):
    with pytest.raises(ValueError, match="mean and std|positive"):
        InputNorm(mean, std)


def test_runs_saved_before_the_option_stay_raw():
    """A config written before `normalize` existed trained on raw RGB; a new one standardises."""
    saved = TrainConfig().to_dict()
    del saved["normalize"], saved["format"]  # written before formats (runs/config.py)
    assert TrainConfig.from_dict(saved).normalize is False
    assert TrainConfig.from_dict(TrainConfig().to_dict()).normalize is True
