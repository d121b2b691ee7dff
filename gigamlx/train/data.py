"""Opening the slides a run trains on: ingested stores with a tissue mask, or the default."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from gigamlx.core.normalise import InputNorm
from gigamlx.core.progress import ChunkProgress
from gigamlx.slide.magnification import LevelError, pick_level
from gigamlx.slide.readers import SLIDE_FILE_SUFFIXES
from gigamlx.slide.store import SlideStore, StoreError, open_store
from gigamlx.synth.slide import default_slide

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and the fix."""


class TrainingSlide(NamedTuple):
    """One store at the pyramid level a run reads: (H, W, 3) image and (H, W) mask views."""

    path: Path
    image: object
    mask: object
    level: int
    mpp: float | None  # µm per pixel of that level
    norm: InputNorm = InputNorm()  # its input standardisation (the identity: raw RGB)

    @property
    def image_hw(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])


def at_level(store: SlideStore, level: int | None, mpp: float | None) -> TrainingSlide:
    """`store` at `--level` or at the level matching `--mpp` (level 0 when neither).

    Raises:
        DataError: no such level, or its mask is missing.
    """
    hws = [tuple(lv.image.shape[:2]) for lv in store.levels]
    mpps = [store.level_mpp(n) for n in range(store.level_count)]
    try:
        n = pick_level(mpps, hws, str(store.path), level, mpp)
    except LevelError as error:
        raise DataError(str(error)) from None
    chosen = store.level(n)
    if chosen.mask is None:
        raise DataError(f"{store.path} has no tissue mask at level {n}; re-ingest it")
    return TrainingSlide(store.path, chosen.image, chosen.mask, n, mpps[n])


def open_training_slides(
    paths: tuple[str, ...],
    progress: ChunkProgress | None = None,
    level: int | None = None,
    mpp: float | None = None,
) -> list[TrainingSlide]:
    """Open every store in `paths` (with none, the default synthetic slide, made once) at
    `--level` or `--mpp` (see `at_level`)."""
    if not paths:
        paths = (str(default_slide(progress=progress)),)
    stores = []
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() in SLIDE_FILE_SUFFIXES and path.is_file():
            raise DataError(
                f"{path} is a slide file; ingest it with its mask first: "
                f"gigamlx ingest {path} {path.with_suffix('.zarr')} --geojson ANNOTATIONS.geojson"
            )
        try:
            store = open_store(path)
        except StoreError as error:
            raise DataError(str(error)) from error
        if store.mask is None:
            raise DataError(
                f"{path} has no tissue mask to train on; "
                "re-ingest it with --mask, --geojson or --otsu"
            )
        stores.append(at_level(store, level, mpp))
    return stores
