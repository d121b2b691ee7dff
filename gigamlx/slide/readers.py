"""Slide readers, one class per backend (OpenSlide, tifffile), behind `open_slide`.

Every reader answers `read(level, box) -> (h, w, 3) uint8 RGB` for a box in that level's own
pixel coordinates, reading only the tiles it touches.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from gigamlx.core.arrays import WindowArray, axes_index, read_window, to_rgb
from gigamlx.core.geometry import Box
from gigamlx.core.units import to_um

log = logging.getLogger(__name__)

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")
# slide files `open_slide` reads (ingest them into a store before training on them)
SLIDE_FILE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES
BACKENDS = ("openslide", "tifffile")


class SlideFormatError(ValueError):
    """No backend could open a file."""


class SlideReader(Protocol):
    path: Path
    level_count: int
    mpp: float | None

    def level_hw(self, level: int) -> tuple[int, int]: ...

    def read(self, level: int, box: Box) -> np.ndarray: ...

    def close(self) -> None: ...


def _clip(box: Box, hw: tuple[int, int]) -> Box:
    return Box(max(box.y0, 0), max(box.x0, 0), min(box.y1, hw[0]), min(box.x1, hw[1]))


class OpenSlideReader:
    """OpenSlide formats (.svs .ndpi .mrxs .scn, generic tiled TIFF); RGBA composited on white."""

    def __init__(self, path: str | os.PathLike):
        import openslide

        self.path = Path(path)
        self._slide = openslide.OpenSlide(str(self.path))
        self.level_count = self._slide.level_count
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp else None

    def level_hw(self, level: int) -> tuple[int, int]:
        w, h = self._slide.level_dimensions[level]
        return h, w

    def read(self, level: int, box: Box) -> np.ndarray:
        """Read `box` of `level` as (h, w, 3) uint8; pixels outside the level are 0."""
        inside = _clip(box, self.level_hw(level))
        out = np.zeros(box.hw + (3,), np.uint8)
        if inside.y0 >= inside.y1 or inside.x0 >= inside.x1:
            return out
        scale = self._slide.level_downsamples[level]
        origin_xy = (round(inside.x0 * scale), round(inside.y0 * scale))
        region = self._slide.read_region(origin_xy, level, (inside.hw[1], inside.hw[0]))
        rgba = np.asarray(region)  # (h, w, 4) uint8, not premultiplied
        if rgba[..., 3].min() == 255:  # opaque, as nearly every slide region is
            rgb = rgba[..., :3]
        else:  # composite onto white
            rgba = rgba.astype(np.uint16)
            alpha = rgba[..., 3:]
            rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        out[inside.y0 - box.y0 : inside.y1 - box.y0, inside.x0 - box.x0 : inside.x1 - box.x0] = rgb
        return out

    def close(self) -> None:
        self._slide.close()


def _check_axes(shape: tuple[int, ...], axes: str, path: Path) -> None:
    """Only Y, X and a sample/channel axis may be longer than 1."""
    for axis, n in zip(axes, shape, strict=True):
        if axis not in "YXSC" and n != 1:
            raise SlideFormatError(f"{path}: axis {axis} has size {n}; expected one RGB image")


def ome_mpp(ome_xml: str, source: Path | str = "OME-XML") -> float | None:
    """µm per pixel (X) of the first image of an OME-XML document, parsed with its unit.

    `PhysicalSizeXUnit` defaults to µm as the OME schema says; nm, mm, ... are converted.
    A size that cannot be read is logged and ignored (the slide has no calibration).
    """
    import tifffile

    try:
        images = tifffile.xml2dict(ome_xml)["OME"].get("Image", [])
    except Exception as err:  # malformed XML: the pixels may still be fine
        log.warning("%s: unreadable OME-XML (%s); no pixel size", source, err)
        return None
    image = images[0] if isinstance(images, list) else images
    pixels = (image or {}).get("Pixels", {})
    if "PhysicalSizeX" not in pixels:
        return None
    mpp = to_um(pixels["PhysicalSizeX"], pixels.get("PhysicalSizeXUnit"))
    if mpp is None:
        log.warning(
            "%s: PhysicalSizeX %r %s is not a length; no pixel size",
            source,
            pixels["PhysicalSizeX"],
            pixels.get("PhysicalSizeXUnit", "µm"),
        )
    return mpp


class TiffReader:
    """TIFF / OME-TIFF through tifffile: pyramidal (levels or subifds) or a single level."""

    def __init__(self, path: str | os.PathLike):
        import tifffile
        import zarr

        self.path = Path(path)
        self._tif = tifffile.TiffFile(str(self.path))
        series = self._tif.series[0]
        _check_axes(series.shape, series.axes, self.path)
        self._axes = series.axes
        self._levels = [
            zarr.open(series.aszarr(level=n), mode="r") for n in range(len(series.levels))
        ]
        self.level_count = len(self._levels)
        self.dtype = np.dtype(series.dtype)
        if self.dtype not in (np.uint8, np.uint16):
            raise SlideFormatError(f"{self.path}: pixel type {self.dtype} is not uint8/uint16 RGB")
        self.mpp = self._mpp()

    def _mpp(self) -> float | None:
        """µm per pixel of level 0: OME-XML PhysicalSizeX with its unit, else the TIFF tags."""
        if self._tif.ome_metadata:
            return ome_mpp(self._tif.ome_metadata, self.path)
        tags = self._tif.pages.first.tags
        if "XResolution" in tags and tags.get("ResolutionUnit") is not None:
            num, den = tags["XResolution"].value
            per_cm = {2: 2.54, 3: 1.0}.get(int(tags["ResolutionUnit"].value))
            if per_cm and num:
                return per_cm * 1e4 * den / num
        return None

    def level_hw(self, level: int) -> tuple[int, int]:
        shape = self._levels[level].shape
        return shape[self._axes.index("Y")], shape[self._axes.index("X")]

    def read(self, level: int, box: Box) -> np.ndarray:
        """Read `box` of `level` as (h, w, 3) uint8; pixels outside the level are 0."""
        view = _rgb_view(self._levels[level], self._axes, self.level_hw(level))
        block = read_window(view, box)
        if self.dtype == np.uint16:
            block = (block >> 8).astype(np.uint8)
        return block

    def close(self) -> None:
        self._tif.close()


def _rgb_view(array, axes: str, hw: tuple[int, int]) -> WindowArray:
    """(H, W, 3) view of a tifffile level with any of the axes Y X S C (+ size-1 others)."""

    def read(box: Box) -> np.ndarray:
        return to_rgb(array[axes_index(axes, box)], axes)

    return WindowArray((*hw, 3), array.dtype, read)


def _backend_order(path: Path) -> tuple[str, ...]:
    name = path.name.lower()
    if name.endswith(SLIDE_FILE_SUFFIXES) and ".ome." not in name:
        return ("openslide", "tifffile")
    return ("tifffile", "openslide")


def open_slide(path: str | os.PathLike, backend: str | None = None) -> SlideReader:
    """Open a whole-slide image with the first backend that accepts it.

    Args:
        path: an OpenSlide format (.svs .ndpi .mrxs .scn, tiled TIFF) or a TIFF / OME-TIFF.
        backend: "openslide" or "tifffile" to force one; None tries both, OpenSlide first for
            its formats and plain .tif, tifffile first for OME-TIFF and other names.

    Raises:
        FileNotFoundError: no such file.
        SlideFormatError: no backend accepted the file; the message names it and every error.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no slide at {path}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose from {BACKENDS}")
    classes = {"openslide": OpenSlideReader, "tifffile": TiffReader}
    errors = []
    for name in (backend,) if backend else _backend_order(path):
        try:
            reader = classes[name](path)
            log.debug("opened %s with %s (%d levels)", path, name, reader.level_count)
            return reader
        except Exception as err:  # each library raises its own types
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise SlideFormatError(f"cannot open {path} as a slide; tried " + "; ".join(errors))
