"""What a model's remaining Dice is made of, on synthetic slides.

Each wrong pixel of each prediction is attributed to what the synthetic scene drew there —
fat, a loose margin, glass the tissue encloses, faint stain, a pen stroke, dust, a bubble's
rim, or nothing special —
and split into "at the boundary" (within --edge-px of the true tissue edge) and "away". Costs
are shares of Dice pooled over the slides and add up to one minus the pooled Dice. A second
table gives the error rate by distance to the boundary (is the predicted edge shifted, or only
noisy?).

Usage:
    gigamlx predict RUN --checkpoint best val-*.zarr --out preds
    python scripts/error_anatomy.py preds/val-0-*.zarr preds/val-1-*.zarr \\
        --slides val-0-*.zarr val-1-*.zarr --threshold 0.5 --json anatomy.json

Predictions and slides pair up in order. Run it on validation slides when choosing a recipe;
the held-out slides only score the recipe chosen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gigamlx.eval.anatomy import PROFILE_PX, Anatomy, slide_anatomy
from gigamlx.eval.metrics import EvaluationError
from gigamlx.eval.slides import expand_multi_value_option
from gigamlx.runs.config import DEFAULT_THRESHOLD


def anatomy_tables(total: Anatomy) -> tuple[Table, Table]:
    """The errors by cause, and the error rate by distance to the boundary."""
    causes = Table(title=f"Errors by cause (pooled Dice {total.dice:.4f})")
    for name in ("where", "at the boundary px", "away px", "Dice cost"):
        causes.add_column(name, justify="left" if name == "where" else "right")
    rows = sorted(total.errors.items(), key=lambda kv: -sum(kv[1]))
    for name, (near, away) in rows:
        causes.add_row(name, f"{near:,}", f"{away:,}", f"{total.cost(near + away):.4f}")
    near = sum(n for n, _ in total.errors.values())
    away = sum(a for _, a in total.errors.values())
    causes.add_row(
        "all", f"{near:,}", f"{away:,}", f"{total.cost(near + away):.4f}", end_section=True
    )
    causes.caption = (
        f"at the boundary: within {total.edge_px} px of the true tissue edge; Dice cost: "
        "pixels / (tissue px + predicted px), so the costs add up to 1 - Dice"
    )
    profile = Table(title="Error rate by distance to the true boundary")
    profile.add_column("px from the edge", justify="right")
    profile.add_column("pixels", justify="right")
    profile.add_column("wrong", justify="right")
    for d, (n, wrong) in sorted(total.profile.items()):
        side = "glass" if d >= 0 else "tissue"
        rate = f"{wrong / n:.3f}" if n else "—"
        profile.add_row(f"{d:+d} ({side})", f"{n:,}", rate)
    profile.caption = "0 is the first glass pixel outside the tissue, -1 the first tissue pixel"
    return causes, profile


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    preds: Annotated[list[Path], typer.Argument(help="probability maps (gigamlx predict)")],
    slides: Annotated[
        list[Path],
        typer.Option("--slides", help="the synthetic slide stores they predict, in order"),
    ],
    threshold: Annotated[float, typer.Option(help="p >= threshold is tissue")] = DEFAULT_THRESHOLD,
    edge_px: Annotated[
        int, typer.Option(help=f"'at the boundary' within this many px (0-{PROFILE_PX})")
    ] = 4,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the result here")] = None,
) -> None:
    """Attribute each wrong pixel to what the synthetic scene drew there."""
    console = Console(width=100)
    if len(preds) != len(slides):
        console.print(
            f"[red]error:[/red] {len(preds)} prediction(s) but {len(slides)} slide(s); "
            "give one --slides store per prediction, in the same order"
        )
        raise typer.Exit(2)
    total, per_slide = Anatomy(edge_px), {}
    try:
        for pred, slide in zip(preds, slides, strict=True):
            one = slide_anatomy(pred, slide, threshold, edge_px)
            per_slide[slide.name] = one.dice
            console.print(f"{slide.name}: Dice {one.dice:.4f}")
            total.add(one)
    except EvaluationError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    for table in anatomy_tables(total):
        console.print(table)
    if json_path is not None:
        result = total.to_json() | {"threshold": threshold, "per_slide_dice": per_slide}
        json_path.write_text(json.dumps(result, indent=2))
        console.print(f"wrote {json_path}")


if __name__ == "__main__":
    sys.argv[1:] = expand_multi_value_option(sys.argv[1:], "--slides")
    sys.exit(app())
