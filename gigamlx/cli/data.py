"""`gigamlx synth`, `ingest` and `info`: making and converting slides, and what is installed."""

from __future__ import annotations

from pathlib import Path

import typer

from gigamlx.cli.common import (
    SIZE_CONVENTION,
    app,
    err,
    hw_text,
    progress_bar,
    setup_logging,
    stdout_errors,
    user_errors,
)
from gigamlx.core.config import DEFAULT_CHUNK_PX, DEFAULT_SLIDE_HW, DEFAULTS, parse_region
from gigamlx.slide import OTSU_DEFINITION


@app.command()
def synth(
    out: Path = typer.Argument(..., help="store to create, e.g. slide.zarr"),
    size: str = typer.Option("x".join(map(str, DEFAULT_SLIDE_HW)), help="slide size HxW in pixels"),
    seed: int = typer.Option(DEFAULTS.seed, help="same seed and size give the same bytes"),
    chunk: int = typer.Option(DEFAULT_CHUNK_PX, help="chunk side in pixels"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Make a reproducible H&E-like slide with its true tissue mask (OME-Zarr)."""
    from gigamlx.synth.render import synth_slide

    setup_logging(False)
    with user_errors():
        size_hw = parse_region(size)
        update, progress = progress_bar(f"synth {size_hw[0]}x{size_hw[1]} (HxW)")
        with progress:
            path = synth_slide(
                out, size_hw, seed, chunk_px=chunk, progress=update, overwrite=overwrite
            )
    _say_store(path)


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
        None, help="GeoJSON annotations (QuPath export), level-0 pixel coordinates"
    ),
    tissue_class: list[str] = typer.Option(
        None,
        help="with --geojson: a class that is tissue (repeat for several; 'unclassified' for "
        "annotations without a class). Default: every class except Ignore*. Ignore* areas are "
        "always cut out; lines and points are skipped.",
        show_default=False,
    ),
    otsu: bool = typer.Option(
        False, help=f"classical baseline as the mask: {OTSU_DEFINITION} (as eval --baseline otsu)"
    ),
    chunk: int = typer.Option(DEFAULT_CHUNK_PX, help="chunk side in pixels"),
    reader: str = typer.Option(None, help="force 'openslide' or 'tifffile'", show_default=False),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Convert a slide (and its tissue mask) into OME-Zarr, chunk by chunk, atomically."""
    from gigamlx.slide.ingest import ingest as run_ingest

    setup_logging(False)
    with user_errors():
        update, progress = progress_bar(f"ingest {slide.name}")
        with progress:
            path = run_ingest(
                slide,
                out,
                level,
                mask,
                geojson,
                otsu,
                chunk,
                update,
                reader,
                overwrite,
                tissue_classes=tissue_class or None,
            )
    _say_store(path)


def _say_store(path: Path) -> None:
    """'wrote PATH: 3 levels, 600x1100 px (HxW) at 0.5 µm/px'."""
    from gigamlx.slide.store import open_store

    store = open_store(path)
    mpp = f" at {store.mpp:.4g} µm/px" if store.mpp else ", no pixel size"
    mask = "with" if store.mask is not None else "without"
    err.print(
        f"wrote {path}: {store.level_count} level{'s' * (store.level_count > 1)}, "
        f"{hw_text(store.image_hw)}{mpp}, "
        f"{mask} tissue mask",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


@app.command()
def info(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
) -> None:
    """Versions, engine, BLAS, memory and the model's geometry."""
    import json

    from gigamlx.cli.info import collect_info

    facts = collect_info() | {"size convention": SIZE_CONVENTION}
    with stdout_errors():
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:>22}: {value}")
