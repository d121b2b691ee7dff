"""Score predicted tissue probabilities against masks, streamed: Dice, IoU, precision, recall.

Usage: python scripts/evaluate_dice.py PRED... --masks MASK... [--threshold 0.5]
[--json FILE] [--baseline otsu] [--level N]. The same as `gigamlx eval` (both call
`gigamlx.eval.report.run_evaluation`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from gigamlx.eval.report import EvaluationError, expand_multi_value_option, run_evaluation

HELP = "\n\n".join(
    (
        "Streamed per-slide Dice of probability maps PRED... against masks MASK...",
        "Predictions: OME-Zarr, zarr, TIFF/OME-TIFF or PNG; uint8 0-255 or float 0-1. Masks: "
        "the same formats (any non-zero value is tissue) or slide stores. A pixel is predicted "
        "tissue when p >= threshold. Hard Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN), soft "
        "Dice = 2 sum(pg)/(sum(p)+sum(g)).",
        "Edge cases: prediction and mask both empty: Dice = IoU = precision = recall = soft "
        "Dice = 1. Nothing predicted but tissue in the mask: precision = recall = Dice = IoU = "
        "0. No tissue in the mask but some predicted: the same, 0.",
        "The last row is mean ± sample std (ddof=1) over slides; with one slide the std is "
        "shown as '—' (null in JSON). Bad input exits with status 2 and a one-line message.",
    )
)


class _MasksCommand(TyperCommand):
    """Lets `--masks M1 M2 ...` take several values after one flag, as the usage shows."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_multi_value_option(args, "--masks"))


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(cls=_MasksCommand, help=HELP)
def main(
    preds: Annotated[
        list[Path], typer.Argument(metavar="PRED", help="Prediction files, one per slide.")
    ],
    masks: Annotated[
        list[Path], typer.Option("--masks", metavar="MASK", help="Masks, in PRED order.")
    ],
    threshold: Annotated[float, typer.Option(help="p >= threshold is tissue; in [0, 1].")] = 0.5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="'otsu': also score Otsu on HSV saturation (masks: slide stores)."),
    ] = None,
    level: Annotated[int, typer.Option(min=0, help="Pyramid level both are read at.")] = 0,
) -> None:
    try:
        run_evaluation(preds, masks, threshold, json_path, baseline, level)
    except EvaluationError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    sys.exit(app())
