"""The `gigamlx` command line: train, synth, ingest, info. Nothing imports this module."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler

from gigamlx.config import DEFAULTS, TrainConfig, help_of, parse_region

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train GigaUNet-4492 on whole gigapixel slide regions with exact gradients "
    "and a peak memory you choose.",
)
err = Console(stderr=True)
log = logging.getLogger("gigamlx")


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False, show_time=False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )


def _say_error(error: BaseException) -> None:
    """One line on stderr, never wrapped, never read as rich markup (paths have brackets)."""
    err.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)


@contextmanager
def _user_errors():
    """Known bad input ends the command with one line on stderr and exit code 2, no trace."""
    from gigamlx.slide.store import StoreError
    from gigamlx.train.checkpoint import CheckpointError
    from gigamlx.train.loop import Interrupted, TrainingError

    try:
        yield
    except Interrupted as stop:
        err.print(f"[yellow]interrupted[/]: {stop}. Continue with --resume.")
        raise typer.Exit(130) from None
    except TrainingError as error:
        _say_error(error)
        raise typer.Exit(1) from None
    except (ValueError, StoreError, CheckpointError, FileNotFoundError, FileExistsError) as error:
        _say_error(error)
        raise typer.Exit(2) from None


def _progress_bar(description: str):
    """A (callback, context) pair for chunk-by-chunk work like synth and ingest."""
    from rich.progress import Progress

    progress = Progress(console=err)
    task = progress.add_task(description, total=None, visible=False)

    def update(done: int, total: int) -> None:
        # shown from the first chunk on: work that turns out to be cached draws nothing
        progress.update(task, completed=done, total=total, visible=True)

    return update, progress


def _typed_options(ctx: typer.Context) -> dict:
    """TrainConfig fields the user typed on the command line (they override a resumed run)."""
    def typed_here(name: str) -> bool:
        # by name: typer may bring its own copy of click, with its own ParameterSource enum
        return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"

    fields = set(DEFAULTS.to_dict())
    typed = {name: v for name, v in ctx.params.items() if name in fields and typed_here(name)}
    if "data" in typed:
        typed["data"] = tuple(str(p) for p in typed["data"])
    return {name: str(v) if isinstance(v, Path) else v for name, v in typed.items()}


@app.command()
def train(
    ctx: typer.Context,
    data: list[Path] = typer.Argument(
        None, help="ingested slide stores (default: a synthetic slide)"
    ),
    region: str = typer.Option(DEFAULTS.region, help=help_of("region")),
    steps: int = typer.Option(DEFAULTS.steps, help=help_of("steps")),
    memory_budget: str = typer.Option(DEFAULTS.memory_budget, help=help_of("memory_budget")),
    loss: str = typer.Option(DEFAULTS.loss, help=help_of("loss")),
    lr: float = typer.Option(DEFAULTS.lr, help=help_of("lr")),
    seed: int = typer.Option(DEFAULTS.seed, help=help_of("seed")),
    out: Path = typer.Option(Path(DEFAULTS.out), help=help_of("out")),
    resume: bool = typer.Option(
        False,
        help="continue the run in --out from its newest checkpoint; options typed here "
        "(e.g. --steps, --accumulate) override the saved ones",
    ),
    checkpoint_every: int = typer.Option(
        DEFAULTS.checkpoint_every, help=help_of("checkpoint_every")
    ),
    accumulate: int = typer.Option(DEFAULTS.accumulate, help=help_of("accumulate")),
    augment: bool = typer.Option(DEFAULTS.augment, help=help_of("augment")),
    pad: bool = typer.Option(DEFAULTS.pad, help=help_of("pad")),
    tile: int = typer.Option(None, help=help_of("tile"), show_default=False),
    backend: str = typer.Option(DEFAULTS.backend, help=help_of("backend")),
    device: str = typer.Option(DEFAULTS.device, help=help_of("device")),
    profile: bool = typer.Option(False, help="print where the seconds of a step went"),
    rank_timeout: float = typer.Option(
        600.0, help="under mlx.launch: seconds a rank waits for the others before it stops"
    ),
    dump_weights: str = typer.Option(None, hidden=True, help="test hook: PATH with {rank}"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    verbose: bool = typer.Option(False, help="debug logging"),
) -> None:
    """Train on regions sampled from slides, one exact tiled step at a time.

    With no DATA, a synthetic 16384x65536 slide is generated once into ~/.cache/gigamlx
    (or $GIGAMLX_CACHE) and reused. Each step: a random region (flipped/rotated), exact loss
    and gradients over the whole region computed tile by tile within --memory-budget, one Adam
    update. Checkpoints go to OUT/checkpoints; metrics to OUT/metrics.jsonl; Ctrl-C saves.
    Under `mlx.launch -n N` each rank trains on its share of the regions of every step and
    the gradients are averaged (docs/distributed.md); rank 0 alone writes OUT.
    """
    from gigamlx.backends import get_backend
    from gigamlx.backends.base import WorldError
    from gigamlx.train.loop import TrainingError
    from gigamlx.train.loop import train as run_training
    from gigamlx.train.profile import print_profile
    from gigamlx.train.progress import train_progress
    from gigamlx.train.run import start_run

    _setup_logging(verbose)
    config = TrainConfig(
        data=tuple(str(p) for p in data or ()),
        region=region,
        steps=steps,
        memory_budget=memory_budget,
        loss=loss,
        lr=lr,
        seed=seed,
        out=str(out),
        checkpoint_every=checkpoint_every,
        accumulate=accumulate,
        augment=augment,
        pad=pad,
        tile=tile,
        backend=backend,
        device=device,
    )
    with _user_errors():
        if not resume:
            config.validate()
        try:  # under mlx.launch the ranks meet here
            world = get_backend(backend, device).world(rank_timeout)
        except WorldError as error:
            raise TrainingError(str(error)) from error
        main = world.is_main
        slide_bar, slide_progress = _progress_bar("making the default synthetic slide (once)")
        with slide_progress:
            overrides = _typed_options(ctx)
            run = start_run(config, resume, overrides, slide_progress=slide_bar, writes=main)
        if main:
            log.info(
                "run %s: steps %d..%d, region %s, budget %s, loss %s, %d rank(s)",
                run.run_dir,
                run.step,
                run.config.steps,
                run.config.region,
                run.config.memory_budget,
                run.config.loss,
                world.size,
            )
        bar_on = main and not quiet
        with train_progress(run.step, run.config.steps, enabled=bar_on, console=err) as bar:
            history = run_training(
                run, world, bar.on_step if main else None, bar.on_tile if main else None
            )
        if dump_weights:
            _dump_weights(run, dump_weights.format(rank=world.rank))
        if profile and main:
            print_profile(history, Console())
        if main:
            err.print(f"done: {run.step} steps; checkpoints in {run.run_dir / 'checkpoints'}")


def _dump_weights(run, path: str) -> None:
    """Test hook for data-parallel runs: this rank's final weights as .npz."""
    import numpy as np

    np.savez(path, **run.backend.flat_params(run.model))


