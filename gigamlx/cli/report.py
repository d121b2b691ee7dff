"""`gigamlx report`: one self-contained HTML page of a training run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gigamlx.cli.common import app, err, setup_logging, user_errors


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="run folder: the --out of gigamlx train")],
    out: Annotated[
        Path | None, typer.Option(help="HTML file to write  [default: RUN/report.html]")
    ] = None,
) -> None:
    """One HTML page of a run: its curves, configuration and validation overlays.

    Loss, Dice (training, validation and Otsu on the same pixels), learning rate, seconds per
    step and peak memory against step; config.json as a table; RUN/val/*_overlay.png. One
    self-contained file (inline SVG and PNG, no scripts, nothing fetched): open it offline,
    mail it, print it. Runs without validation or still training are reported as they are.
    """
    from gigamlx.report.page import write_report

    setup_logging(False)
    with user_errors():
        path = write_report(run, out)
    size_kb = path.stat().st_size / 1e3
    err.print(f"wrote {path} ({size_kb:,.0f} kB)", soft_wrap=True, markup=False, highlight=False)
