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
        """(h, w, 3) uint8 -> (h, w, 3) uint8, pixel by pixel.

        exp(-(od @ M + b)) factorises per input channel: out_c = 256 e^-b_c prod_k
        ((v_k + 1) / 256)^M_kc, so the OD step is 9 lookup tables and products (no log/exp
        per pixel); the saturation, contrast and brightness steps are one 3x3 mix.
        """
        matrix = np.asarray(self.od_matrix, np.float64).reshape(3, 3)
        base = (np.arange(256, dtype=np.float64) + 1) / 256
        luts = (base[None, None, :] ** matrix[:, :, None]).astype(np.float32)  # (k, c, 256)
        scale = 256 * np.exp(-np.asarray(self.od_offset, np.float64))
        grey_share = (1 - self.saturation) / 3
        mix = self.contrast * (self.saturation * np.eye(3) + grey_share)  # (in, out)
        shift = 128 + self.brightness - 128 * self.contrast
        lit = []
        for c in range(3):
            channel = luts[0, c][rgb[..., 0]]
            channel *= luts[1, c][rgb[..., 1]]
            channel *= luts[2, c][rgb[..., 2]] * np.float32(scale[c])
            np.minimum(channel, np.float32(256), out=channel)  # OD >= 0: no brighter than I0
            channel -= np.float32(1)
            lit.append(channel)
        out = np.empty(rgb.shape, np.uint8)
        for c in range(3):
            mixed = lit[0] * np.float32(mix[0, c]) + np.float32(shift)
            mixed += lit[1] * np.float32(mix[1, c])
            mixed += lit[2] * np.float32(mix[2, c])
            out[..., c] = np.clip(np.rint(mixed), 0, 255)
        return out


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