@app.command()
def synth(
    out: Path = typer.Argument(..., help="store to create, e.g. slide.zarr"),
    size: str = typer.Option("16384x65536", help="slide size HxW in pixels"),
    seed: int = typer.Option(0, help="same seed and size give the same bytes"),
    chunk: int = typer.Option(1024, help="chunk side in pixels"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Make a reproducible H&E-like slide with its true tissue mask (OME-Zarr)."""
    from gigamlx.slide.synth import synth_slide

    _setup_logging(False)
    with _user_errors():
        size_hw = parse_region(size)
        update, progress = _progress_bar(f"synth {size_hw[0]}x{size_hw[1]}")
        with progress:
            path = synth_slide(
                out, size_hw, seed, chunk_px=chunk, progress=update, overwrite=overwrite
            )
    err.print(f"wrote {path}")


@app.command()
def ingest(
    slide: Path = typer.Argument(
        ..., help="OpenSlide format (.svs, .ndpi, .mrxs, ...) or TIFF/OME-TIFF"
    ),
    out: Path = typer.Argument(..., help="store to create, e.g. slide.zarr"),
    level: int = typer.Option(0, help="pyramid level of the slide to ingest"),
    mask: Path = typer.Option(
        None, help="mask image (TIFF/PNG) on that level's grid; non-zero = tissue"
    ),
    geojson: Path = typer.Option(
        None, help="GeoJSON polygons (QuPath export), level-0 coordinates"
    ),
    otsu: bool = typer.Option(False, help="classical Otsu-on-saturation tissue mask as the mask"),
    chunk: int = typer.Option(1024, help="chunk side in pixels"),
    reader: str = typer.Option(None, help="force 'openslide' or 'tifffile'", show_default=False),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Convert a slide (and its tissue mask) into OME-Zarr, chunk by chunk, atomically."""
    from gigamlx.slide.ingest import ingest as run_ingest

    _setup_logging(False)
    with _user_errors():
        update, progress = _progress_bar(f"ingest {slide.name}")
        with progress:
            path = run_ingest(
                slide, out, level, mask, geojson, otsu, chunk, update, reader, overwrite
            )
    err.print(f"wrote {path}")


@app.command()
def info() -> None:
    """Versions, engine, BLAS, memory and the model's geometry."""
    from gigamlx.info import collect_info

    for key, value in collect_info().items():
        typer.echo(f"{key:>22}: {value}")


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
    overwrite: bool = typer.Option(False, help="replace existing outputs"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    verbose: bool = typer.Option(False, help="debug logging"),
) -> None:
    """Tissue probability maps of whole slides: exact, tiled, within --memory-budget.

    Per slide, OUT/NAME.zarr holds round(255 p) as uint8 OME-Zarr with a multiscale pyramid
    (napari opens it). --tiff adds an OME-TIFF that QuPath and OpenSlide open; --overlay a PNG
    of the slide (longer side 2048 px) with tissue (p >= 0.5) tinted and outlined. Slides of
    any size: tiles go straight to disk, the pyramid is built chunk by chunk.
    """
    from gigamlx.train.predict import predict_slides

    _setup_logging(verbose)
    with _user_errors():
        _, progress = _progress_bar("predict")

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
            results = predict_slides(
                checkpoint, slides, out, memory_budget, tiff, overlay, overwrite, tile, on_slide
            )
        finally:
            if progress.live.is_started:
                progress.stop()
    for result in results:
        outputs = ", ".join(str(p) for p in result.outputs if p is not None)
        err.print(
            f"{result.source}: {result.image_hw[0]}x{result.image_hw[1]} in "
            f"{result.seconds:.1f} s, peak RSS {result.peak_rss_bytes / 1e9:.2f} GB -> {outputs}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


class _MasksCommand(typer.core.TyperCommand):
    """Lets `--masks M1 M2 ...` take several values after one flag."""

    def parse_args(self, ctx, args):
        from gigamlx.train.evaluate import expand_multi_value_option

        return super().parse_args(ctx, expand_multi_value_option(args, "--masks"))


@app.command("eval", cls=_MasksCommand)
def evaluate(
    preds: list[Path] = typer.Argument(..., metavar="PRED", help="probability maps"),
    masks: list[Path] = typer.Option(
        ..., "--masks", metavar="MASK", help="masks or slide stores, in PRED order"
    ),
    threshold: float = typer.Option(0.5, help="p >= threshold is tissue; in [0, 1]"),
    json_path: Path = typer.Option(None, "--json", help="also write the report as JSON here"),
    baseline: str = typer.Option(
        None, help="'otsu': also score Otsu on saturation (masks must be slide stores)"
    ),
    level: int = typer.Option(0, min=0, help="pyramid level both are read at"),
) -> None:
    """Streamed Dice, IoU, precision, recall and soft Dice of PRED... against --masks MASK...

    Predictions: OME-Zarr, zarr, TIFF/OME-TIFF or PNG, uint8 0-255 or float 0-1. Masks: the
    same (any non-zero value is tissue) or slide stores. Per-slide rows, then mean ± sample std.
    Both prediction and mask empty: Dice = IoU = precision = recall = 1. Nothing predicted
    but tissue in the mask (or the reverse): 0. Same as scripts/evaluate_dice.py.
    """
    from gigamlx.train.evaluate import run_evaluation

    _setup_logging(False)
    with _user_errors():
        run_evaluation(preds, masks, threshold, json_path, baseline, level)


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())


if __name__ == "__main__":  # python -m gigamlx.cli
    app()
