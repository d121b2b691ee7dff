"""Draw the reference tissue region of the real slide (data/real/) and its overlay picture.

The region a pathologist would outline: the tissue plus the white spaces it encloses (fat,
lumina, tears, the gaps between collagen fibres), minus specks on the glass. Drawn from the
slide alone, never from a model, at full resolution:

1. optical density (OD) summed over R, G, B against the glass's own brightness (the median
   colour of the brighter half of the slide), so faint eosin and dense haematoxylin both count;
2. hysteresis: pixels above `od_low` are kept where their connected piece reaches `od_high`
   (faint fibres kept, isolated noise on the glass dropped);
3. a closing by a disk of `bridge_um` (distance transforms: every pixel within the radius of
   stained tissue, then back in by the radius), which bridges the fibres of loose connective
   tissue, and every hole the tissue encloses filled;
4. pieces below `min_area_um2` dropped (specks, dust on the glass);
5. the border smoothed by a majority (median) filter of `smooth_um`.

This differs from `gigamlx.eval.baseline` morph (Otsu on HSV saturation, a closing, holes
filled, small pieces removed) in the signal (OD, not saturation), the threshold (fixed and
hysteretic, chosen by looking at the slide, not Otsu) and the smoothing, but it is a
threshold method too, so it favours threshold methods over learned ones (docs/real-slide.md).

Usage: python scripts/real_slide_reference.py [--slide S] [--out PNG] [--overlay PNG]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
SLIDE = ROOT / "data" / "real" / "CMU-1-Small-Region.svs"
REFERENCE = ROOT / "data" / "real" / "CMU-1-Small-Region.tissue.png"
OVERLAY = ROOT / "docs" / "img" / "real-slide-reference.png"


@dataclass(frozen=True)
class ReferenceSettings:
    """How the reference is drawn; lengths in µm, areas in µm²."""

    od_low: float = 0.12
    od_high: float = 0.3
    bridge_um: float = 12.0
    min_area_um2: float = 8000.0
    smooth_um: float = 4.0


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32: OD summed over channels of (H, W, 3) uint8 `rgb`, against the glass
    colour (the per-channel median of the brighter half of the pixels)."""
    pixels = rgb.reshape(-1, 3)
    brightness = pixels.sum(axis=1, dtype=np.int32)
    glass = np.median(pixels[brightness >= np.median(brightness)], axis=0).astype(np.float32)
    ratio = np.maximum(rgb.astype(np.float32), 1.0) / glass
    return np.maximum(-np.log10(ratio), 0.0).sum(axis=-1)


def hysteresis(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) bool: pieces of `values > low` (8-connected) that hold a value above `high`."""
    labels, count = ndimage.label(values > low, structure=np.ones((3, 3)))
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[values > high])] = True
    keep[0] = False
    return keep[labels]


def closed(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """(H, W) bool: `mask` closed by a Euclidean disk of `radius_px` (exact, by distance
    transforms), with a margin so tissue at the border closes as if the slide went on."""
    pad = int(np.ceil(radius_px)) + 1
    grown = ndimage.distance_transform_edt(~np.pad(mask, pad, mode="edge")) <= radius_px
    shrunk = ndimage.distance_transform_edt(grown) > radius_px
    return shrunk[pad:-pad, pad:-pad]


def reference_mask(rgb: np.ndarray, mpp: float, settings: ReferenceSettings) -> np.ndarray:
    """(H, W) bool tissue region of (H, W, 3) uint8 `rgb` at `mpp` µm/px (module docstring)."""
    tissue = hysteresis(optical_density(rgb), settings.od_low, settings.od_high)
    region = ndimage.binary_fill_holes(closed(tissue, settings.bridge_um / mpp))
    labels, count = ndimage.label(region, structure=np.ones((3, 3)))
    areas_px = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas_px * mpp**2 >= settings.min_area_um2
    keep[0] = False
    side = 2 * round(settings.smooth_um / mpp) + 1
    smooth = ndimage.median_filter(keep[labels].astype(np.uint8), size=side) != 0
    return ndimage.binary_fill_holes(smooth)


def read_slide(path: Path) -> tuple[np.ndarray, float]:
    """Level 0 of the slide at `path` as (H, W, 3) uint8, and its µm/px."""
    from gigamlx.core.geometry import Box
    from gigamlx.slide.readers import open_slide

    reader = open_slide(path)
    try:
        height, width = reader.level_hw(0)
        return reader.read(0, Box(0, 0, height, width)), reader.mpp
    finally:
        reader.close()


def write_mask_png(mask: np.ndarray, path: Path) -> None:
    """(H, W) bool as a 1-bit PNG (white = tissue)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).convert("1").save(path, optimize=True)


def read_mask_png(path: Path) -> np.ndarray:
    """(H, W) bool mask from a PNG written by `write_mask_png` (non-zero = tissue)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L")) != 0


def write_overlay(rgb: np.ndarray, mask: np.ndarray, path: Path, scale: int = 3) -> None:
    """The slide shrunk `scale` times with the reference outline drawn on it (a PNG of 256
    colours, small enough for the docs)."""
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).reduce(scale)).copy()
    inside = np.asarray(Image.fromarray(mask).resize(small.shape[1::-1], Image.NEAREST))
    edge = inside & ~ndimage.binary_erosion(inside, iterations=3)
    small[edge] = (0, 200, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).quantize(256).save(path, optimize=True)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    slide: Annotated[Path, typer.Option(help="the slide")] = SLIDE,
    out: Annotated[Path, typer.Option(help="reference mask, 1-bit PNG")] = REFERENCE,
    overlay: Annotated[Path | None, typer.Option(help="overlay picture")] = OVERLAY,
) -> None:
    """Draw the reference tissue region of the real slide and its overlay picture."""
    if not slide.exists():
        raise SystemExit(f"{slide} is missing; see data/real/README.md")
    rgb, mpp = read_slide(slide)
    mask = reference_mask(rgb, mpp, ReferenceSettings())
    write_mask_png(mask, out)
    print(f"wrote {out}: {mask.shape[0]}x{mask.shape[1]} (HxW), {mask.mean():.1%} tissue")
    if overlay is not None:
        write_overlay(rgb, mask, overlay)
        print(f"wrote {overlay}")


if __name__ == "__main__":
    sys.exit(app())
