"""Whole-slide prediction: a trained model's tissue probabilities for every pixel of a slide.

Exact and tiled (the scheduler's `tiled_predict`), written tile by tile into an on-disk
OME-Zarr pyramid (uint8, round(255 p)); optionally also a pyramidal OME-TIFF and a PNG overlay.
Memory is bounded by the budget and a few chunks, whatever the slide size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gigamlx.backends import get_backend
from gigamlx.core.arrays import WindowArray
from gigamlx.core.checkpoint import STATE, CheckpointError, list_checkpoints, load_weights
from gigamlx.core.lock import hold_lock
from gigamlx.core.memory import parse_bytes, peak_rss_bytes
from gigamlx.core.outputs import (
    OutputError,
    check_not_input,
    check_output_file,
    check_output_folder,
    check_replaceable,
)
from gigamlx.infer.export import (
    MIN_LEVEL_SIDE_PX,
    ProbabilityMapWriter,
    open_probability_levels,
    write_ome_tiff,
    write_overlay,
    written_by_predict,
)
from gigamlx.slide.readers import open_slide
from gigamlx.slide.store import StoreError, open_store
from gigamlx.tiling.scheduler import tiled_predict

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (phase, done, total)
# suffixes stripped from a slide's file name to name its outputs
NAME_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif")


class PredictError(ValueError):
    """Input that `predict` cannot use; the message names the path and the fix."""


class SlideSource(NamedTuple):
    """A slide to predict: `levels` are (H, W, 3) uint8 array-likes, finest first."""

    path: Path
    name: str  # output stem
    levels: list
    mpp: float | None
    close: Callable[[], None]

    @property
    def image(self):
        return self.levels[0]


class OutputPaths(NamedTuple):
    zarr: Path
    tiff: Path | None
    overlay: Path | None


class PredictResult(NamedTuple):
    source: Path
    outputs: OutputPaths
    image_hw: tuple[int, int]
    seconds: float
    peak_rss_bytes: int


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
        return SlideSource(path, slide_name(path), levels, store.mpp, lambda: None)
    try:
        reader = open_slide(path)
    except ValueError as error:  # SlideFormatError names every backend's complaint
        raise PredictError(str(error)) from None
    levels = [reader_level(reader, n) for n in range(reader.level_count)]
    return SlideSource(path, slide_name(path), levels, reader.mpp, reader.close)


def load_model(checkpoint: str | os.PathLike, backend_name: str = "mlx", kernels: str = "auto"):
    """(backend, model) with the weights of a run folder, checkpoint folder or .safetensors.

    Raises:
        CheckpointError: missing, unreadable, or not GigaUNet-4492 weights (names and shapes).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: give a run folder or a .safetensors file")
    if path.is_dir() and not (path / STATE).exists() and not list_checkpoints(path):
        raise CheckpointError(
            f"{path} holds no checkpoint (no checkpoints/step_*/): give a run folder that has "
            "saved one, or a weights .safetensors file"
        )
    weights = load_weights(path)
    backend = get_backend(backend_name, kernels=kernels)
    model = backend.build_model(0)
    expected = {name: v.shape for name, v in backend.flat_params(model).items()}
    found = {name: tuple(v.shape) for name, v in weights.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(
            n for n in expected if found[n] != expected[n]
        )
        raise CheckpointError(
            f"{path} does not hold GigaUNet-4492 weights (names or shapes differ: {wrong[:4]})"
        )
    backend.load_params(model, weights)
    return backend, model


def output_paths(out_dir: Path, name: str, tiff: bool, overlay: bool) -> OutputPaths:
    """Where the outputs of slide `name` go in `out_dir`."""
    out_dir = Path(out_dir)
    return OutputPaths(
        out_dir / f"{name}.zarr",
        out_dir / f"{name}.ome.tif" if tiff else None,
        out_dir / f"{name}_overlay.png" if overlay else None,
    )


def check_outputs(
    slides: Sequence[Path],
    planned: Sequence[OutputPaths],
    overwrite: bool,
    checkpoint: Path | None = None,
):
    """Before any work: outputs must be distinct, not inputs, and new unless `overwrite`."""
    seen: dict[Path, Path] = {}
    for slide, paths in zip(slides, planned, strict=True):
        for path in (p for p in paths if p is not None):
            try:
                check_output_file(path)
                check_not_input(path, [Path(s) for s in slides] + [checkpoint], "output")
            except OutputError as error:
                raise PredictError(str(error)) from None
            if path in seen:
                raise PredictError(f"{seen[path]} and {slide} would both write {path}")
            seen[path] = Path(slide)
            check_replaceable(path, overwrite, written_by_predict, "prediction")


def predict_slide(
    backend: Any,
    model: Any,
    source: SlideSource,
    outputs: OutputPaths,
    budget_bytes: int | None = None,
    tile: int | None = None,
    progress: Progress | None = None,
    min_side_px: int = MIN_LEVEL_SIDE_PX,
) -> PredictResult:
    """Predict one slide into `outputs.zarr` (and the OME-TIFF and overlay when asked).

    Args:
        backend, model: the engine and a model with loaded weights.
        source: the slide, from `open_source`.
        outputs: where to write, from `output_paths`.
        budget_bytes: engine peak memory per tile; picks the tile size.
        tile: owned tile side px (multiple of 64), overriding `budget_bytes`.
        progress: callable(phase, done, total).
        min_side_px: the pyramid halves while the shorter side is at least this.
    """
    start = time.perf_counter()
    image_hw = tuple(source.image.shape[:2])
    with ProbabilityMapWriter(outputs.zarr, image_hw, source.mpp, min_side_px=min_side_px) as out:
        tiled_predict(backend, model, source.image, tile, budget_bytes, out.level0, progress)
        out.finish(progress)
    levels = open_probability_levels(outputs.zarr)  # the writer's arrays moved with the rename
    if outputs.tiff is not None:
        write_ome_tiff(levels, outputs.tiff, source.mpp, progress=progress)
    if outputs.overlay is not None:
        write_overlay(source.levels, levels, outputs.overlay)
    seconds = time.perf_counter() - start
    log.info("%s: %dx%d in %.1f s", source.path, *image_hw, seconds)
    return PredictResult(source.path, outputs, image_hw, seconds, peak_rss_bytes())


def predict_slides(
    checkpoint: str | os.PathLike,
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    memory_budget: str = "4GB",
    tiff: bool = False,
    overlay: bool = False,
    overwrite: bool = False,
    tile: int | None = None,
    on_slide: Callable[[SlideSource], Progress | None] | None = None,
    kernels: str = "auto",
) -> list[PredictResult]:
    """Predict every slide with the model of `checkpoint`; inputs are all checked first.

    Args:
        on_slide: called as each slide starts; returns that slide's progress callback.
        kernels: the mlx backend's model path ("auto", "fused" or "mlx").

    Raises:
        PredictError, CheckpointError, FileExistsError: bad input, before any output is written.
    """
    if not slides:
        raise PredictError("no slides given")
    if tile is not None and (tile <= 0 or tile % 64):
        raise PredictError(f"--tile must be a positive multiple of 64, got {tile}")
    budget_bytes = parse_bytes(memory_budget)
    check_output_folder(Path(out_dir))
    backend, model = load_model(checkpoint, kernels=kernels)
    sources = [open_source(s) for s in slides]
    out_dir, made_out_dir = Path(out_dir), not Path(out_dir).exists()
    try:
        with ExitStack() as held:
            planned = [output_paths(out_dir, s.name, tiff, overlay) for s in sources]
            for outputs in planned:  # held to the end: no other predict writes these
                held.enter_context(lock_output(outputs.zarr))
            check_outputs([s.path for s in sources], planned, overwrite, Path(checkpoint))
            return [
                predict_slide(
                    backend, model, source, outputs, budget_bytes, tile,
                    on_slide(source) if on_slide is not None else None,
                )
                for source, outputs in zip(sources, planned, strict=True)
            ]  # fmt: skip
    finally:
        for source in sources:
            source.close()
        if made_out_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an error before any output: leave nothing behind


def lock_output(zarr_path: Path):
    """The OS lock on one slide's outputs (its folder is made if missing)."""
    zarr_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = zarr_path.parent / f".{zarr_path.name}.lock"
    return hold_lock(lock_path, f"prediction output {zarr_path}")
