"""Whole-slide prediction: a trained model's tissue probabilities for every pixel of a slide.

Exact and tiled (the scheduler's `tiled_predict`), written tile by tile into an on-disk
OME-Zarr pyramid (uint8, round(255 p)) at the slide level matching the resolution the model
was trained at; optionally a pyramidal OME-TIFF, a PNG overlay and QuPath GeoJSON. Every
output carries µm per pixel and provenance. Memory is bounded by the budget and a few chunks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

from gigamlx.core.memory import parse_bytes, peak_rss_bytes
from gigamlx.core.normalise import InputNorm, slide_norm
from gigamlx.core.progress import Progress
from gigamlx.infer.annotations import (
    prediction_features,
    threshold_u8,
    write_geojson,
)
from gigamlx.infer.export import (
    CHUNK_PX,
    MIN_LEVEL_SIDE_PX,
    ProbabilityMapWriter,
    open_probability_levels,
    write_ome_tiff,
    write_overlay,
    written_by_predict,
)
from gigamlx.infer.model import (
    RECORDED,
    cut_of,
    load_model,
    model_path,
    postprocess_for,
    trained_scale,
)
from gigamlx.infer.postprocess import (
    open_tissue_label,
    postprocess_record,
    write_tissue_label,
)
from gigamlx.infer.provenance import provenance
from gigamlx.infer.sources import (
    PredictError,
    SlideSource,
    choose_level,
    open_source,
    slide_name,
)
from gigamlx.runs.bundled import is_bundled, provenance_record, read_card
from gigamlx.runs.config import (
    DEFAULT_KERNELS,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_THRESHOLD,
    POSTPROCESS,
    PostprocessConfig,
)
from gigamlx.runs.lock import hold_lock
from gigamlx.runs.outputs import (
    OutputError,
    check_not_input,
    check_output_file,
    check_output_folder,
    check_replaceable,
)
from gigamlx.tiling.scheduler import tiled_predict

log = logging.getLogger(__name__)

__all__ = ["PredictError", "SlideSource", "open_source", "slide_name"]


class OutputPaths(NamedTuple):
    zarr: Path
    tiff: Path | None
    overlay: Path | None
    geojson: Path | None = None


class PredictResult(NamedTuple):
    source: Path
    outputs: OutputPaths
    image_hw: tuple[int, int]  # (H, W) predicted: the pixels of the level read
    seconds: float
    peak_rss_bytes: int
    level: int = 0
    mpp: float | None = None
    threshold: float = DEFAULT_THRESHOLD  # the cut of the map before post-processing
    postprocess: dict | None = None  # `postprocess_record`: applied or why not


def output_paths(
    out_dir: Path, name: str, tiff: bool, overlay: bool, geojson: bool = False
) -> OutputPaths:
    """Where the outputs of slide `name` go in `out_dir`."""
    out_dir = Path(out_dir)
    return OutputPaths(
        out_dir / f"{name}.zarr",
        out_dir / f"{name}.ome.tif" if tiff else None,
        out_dir / f"{name}_overlay.png" if overlay else None,
        out_dir / f"{name}.geojson" if geojson else None,
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
    level: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    meta: dict | None = None,
    normalize: bool = False,
    postprocess: PostprocessConfig | None = POSTPROCESS,
) -> PredictResult:
    """Predict level `level` of one slide into `outputs.zarr` (and the extras asked for).

    Args:
        backend, model: the engine and a model with loaded weights.
        source: the slide, from `open_source`.
        outputs: where to write, from `output_paths`.
        budget_bytes: engine peak memory per tile; picks the tile size.
        tile: owned tile side px (multiple of 64), overriding `budget_bytes`.
        progress: callable(phase, done, total).
        min_side_px: the pyramid halves while the shorter side is at least this.
        level: the slide's pyramid level to predict (see `choose_level`).
        threshold: p >= threshold is tissue (before post-processing).
        meta: provenance (`provenance.provenance`); built without a checkpoint if None.
        normalize: standardise the input by this slide's statistics (`TrainedScale.normalize`:
            what the model was trained with).
        postprocess: the tissue mask's post-processing, written as `labels/tissue` and drawn
            in the overlay, OME-TIFF and GeoJSON; None: off (they show the map at the cut).
    """
    start = time.perf_counter()
    image = source.levels[level]
    model.input_norm = slide_norm(image) if normalize else InputNorm()
    image_hw, mpp = tuple(image.shape[:2]), source.level_mpp(level)
    record = postprocess_record(postprocess, mpp, threshold)
    if postprocess is not None and not record["applied"]:
        log.warning("%s: no tissue-mask post-processing: %s", source.path, record["reason"])
    if meta is None:
        meta = provenance(
            checkpoint=None,
            step=None,
            source=source.path,
            source_hw=source.level_hws[0],
            level=level,
            mpp=mpp,
            threshold=threshold,
        )
    meta = meta | {"postprocess": record}
    cut = threshold_u8(threshold)

    def tissue_label(group, levels) -> None:
        write_tissue_label(group, levels, cut, mpp, postprocess, record, CHUNK_PX, progress)

    with ProbabilityMapWriter(
        outputs.zarr, image_hw, mpp, min_side_px=min_side_px, provenance=meta
    ) as out:
        tiled_predict(backend, model, image, tile, budget_bytes, out.level0, progress)
        out.finish(progress, tissue_label if record["applied"] else None)
    _write_extras(source, level, outputs, meta, threshold, progress)
    seconds = time.perf_counter() - start
    log.info("%s: level %d, %dx%d (HxW) px in %.1f s", source.path, level, *image_hw, seconds)
    rss = peak_rss_bytes()
    return PredictResult(
        source=source.path,
        outputs=outputs,
        image_hw=image_hw,
        seconds=seconds,
        peak_rss_bytes=rss,
        level=level,
        mpp=mpp,
        threshold=threshold,
        postprocess=record,
    )


def _write_extras(source, level: int, outputs: OutputPaths, meta: dict, threshold: float, progress):
    """The OME-TIFF, overlay and GeoJSON: of `labels/tissue` when the store has it, else of
    the probability map cut at `threshold`."""
    mask = open_tissue_label(outputs.zarr)  # the writer's arrays moved with the rename
    levels = mask or open_probability_levels(outputs.zarr)
    cut = 1 if mask else threshold_u8(threshold)
    if outputs.tiff is not None:
        name = "tissue mask" if mask else "tissue probability"
        mpp = source.level_mpp(level)
        write_ome_tiff(levels, outputs.tiff, mpp, progress=progress, provenance=meta, name=name)
    if outputs.overlay is not None:
        write_overlay(source.levels[level:], levels, outputs.overlay, threshold_u8=cut, meta=meta)
    if outputs.geojson is not None:
        hw0 = source.level_hws[0]
        features = prediction_features(levels, threshold, hw0, meta, cut_u8=cut)
        write_geojson(features, outputs.geojson)


class PredictOptions(NamedTuple):
    """What `gigamlx predict` was asked for, beyond the checkpoint and slides."""

    memory_budget: str = DEFAULT_MEMORY_BUDGET
    tiff: bool = False
    overlay: bool = False
    geojson: bool = False
    overwrite: bool = False
    tile: int | None = None
    threshold: float | None = None  # None: the checkpoint's chosen threshold, else 0.5
    level: int | None = None  # None: the level matching the checkpoint's training resolution
    kernels: str = DEFAULT_KERNELS  # the mlx backend's model path ("auto", "fused" or "mlx")
    # RECORDED: the checkpoint's (else the defaults); None: --no-postprocess
    postprocess: PostprocessConfig | str | None = RECORDED


def predict_slides(
    checkpoint: str | os.PathLike,
    slides: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: PredictOptions | None = None,
    on_slide: Callable[[SlideSource], Progress | None] | None = None,
    **fields,
) -> list[PredictResult]:
    """Predict every slide with the model of `checkpoint`; inputs are all checked first.

    Args:
        options: what to write and how (or give its fields as keywords: overlay=True).
        on_slide: called as each slide starts; returns that slide's progress callback.
        kernels: the mlx backend's model path ("auto", "fused" or "mlx").

    Raises:
        PredictError, CheckpointError, FileExistsError: bad input, before any output is written.
    """
    o = options or PredictOptions(**fields)
    if not slides:
        raise PredictError("no slides given")
    if o.tile is not None and (o.tile <= 0 or o.tile % 64):
        raise PredictError(f"--tile must be a positive multiple of 64, got {o.tile}")
    if o.threshold is not None and not 0 < o.threshold <= 1:
        raise PredictError(f"--threshold must be in (0, 1], got {o.threshold}")
    scale = trained_scale(checkpoint)
    if o.postprocess == RECORDED:
        o = o._replace(postprocess=postprocess_for(scale))
    if o.postprocess is not None:
        try:
            o.postprocess.validate()
        except ValueError as error:
            raise PredictError(str(error)) from None
    budget_bytes = parse_bytes(o.memory_budget)
    check_output_folder(Path(out_dir))
    backend, model = load_model(checkpoint, kernels=o.kernels)
    o = o._replace(threshold=cut_of(o.threshold, scale))
    sources = [open_source(s) for s in slides]
    out_dir, made_out_dir = Path(out_dir), not Path(out_dir).exists()
    try:
        levels = [choose_level(s, scale.mpp, scale.level, o.level) for s in sources]
        with ExitStack() as held:
            planned = [output_paths(out_dir, s.name, o.tiff, o.overlay, o.geojson) for s in sources]
            for outputs in planned:  # held to the end: no other predict writes these
                held.enter_context(lock_output(outputs.zarr))
            check_outputs([s.path for s in sources], planned, o.overwrite, model_path(checkpoint))
            return [
                _predict_one(
                    backend=backend,
                    model=model,
                    source=source,
                    outputs=outputs,
                    level=level,
                    checkpoint=checkpoint,
                    scale=scale,
                    options=o,
                    budget_bytes=budget_bytes,
                    on_slide=on_slide,
                )
                for source, outputs, level in zip(sources, planned, levels, strict=True)
            ]
    finally:
        for source in sources:
            source.close()
        if made_out_dir and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # an error before any output: leave nothing behind


def _predict_one(
    *, backend, model, source, outputs, level, checkpoint, scale, options, budget_bytes, on_slide
) -> PredictResult:
    """One slide of `predict_slides`, with its provenance."""
    o = options
    meta = provenance(
        checkpoint=model_path(checkpoint),
        model=provenance_record(read_card()) if is_bundled(checkpoint) else None,
        step=scale.step,
        source=source.path,
        source_hw=source.level_hws[0],
        level=level,
        mpp=source.level_mpp(level),
        threshold=o.threshold,
    )
    progress = on_slide(source) if on_slide is not None else None
    return predict_slide(
        backend,
        model,
        source,
        outputs,
        budget_bytes=budget_bytes,
        tile=o.tile,
        progress=progress,
        level=level,
        threshold=o.threshold,
        meta=meta,
        normalize=scale.normalize,
        postprocess=o.postprocess,
    )


def lock_output(zarr_path: Path):
    """The OS lock on one slide's outputs (its folder is made if missing)."""
    zarr_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = zarr_path.parent / f".{zarr_path.name}.lock"
    return hold_lock(lock_path, f"prediction output {zarr_path}")
