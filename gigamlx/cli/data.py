"""`gigamlx synth`, `ingest` and `info`: making and converting slides, and what is installed."""

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
from gigamlx.core.config import parse_region


@app.command()
def synth(
    out: Path = typer.Argument(..., help="store to create, e.g. slide.zarr"),
    size: str = typer.Option("16384x65536", help="slide size HxW in pixels"),
    seed: int = typer.Option(0, help="same seed and size give the same bytes"),
    chunk: int = typer.Option(1024, help="chunk side in pixels"),
    overwrite: bool = typer.Option(False, help="replace an existing store"),
) -> None:
    """Make a reproducible H&E-like slide with its true tissue mask (OME-Zarr)."""
    from gigamlx.synth.render import synth_slide

    setup_logging(False)
    with user_errors():
        size_hw = parse_region(size)
        update, progress = progress_bar(f"synth {size_hw[0]}x{size_hw[1]}")
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

    setup_logging(False)
    with user_errors():
        update, progress = progress_bar(f"ingest {slide.name}")
        with progress:
            path = run_ingest(
                slide, out, level, mask, geojson, otsu, chunk, update, reader, overwrite
            )
    err.print(f"wrote {path}")


@app.command()
def info() -> None:
    """Versions, engine, BLAS, memory and the model's geometry."""
    from gigamlx.cli.info import collect_info

    with stdout_errors():
        for key, value in collect_info().items():
            typer.echo(f"{key:>22}: {value}")
