"""What gigamlx writes: the marker of its stores and probability maps (what --overwrite may
replace), the chunk-size check, and waiting for zarr's own writes before a partial store is
deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def written_kind(path: str | os.PathLike) -> str | None:
    """The kind of zarr group gigamlx wrote at `path`: "slide", "prediction", or None.

    Slide stores carry a `gigamlx` attribute; probability maps carry one with kind
    "prediction" (older ones: an NGFF multiscale named "tissue probability" and no marker).
    """
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    marker = attrs.get("gigamlx")
    if isinstance(marker, dict):
        return "prediction" if marker.get("kind") == "prediction" else "slide"
    multiscales = attrs.get("ome", {}).get("multiscales") or [{}]
    return "prediction" if multiscales[0].get("name") == "tissue probability" else None


def is_slide_store(path: Path) -> bool:
    """True for a slide store gigamlx wrote (synth, ingest)."""
    return written_kind(path) == "slide"


def check_chunk_px(chunk_px: int) -> int:
    """Raise ValueError unless the chunk side is a positive number of pixels."""
    if not isinstance(chunk_px, int) or chunk_px < 16:
        raise ValueError(f"--chunk must be at least 16 pixels (1024 is usual), got {chunk_px}")
    return chunk_px


def settle_zarr_writes(timeout_s: float = 30.0) -> None:
    """Wait for chunk writes still running on zarr's IO loop.

    When one chunk write of an assignment fails (a full disk), zarr raises at once while the
    assignment's other chunk writes go on in its IO thread; deleting a partial store before
    they end lets them create it again (the space just freed makes them succeed).
    """
    from zarr.core.sync import sync

    async def others_done() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=timeout_s)

    try:
        sync(others_done())
    except Exception as error:  # noqa: BLE001 - best effort: the deletion follows anyway
        log.debug("could not wait for zarr's writes: %s", error)
