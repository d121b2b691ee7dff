"""`gigamlx eval`: streamed Dice of probability maps against tissue masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from gigamlx.cli.common import app, err, setup_logging, stdout_errors, user_errors
from gigamlx.runs.config import DEFAULT_THRESHOLD
from gigamlx.slide import OTSU_DEFINITION

# eval/baseline.py's BASELINES and eval/scale.py's PRED_SCALES, written out so that the CLI
# loads no zarr until a command runs (tests/test_cli_conventions.py holds them equal)
Baseline = Literal["otsu", "morph"]
PredScale = Literal["auto", "255", "1"]


class MasksCommand(typer.core.TyperCommand):
    """Lets `--masks M1 M2 ...` take several values after one flag."""

    def parse_args(self, ctx, args):
        from gigamlx.eval.slides import expand_multi_value_option

        return super().parse_args(ctx, expand_multi_value_option(args, "--masks"))


@app.command("eval", cls=MasksCommand)
def evaluate(
    preds: Annotated[list[Path], typer.Argument(metavar="PRED", help="probability maps")],
    masks: Annotated[
        list[Path],
        typer.Option("--masks", metavar="MASK", help="masks or slide stores, in PRED order"),
    ],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="p >= threshold is tissue; in [0, 1]; default: the cut a prediction of "
            f"`gigamlx predict` records, else {DEFAULT_THRESHOLD} (a tissue mask is 0/1: no cut)",
            show_default=False,
        ),
    ] = None,
    raw: Annotated[
        bool,
        typer.Option(
            help="score a prediction's probability map at the threshold, not its "
            "post-processed tissue mask (labels/tissue, scored by default where present)"
        ),
    ] = False,
    json_path: Annotated[
        str | None,
        typer.Option("--json", help="also write the report as JSON to this file ('-': stdout)"),
    ] = None,
    baseline: Annotated[
        Baseline | None,
        typer.Option(
            help=f"also score a classical detector (otsu: {OTSU_DEFINITION}; the same as "
            "ingest --otsu; morph: that mask closed, holes filled, specks removed, as "
            "histolab and TIAToolbox do); masks must be slide stores",
        ),
    ] = None,
    level: Annotated[int, typer.Option(min=0, help="pyramid level both are read at")] = 0,
    pred_scale: Annotated[
        PredScale,
        typer.Option(
            help="uint8 predictions: '255' = round(255 p), '1' = a 0/1 map, 'auto' = 0/1 when "
            "the values are only 0 and 1 (said on stderr)",
        ),
    ] = "auto",
) -> None:
    """Streamed Dice, IoU, precision, recall and soft Dice of PRED... against --masks MASK...

    Predictions: OME-Zarr, zarr, TIFF/OME-TIFF or PNG, uint8 0-255 (0/1: see --pred-scale) or
    float 0-1. A prediction of `gigamlx predict` is scored by its tissue mask (labels/tissue,
    post-processed) where it has one, else by its map at the cut it records; --raw scores the
    map. Masks: the same (any non-zero value is tissue) or slide stores. Per-slide rows, then
    mean ± sample std.
    Both prediction and mask empty: Dice = IoU = precision = recall = 1. Nothing predicted
    but tissue in the mask (or the reverse): 0. scripts/evaluate_dice.py runs this command.
    """
    from gigamlx.eval.slides import run_evaluation

    setup_logging(False)
    with user_errors(), stdout_errors():
        report = run_evaluation(
            preds, masks, threshold, json_path, baseline, level, pred_scale=pred_scale, raw=raw
        )
    for slide in report.slides:
        if slide.note:
            err.print(f"note: {slide.note}", soft_wrap=True, markup=False, highlight=False)
