"""`gigamlx predict` and `gigamlx eval`: probability maps of whole slides, and their Dice."""

from __future__ import annotations

from pathlib import Path

import typer

from gigamlx.cli.common import (
    app,
    err,
    progress_bar,
    setup_logging,
    stdout_errors,
    user_errors,
)
from gigamlx.core.config import DEFAULT_THRESHOLD, DEFAULTS, help_of
from gigamlx.slide import OTSU_DEFINITION


def named_checkpoint(run_dir: Path, name: str) -> Path:
    """RUN/checkpoints/NAME, or a one-line error naming what exists."""
    from gigamlx.core.checkpoint import CheckpointError

    path = Path(run_dir) / "checkpoints" / name
    if not path.is_dir():
        found = sorted(p.name for p in path.parent.glob("*") if not p.name.startswith("."))
        raise CheckpointError(
            f"{run_dir} has no checkpoint {name!r} (found: {', '.join(found) or 'none'}); "
            "--checkpoint best needs a run trained with validation"
        )
    return path


@app.command()
def predict(
    checkpoint: Path = typer.Argument(
        ..., help="run folder (its newest checkpoint), checkpoint folder or weights .safetensors"
    ),
    slides: list[Path] = typer.Argument(
        ..., help="ingested slide stores (.zarr) or slide files (OpenSlide formats, TIFF)"
    ),
    out: Path = typer.Option(..., help="output folder: NAME.zarr per slide (and the extras)"),
    memory_budget: str = typer.Option(DEFAULTS.memory_budget, help=help_of("memory_budget")),
    tile: int = typer.Option(None, help=help_of("tile"), show_default=False),
    tiff: bool = typer.Option(False, help="also NAME.ome.tif: tiled pyramidal OME-TIFF"),
    overlay: bool = typer.Option(False, help="also NAME_overlay.png: thumbnail, tissue outlined"),
    geojson: bool = typer.Option(
        False, help="also NAME.geojson: tissue (p >= --threshold) as a QuPath annotation"
    ),
    threshold: float = typer.Option(
        None,
        help="p >= threshold is tissue (overlay, GeoJSON); default: the threshold the "
        "checkpoint's validation chose (recorded in it), else 0.5",
        show_default=False,
    ),
    level: int = typer.Option(
        None,
        help="slide level to read; default: the level matching the µm/px the checkpoint "
        "was trained at (within 10%)",
        show_default=False,
    ),
    overwrite: bool = typer.Option(False, help="replace existing outputs"),
    kernels: str = typer.Option(DEFAULTS.kernels, help=help_of("kernels")),
    which: str = typer.Option(
        None,
        "--checkpoint",
        help="which checkpoint of the run folder: best (by validation Dice) or step_NNNNNNN; "
        "default the newest",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, help="no progress bar"),
    verbose: bool = typer.Option(False, help="debug logging"),
) -> None:
    """Tissue probability maps of whole slides: exact, tiled, within --memory-budget.

    Per slide, OUT/NAME.zarr holds round(255 p) as uint8 OME-Zarr with a multiscale pyramid
    (napari opens it), at the slide level matching the checkpoint's training resolution, with
    its µm/px and provenance. --tiff adds an OME-TIFF that QuPath and OpenSlide open;
    --overlay a PNG of the slide (longer side 2048 px) with tissue tinted and outlined;
    --geojson the tissue outline as a QuPath annotation in level-0 pixel coordinates. Slides
    of any size: tiles go straight to disk, the pyramid is built chunk by chunk.
    """
    from gigamlx.infer.predict import PredictOptions, predict_slides

    setup_logging(verbose)
    with user_errors():
        if which:
            checkpoint = named_checkpoint(checkpoint, which)
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
                memory_budget, tiff, overlay, geojson, overwrite, tile, threshold, level, kernels
            )
            results = predict_slides(checkpoint, slides, out, options, on_slide)
        finally:
            if progress.live.is_started:
                progress.stop()
    for result in results:
        outputs = ", ".join(str(p) for p in result.outputs if p is not None)
        mpp = f" at {result.mpp:.4g} µm/px" if result.mpp else ""
        err.print(
            f"{result.source}: level {result.level}, {result.image_hw[0]}x{result.image_hw[1]} "
            f"px (HxW){mpp} in {result.seconds:.1f} s, peak RSS "
            f"{result.peak_rss_bytes / 1e9:.2f} GB, tissue at p >= {result.threshold:g} "
            f"-> {outputs}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


class MasksCommand(typer.core.TyperCommand):
    """Lets `--masks M1 M2 ...` take several values after one flag."""

    def parse_args(self, ctx, args):
        from gigamlx.eval.report import expand_multi_value_option

        return super().parse_args(ctx, expand_multi_value_option(args, "--masks"))


@app.command("eval", cls=MasksCommand)
def evaluate(
    preds: list[Path] = typer.Argument(..., metavar="PRED", help="probability maps"),
    masks: list[Path] = typer.Option(
        ..., "--masks", metavar="MASK", help="masks or slide stores, in PRED order"
    ),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="p >= threshold is tissue; in [0, 1]"),
    json_path: str = typer.Option(
        None, "--json", help="also write the report as JSON to this file ('-': stdout)"
    ),
    baseline: str = typer.Option(
        None,
        help=f"'otsu': also score the classical baseline ({OTSU_DEFINITION}; the same as "
        "ingest --otsu); masks must be slide stores",
    ),
    level: int = typer.Option(0, min=0, help="pyramid level both are read at"),
    pred_scale: str = typer.Option(
        "auto",
        help="uint8 predictions: '255' = round(255 p), '1' = a 0/1 map, 'auto' = 0/1 when "
        "the values are only 0 and 1 (said on stderr)",
    ),
) -> None:
    """Streamed Dice, IoU, precision, recall and soft Dice of PRED... against --masks MASK...

    Predictions: OME-Zarr, zarr, TIFF/OME-TIFF or PNG, uint8 0-255 (0/1: see --pred-scale) or
    float 0-1. Masks: the same (any non-zero value is tissue) or slide stores. Per-slide rows,
    then mean ± sample std.
    Both prediction and mask empty: Dice = IoU = precision = recall = 1. Nothing predicted
    but tissue in the mask (or the reverse): 0. scripts/evaluate_dice.py runs this command.
    """
    from gigamlx.eval.report import run_evaluation

    setup_logging(False)
    with user_errors(), stdout_errors():
        report = run_evaluation(
            preds, masks, threshold, json_path, baseline, level, pred_scale=pred_scale
        )
    for slide in report.slides:
        if slide.note:
            err.print(f"note: {slide.note}", soft_wrap=True, markup=False, highlight=False)
