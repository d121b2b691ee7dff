"""Per-region colour augmentation, exact for tiled training.

Every transform here maps one pixel's RGB to a new RGB with parameters drawn once per region,
so a tile's window transforms exactly as the same pixels of the whole region would: tiling
stays exact. The transform models how real slides differ from each other:

- stain variation: the optical density (OD = -log(I / I0)) is taken apart into haematoxylin,
  eosin and residual (Ruifrok & Johnston's HED vectors), each scaled and shifted, and put back:
  one 3x3 matrix and an offset in OD space;
- saturation (HSV-like): a mix with the pixel's grey level;
- brightness and contrast of the scanner.

Blur is deliberately absent: a blurred pixel depends on its neighbours, so blurring each
window separately would differ from blurring the region near window edges (it would need its
own halo in every tile). Defocus is modelled in the synthetic benchmark instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# rows: the RGB optical density of one unit of haematoxylin, eosin and DAB (residual)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# OD of each 8-bit level, I0 = 256 so that 255 is a small positive density
_OD_OF_U8 = (-np.log((np.arange(256, dtype=np.float64) + 1) / 256)).astype(np.float32)
# spreads at strength 1: stain scale, stain shift (OD), saturation, brightness, contrast
SPREAD = {"scale": 0.25, "shift": 0.03, "saturation": 0.25, "brightness": 12.0, "contrast": 0.15}


class ColorJitter(NamedTuple):
    """One region's colour transform: RGB -> OD -> od @ matrix + offset -> RGB -> grey mix
    -> contrast/brightness. Stored as plain floats (it travels in a Region)."""

    od_matrix: tuple[float, ...]  # 3x3 row-major, applied as od_row @ matrix
    od_offset: tuple[float, float, float]
    saturation: float  # 1: unchanged, 0: grey
    brightness: float  # added to every channel, 8-bit levels
    contrast: float  # scale around mid-grey 128

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (h, w, 3) uint8, pixel by pixel."""
        od = _OD_OF_U8[rgb]  # (h, w, 3) float32
        matrix = np.asarray(self.od_matrix, np.float32).reshape(3, 3)
        od = od @ matrix + np.asarray(self.od_offset, np.float32)
        out = np.float32(256) * np.exp(-np.maximum(od, 0)) - np.float32(1)
        grey = out.mean(axis=-1, keepdims=True)
        out = grey + np.float32(self.saturation) * (out - grey)
        out = (out - np.float32(128)) * np.float32(self.contrast) + np.float32(
            128 + self.brightness
        )
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_jitter(rng: np.random.Generator, strength: float) -> ColorJitter:
    """A random ColorJitter; `strength` scales every spread (0 gives the identity)."""
    s = {k: v * strength for k, v in SPREAD.items()}
    scale = rng.uniform(1 - s["scale"], 1 + s["scale"], size=3)
    shift = rng.uniform(-s["shift"], s["shift"], size=3)
    matrix = HED_FROM_RGB @ np.diag(scale) @ RGB_FROM_HED
    offset = shift @ RGB_FROM_HED
    return ColorJitter(
        tuple(float(v) for v in matrix.ravel()),
        tuple(float(v) for v in offset),
        float(rng.uniform(1 - s["saturation"], 1 + s["saturation"])),
        float(rng.uniform(-s["brightness"], s["brightness"])),
        float(rng.uniform(1 - s["contrast"], 1 + s["contrast"])),
    )
