"""Slides to predict (ingested stores or slide files) with their levels and µm per pixel, and
the choice of the level that matches the resolution a checkpoint was trained at."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gigamlx.core.arrays import WindowArray
from gigamlx.slide.magnification import LevelError, pick_level
from gigamlx.slide.readers import open_slide
from gigamlx.slide.store import StoreError, open_store

log = logging.getLogger(__name__)

# suffixes stripped from a slide's file name to name its outputs
NAME_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif")


class PredictError(ValueError):
    """Input that `predict` cannot use; the message names the path and the fix."""


class SlideSource(NamedTuple):
    """A slide to predict: `levels` are (H, W, 3) uint8 array-likes, finest first."""

    path: Path
    name: str  # output stem
    levels: list
    mpp: float | None  # µm per pixel of level 0
    close: Callable[[], None]
    downsamples: tuple[float, ...] = ()  # per level, vs level 0

    @property
    def image(self):
        return self.levels[0]

    @property
    def level_hws(self) -> list[tuple[int, int]]:
        return [tuple(level.shape[:2]) for level in self.levels]

    def level_mpp(self, n: int) -> float | None:
        """µm per pixel of level `n` (None when the slide is uncalibrated)."""
        downsample = (
            self.downsamples[n]
            if self.downsamples
            else self.image.shape[1] / (self.levels[n].shape[1])
        )
        return self.mpp * downsample if self.mpp else None


def reader_level(reader: Any, level: int) -> WindowArray:
    """(H, W, 3) uint8 view of one level of a slide reader (`read(level, box)`)."""
    return WindowArray((*reader.level_hw(level), 3), np.uint8, partial(reader.read, level))


def slide_name(path: Path) -> str:
    """Output stem of a slide: its file name without the slide suffix ('a.ome.tif' -> 'a')."""
    name = Path(path).name
    for suffix in NAME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def open_source(path: str | os.PathLike) -> SlideSource:
    """Open an ingested slide store (a folder) or a slide file (OpenSlide or TIFF formats).

    Raises:
        PredictError: missing or unreadable; the message names the path.
    """
    path = Path(path)
    if not path.exists():
        raise PredictError(f"no slide at {path}")
    if path.is_dir():
        try:
            store = open_store(path)
        except StoreError as error:
            raise PredictError(str(error)) from None
        levels = [level.image for level in store.levels]
        downsamples = tuple(level.downsample for level in store.levels)
        return SlideSource(path, slide_name(path), levels, store.mpp, lambda: None, downsamples)
    try:
        reader = open_slide(path)
    except ValueError as error:  # SlideFormatError names every backend's complaint
        raise PredictError(str(error)) from None
    levels = [reader_level(reader, n) for n in range(reader.level_count)]
    return SlideSource(path, slide_name(path), levels, reader.mpp, reader.close)


def choose_level(
    source: SlideSource,
    trained_mpp: float | None,
    trained_level: int | None,
    level: int | None = None,
) -> int:
    """The level of `source` to predict: `level` if given, else the one matching the µm per
    pixel the checkpoint was trained at, else its trained level index (uncalibrated slides).

    Raises:
        PredictError: no level within 10% of `trained_mpp`, or no such level index.
    """
    mpps = [source.level_mpp(n) for n in range(len(source.levels))]
    try:
        if level is not None:
            return pick_level(mpps, source.level_hws, str(source.path), level=level)
        if trained_mpp and source.mpp:
            return pick_level(mpps, source.level_hws, str(source.path), mpp=trained_mpp)
        if trained_mpp:
            log.warning(
                "%s has no pixel size: predicting level %d, the level index trained at (%g µm/px)",
                source.path,
                trained_level or 0,
                trained_mpp,
            )
        return pick_level(mpps, source.level_hws, str(source.path), level=trained_level)
    except LevelError as error:
        raise PredictError(
            f"{error} (the checkpoint was trained at "
            f"{f'{trained_mpp:g} µm/px' if trained_mpp else 'an unknown pixel size'}; "
            "predict --level N reads another level)"
        ) from None
