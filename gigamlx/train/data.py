"""Opening the slides a run trains on: ingested stores with a tissue mask, or the default."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gigamlx.slide.readers import SLIDE_FILE_SUFFIXES
from gigamlx.slide.store import SlideStore, StoreError, open_store
from gigamlx.synth.render import default_slide

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Training data that cannot be used; the message names the path and the fix."""


def open_training_slides(
    paths: tuple[str, ...], progress: Callable[[int, int], None] | None = None
) -> list[SlideStore]:
    """Open every store in `paths`; with none, the default synthetic slide (made once)."""
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
        stores.append(store)
    return stores
