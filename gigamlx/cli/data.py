"""`gigamlx synth` and `ingest`: making and converting slides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gigamlx.cli.common import (
    SlideReader,
    app,
    err,
    hw_text,
    progress_bar,
    setup_logging,
    user_errors,
)
from gigamlx.runs.config import DEFAULT_CHUNK_PX, DEFAULT_SLIDE_HW, DEFAULTS, parse_region
from gigamlx.slide import OTSU_DEFINITION


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="store to create, e.g. slide.zarr")],
    size: Annotated[str, typer.Option(help="slide size HxW in pixels")] = "x".join(
        map(str, DEFAULT_SLIDE_HW)
    ),
    seed: Annotated[
        int, typer.Option(help="same seed and size give the same bytes")
    ] = DEFAULTS.seed,
    chunk: Annotated[int, typer.Option(help="chunk side in pixels")] = DEFAULT_CHUNK_PX,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store")] = False,
) -> None:
    """Make a reproducible H&E-like slide with its true tissue mask (OME-Zarr)."""
    from gigamlx.synth.slide import synth_slide

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
    slide: Annotated[
        Path, typer.Argument(help="OpenSlide format (.svs, .ndpi, .mrxs, ...) or TIFF/OME-TIFF")
    ],
    out: Annotated[Path, typer.Argument(help="store to create, e.g. slide.zarr")],
    level: Annotated[int, typer.Option(help="pyramid level of the slide to ingest")] = 0,
    mask: Annotated[
        Path | None,
        typer.Option(help="mask image (TIFF/PNG) on that level's grid; non-zero = tissue"),
    ] = None,
    geojson: Annotated[
        Path | None,
        typer.Option(help="GeoJSON annotations (QuPath export), level-0 pixel coordinates"),
    ] = None,
    tissue_class: Annotated[
        list[str] | None,
        typer.Option(
            help="with --geojson: a class that is tissue (repeat for several; 'unclassified' "
            "for annotations without a class). Default: every class except Ignore*. Ignore* "
            "areas are always cut out; lines and points are skipped.",
            show_default=False,
        ),
    ] = None,
    otsu: Annotated[
        bool,
        typer.Option(
            help=f"classical baseline as the mask: {OTSU_DEFINITION} (as eval --baseline otsu)"
        ),
    ] = False,
    chunk: Annotated[int, typer.Option(help="chunk side in pixels")] = DEFAULT_CHUNK_PX,
    reader: Annotated[
        SlideReader | None, typer.Option(help="force a slide reader", show_default=False)
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing store")] = False,
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
