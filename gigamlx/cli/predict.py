"""`gigamlx predict`: probability maps of whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gigamlx.cli.common import (
    Kernels,
    app,
    err,
    progress_bar,
    setup_logging,
    user_errors,
)
from gigamlx.runs.config import DEFAULTS, POSTPROCESS, PostprocessConfig, help_of


def named_checkpoint(run_dir: Path, name: str) -> Path:
    """RUN/checkpoints/NAME, or a one-line error naming what exists."""
    from gigamlx.runs.checkpoint import CheckpointError

    path = Path(run_dir) / "checkpoints" / name
    if not path.is_dir():
        found = sorted(p.name for p in path.parent.glob("*") if not p.name.startswith("."))
        raise CheckpointError(
            f"{run_dir} has no checkpoint {name!r} (found: {', '.join(found) or 'none'}); "
            "--checkpoint best needs a run trained with validation"
        )
    return path


def is_model(path: Path) -> bool:
    """A weights file, or a folder a run or a checkpoint leaves (not a slide store)."""
    from gigamlx.runs.checkpoint import STATE

    if path.suffix == ".safetensors":
        return True
    return path.is_dir() and any((path / n).exists() for n in (STATE, "checkpoints", "config.json"))


def split_model(first: Path, rest: list[Path]) -> tuple[Path | str, list[Path]]:
    """(the model, the slides) of predict's arguments: the first names the model when it is
    `bundled`, a run, a checkpoint or weights (or is missing and slides follow); else every
    argument is a slide and the bundled model predicts."""
    from gigamlx.runs.bundled import BUNDLED, is_bundled

    if is_bundled(first):
        return BUNDLED, rest
    if is_model(first) or (rest and not first.exists()):
        if not rest:
            raise ValueError(f"no slides given after the model {first}")
        return first, rest
    return BUNDLED, [first, *rest]


def recorded_postprocess(ctx: typer.Context, checkpoint, typed: PostprocessConfig):
    """The post-processing the model records (the bundled model's card, or what the
    checkpoint's validation chose; else the defaults), with the settings typed here over it."""
    import dataclasses

    from gigamlx.infer.model import postprocess_for, trained_scale

    def typed_here(name: str) -> bool:
        return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"

    names = [f.name for f in dataclasses.fields(PostprocessConfig) if typed_here(f.name)]
    recorded = postprocess_for(trained_scale(checkpoint))
    return dataclasses.replace(recorded, **{name: getattr(typed, name) for name in names})


@app.command()
def predict(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="run folder (its newest checkpoint), checkpoint folder, weights .safetensors "
            "or `bundled`; leave it out (give slides only) to use the bundled model",
            metavar="model",
        ),
    ],
    out: Annotated[Path, typer.Option(help="output folder: NAME.zarr per slide (and the extras)")],
    slides: Annotated[
        list[Path] | None,
        typer.Argument(
            help="ingested slide stores (.zarr) or slide files (OpenSlide formats, TIFF)",
            show_default=False,
        ),
    ] = None,
    memory_budget: Annotated[
        str, typer.Option(help=help_of("memory_budget"))
    ] = DEFAULTS.memory_budget,
    tile: Annotated[int | None, typer.Option(help=help_of("tile"), show_default=False)] = None,
    tiff: Annotated[bool, typer.Option(help="also NAME.ome.tif: tiled pyramidal OME-TIFF")] = False,
    overlay: Annotated[
        bool, typer.Option(help="also NAME_overlay.png: thumbnail, tissue outlined")
    ] = False,
    geojson: Annotated[
        bool,
        typer.Option(help="also NAME.geojson: tissue (p >= --threshold) as a QuPath annotation"),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="p >= threshold is tissue (overlay, GeoJSON); default: the threshold the "
            "checkpoint's validation chose (recorded in it; the bundled model's card), else 0.5",
            show_default=False,
        ),
    ] = None,
    level: Annotated[
        int | None,
        typer.Option(
            help="slide level to read; default: the level matching the µm/px the checkpoint "
            "was trained at (within 10%)",
            show_default=False,
        ),
    ] = None,
    postprocess: Annotated[
        bool,
        typer.Option(
            help="write the tissue mask NAME.zarr/labels/tissue (the map at the threshold, "
            "post-processed) and draw the overlay, OME-TIFF and GeoJSON from it; "
            "--no-postprocess: they show the map at the threshold"
        ),
    ] = True,
    fill_holes_um2: Annotated[
        float, typer.Option(help=help_of("fill_holes_um2", PostprocessConfig))
    ] = POSTPROCESS.fill_holes_um2,
    min_object_um2: Annotated[
        float, typer.Option(help=help_of("min_object_um2", PostprocessConfig))
    ] = POSTPROCESS.min_object_um2,
    closing_um: Annotated[
        float, typer.Option(help=help_of("closing_um", PostprocessConfig))
    ] = POSTPROCESS.closing_um,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    kernels: Annotated[Kernels, typer.Option(help=help_of("kernels"))] = DEFAULTS.kernels,
    which: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="which checkpoint of the run folder: best (by validation Dice) or "
            "step_NNNNNNN; default the newest",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    verbose: Annotated[bool, typer.Option(help="debug logging")] = False,
) -> None:
    """Tissue probability maps of whole slides: exact, tiled, within --memory-budget.

    With slides only (`gigamlx predict SLIDE --out P`) the model that ships with gigamlx
    predicts, with its card's threshold and post-processing (`gigamlx info --model bundled`).

    Per slide, OUT/NAME.zarr holds round(255 p) as uint8 OME-Zarr with a multiscale pyramid
    (napari opens it), at the slide level matching the checkpoint's training resolution, with
    its µm/px and provenance, and the tissue mask as the NGFF label image labels/tissue:
    p >= threshold, holes inside tissue filled up to --fill-holes-um2 (unless typed: the
    limit the checkpoint's validation chose), pieces below --min-object-um2 dropped
    (docs/postprocessing.md). --tiff adds an OME-TIFF that QuPath
    and OpenSlide open; --overlay a PNG of the slide (longer side 2048 px) with tissue tinted
    and outlined; --geojson the tissue outline as a QuPath annotation in level-0 pixel
    coordinates (these three show the tissue mask; with --no-postprocess, the map). Slides
    of any size: tiles go straight to disk, the pyramid is built chunk by chunk.
    """
    from gigamlx.infer.predict import PredictOptions, predict_slides
    from gigamlx.runs.bundled import describe, is_bundled, read_card

    setup_logging(verbose)
    with user_errors():
        checkpoint, slides = split_model(checkpoint, slides or [])
        post = PostprocessConfig(fill_holes_um2, min_object_um2, closing_um)
        if is_bundled(checkpoint):
            if which:
                raise ValueError("--checkpoint picks a checkpoint of a run; give the run folder")
            err.print(f"model: {describe(read_card())}", soft_wrap=True, markup=False)
        elif which:
            checkpoint = named_checkpoint(checkpoint, which)
        post = recorded_postprocess(ctx, checkpoint, post)
        _, progress = progress_bar("predict")

        def on_slide(source):
            def update(phase: str, done: int, total: int) -> None:
                description = f"{source.name}: {phase}"
                progress.update(progress.task_ids[0], description=description, total=total)
                progress.update(progress.task_ids[0], completed=done)

            if quiet:
                return None
            progress.start()  # only once the inputs are checked: errors come without a bar
            return update

        try:
            options = PredictOptions(
                memory_budget=memory_budget,
                tiff=tiff,
                overlay=overlay,
                geojson=geojson,
                overwrite=overwrite,
                tile=tile,
                threshold=threshold,
                level=level,
                kernels=kernels,
                postprocess=post if postprocess else None,
            )
            results = predict_slides(checkpoint, slides, out, options, on_slide)
        finally:
            if progress.live.is_started:
                progress.stop()
    for result in results:
        outputs = ", ".join(str(p) for p in result.outputs if p is not None)
        mpp = f" at {result.mpp:.4g} µm/px" if result.mpp else ""
        post = result.postprocess or {}
        mask = " (labels/tissue, post-processed)" if post.get("applied") else ""
        err.print(
            f"{result.source}: level {result.level}, {result.image_hw[0]}x{result.image_hw[1]} "
            f"px (HxW){mpp} in {result.seconds:.1f} s, peak RSS "
            f"{result.peak_rss_bytes / 1e9:.2f} GB, tissue at p >= {result.threshold:g}{mask} "
            f"-> {outputs}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
