"""The network's input standardisation: (x - mean) / std per RGB channel, x in [0, 1].

GigaUNet-4492 as docs/design.md draws it reads raw RGB in [0, 1]. Trained that way, the optimizer
is badly conditioned: the input is never centred, glass and faint tissue differ by a few
hundredths, every pre-activation is a large constant plus a small ripple, and Adam moves each
bias by about the learning rate per step; the raw model sat at "all tissue" for most of a
400-step run in every setting tried (docs/experiments.md).

Each slide is standardised by its own statistics (sampled once when it is opened, for
training, validation and prediction alike): slides differ most in the tint of their glass
and the strength of their stain, and a fixed model then sees every slide's glass near the
same place, the way Otsu's per-slide threshold adapts to it.

The standardisation is part of the model, not of the data: the zero padding of every
convolution happens after it, so padding is zero in standardised units, and a tiled pass
zeroes standardised input outside the padded image exactly as it zeroes activations after
every layer. The identity (mean 0, std 1) is the raw model; runs record `normalize` in their
configuration, so prediction knows which model it loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD = 0.01  # a blank or single-colour slide must not blow the input up by 1 / 0
RGB = 3


@dataclass(frozen=True)
class InputNorm:
    """Per-channel mean and std of the input, in [0, 1] units (R, G, B)."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self):
        if len(self.mean) != RGB or len(self.std) != RGB:
            raise ValueError(f"input mean and std need 3 values (R, G, B): {self.mean}, {self.std}")
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError(
                f"input std must be positive and finite: mean {self.mean}, std {self.std}"
            )

    @property
    def is_identity(self) -> bool:
        return self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Standardised float64 copy of (..., 3) input in [0, 1] (the float64 reference's)."""
        return (np.asarray(x, np.float64) - np.array(self.mean)) / np.array(self.std)


STATS_GRID = 8  # windows per side of the grid the statistics are sampled on
STATS_WINDOW_PX = 128


def slide_norm(image, area_hw: tuple[int, int] | None = None) -> InputNorm:
    """The standardisation of one slide: mean and std of ~1 M pixels sampled on an even grid
    of small windows over its top-left `area_hw` (the whole (H, W, 3) `image` by default; any
    sliceable array: numpy, zarr, a lazy view), in [0, 1] units, rounded to 4 decimals so
    every machine and rank gets the same numbers."""
    h, w = area_hw or image.shape[:2]
    side = min(STATS_WINDOW_PX, h, w)
    ys = np.linspace(0, h - side, STATS_GRID).astype(int)
    xs = np.linspace(0, w - side, STATS_GRID).astype(int)
    boxes = sorted({(int(y), int(x)) for y in ys for x in xs})
    windows = [np.asarray(image[y : y + side, x : x + side]) for y, x in boxes]
    pixels = np.concatenate([win.reshape(-1, win.shape[-1])[:, :RGB] for win in windows])
    values = pixels.astype(np.float64) / 255.0
    mean = tuple(round(float(v), 4) for v in values.mean(axis=0))
    std = tuple(round(max(float(v), MIN_STD), 4) for v in values.std(axis=0))
    return InputNorm(mean, std)
