"""`gigamlx eval`: streamed Dice of probability maps against tissue masks."""

from __future__ import annotations

from pathlib import Path

import typer

from gigamlx.cli.common import app, err, setup_logging, stdout_errors, user_errors
from gigamlx.slide import OTSU_DEFINITION


class MasksCommand(typer.core.TyperCommand):
    """Lets `--masks M1 M2 ...` take several values after one flag."""

    def parse_args(self, ctx, args):
        from gigamlx.eval.slides import expand_multi_value_option

        return super().parse_args(ctx, expand_multi_value_option(args, "--masks"))


@app.command("eval", cls=MasksCommand)
def evaluate(
    preds: list[Path] = typer.Argument(..., metavar="PRED", help="probability maps"),
    masks: list[Path] = typer.Option(
        ..., "--masks", metavar="MASK", help="masks or slide stores, in PRED order"
    ),
    threshold: float = typer.Option(0.5, help="p >= threshold is tissue; in [0, 1]"),
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
    from gigamlx.eval.slides import run_evaluation

    setup_logging(False)
    with user_errors(), stdout_errors():
        report = run_evaluation(
            preds, masks, threshold, json_path, baseline, level, pred_scale=pred_scale
        )
    for slide in report.slides:
        if slide.note:
            err.print(f"note: {slide.note}", soft_wrap=True, markup=False, highlight=False)
