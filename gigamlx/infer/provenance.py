"""Where a prediction came from: checkpoint, step, the bundled model (when used), source slide
(size, fingerprint), level, µm per pixel, threshold, post-processing and gigamlx version.
Written into every output (zarr attributes, the OME-TIFF description, PNG text, GeoJSON
properties) as the same dictionary.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

FINGERPRINT_BYTES = 8 << 20  # head and tail hashed: a 3 GB slide is not read twice


def fingerprint(path: str | os.PathLike) -> dict:
    """Size and a SHA-256 that changes when the slide does, cheap for gigapixel files.

    A file: its size in bytes and SHA-256 of the whole file when it is at most 16 MiB, else
    of (size, first 8 MiB, last 8 MiB). A folder (zarr store): total bytes and SHA-256 of
    every file's relative path and size plus the contents of its `zarr.json` / `.z*` metadata.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        total = 0
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            size = file.stat().st_size
            total += size
            digest.update(f"{file.relative_to(path)}:{size}\n".encode())
            if file.name == "zarr.json" or file.name.startswith(".z"):
                digest.update(file.read_bytes())
        return {"source_bytes": total, "source_sha256": digest.hexdigest(), "hashed": "metadata"}
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= 2 * FINGERPRINT_BYTES:
            digest.update(handle.read())
            return {"source_bytes": size, "source_sha256": digest.hexdigest(), "hashed": "all"}
        digest.update(str(size).encode())
        digest.update(handle.read(FINGERPRINT_BYTES))
        handle.seek(size - FINGERPRINT_BYTES)
        digest.update(handle.read(FINGERPRINT_BYTES))
    return {"source_bytes": size, "source_sha256": digest.hexdigest(), "hashed": "head+tail 8MiB"}


def gigamlx_version() -> str:
    from gigamlx import __version__

    return __version__


def provenance(
    *,
    checkpoint: str | os.PathLike | None,
    step: int | None,
    source: str | os.PathLike,
    source_hw: tuple[int, int],
    level: int,
    mpp: float | None,
    threshold: float,
    postprocess: dict | None = None,
    model: dict | None = None,
) -> dict:
    """The provenance dictionary of one prediction (JSON-ready, flat).

    Args:
        checkpoint: the run folder, checkpoint folder or weights file predicted with.
        step: the checkpoint's training step (None for a bare weights file).
        source: the slide predicted; source_hw its level-0 (H, W) in pixels.
        level: the slide's pyramid level read; mpp its µm per pixel (None: uncalibrated).
        threshold: p >= threshold is tissue before post-processing.
        postprocess: the tissue mask's post-processing (`infer.postprocess.postprocess_record`).
        model: the bundled model's record (`runs.bundled.provenance_record`: name, what it
            was trained on, its threshold and post-processing); None for a run's weights.
    """
    fp = fingerprint(source)
    return {
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        "step": step,
        "model": model,
        "source": str(Path(source).resolve()),
        "source_hw": list(source_hw),
        "source_bytes": fp["source_bytes"],
        "source_sha256": fp["source_sha256"],
        "source_sha256_of": fp["hashed"],
        "level": level,
        "mpp": mpp,
        "threshold": threshold,
        "postprocess": postprocess,
        "gigamlx_version": gigamlx_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
