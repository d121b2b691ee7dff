"""Write the model that ships with gigamlx (gigamlx/models/) from a finished run.

Takes the run's best checkpoint (by validation Dice; else its newest), the threshold its
validation chose, the post-processing settings the run recorded (the package defaults, which
validation scored with, where it recorded none) and, if given, the per-slide held-out scores
of `scripts/reproduce_paper.py --json`. The card says what the weights were trained on:
give --trained-on when the run's slide names do not say it.

Usage: python scripts/bundle_model.py RUN_DIR [--scores reproduce.json] [--name NAME]
       [--trained-on TEXT] [--note TEXT] [--out gigamlx/models] [--markdown docs/bundled-model.md]

--markdown rewrites the card's section of that page (between `<!-- bench:bundle_model.py -->`
markers), so the figures the docs show are the card's.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from gigamlx import __version__
from gigamlx.runs.bundled import (
    MODELS_DIR,
    card_facts,
    describe,
    score_rows,
    write_bundle,
)
from gigamlx.runs.checkpoint import BEST, load_checkpoint, read_state
from gigamlx.runs.config import DEFAULT_THRESHOLD, POSTPROCESS

# the per-slide and summary fields of reproduce_paper.py's JSON the card keeps
SLIDE_KEYS = ("slide", "dice", "dice_post", "otsu_dice", "morph_dice")
SUMMARY_KEYS = (
    "dice_mean",
    "dice_std",
    "dice_post_mean",
    "dice_post_std",
    "otsu_mean",
    "otsu_std",
    "morph_mean",
    "morph_std",
    "threshold",
    "steps",
)


def chosen_checkpoint(run_dir: Path):
    """(checkpoint, its state.json): RUN/checkpoints/best if the run validated, else newest."""
    best = run_dir / "checkpoints" / BEST
    checkpoint = load_checkpoint(best if best.is_dir() else run_dir)
    return checkpoint, read_state(checkpoint.path) or {}


def _names(paths) -> list[str]:
    return [Path(p).name for p in paths]


def training_record(config: dict, state: dict, checkpoint_name: str) -> dict:
    """What the run was: its slides (names only: paths are of the machine that trained),
    recipe and the checkpoint chosen."""
    keep = (
        "region",
        "steps",
        "loss",
        "lr",
        "seed",
        "lr_schedule",
        "augment",
        "color_jitter",
        "ema_decay",
    )
    return {
        "data": _names(config.get("data", ())),
        "val": _names(config.get("val", ())),
        "val_fraction": config.get("val_fraction"),
        **{key: config.get(key) for key in keep},
        "checkpoint": checkpoint_name,
        "step": state.get("step"),
        "val_dice": state.get("val_dice"),
        "averaged": state.get("weights") == "ema",  # the best checkpoint held the EMA weights
    }


def scores_record(path: Path) -> dict:
    """The card's `scores`: reproduce_paper.py's per-slide and summary Dice, and its source."""
    found = json.loads(path.read_text())
    rows = [{key: row.get(key) for key in SLIDE_KEYS} for row in found["heldout"]]
    summary = {key: found[key] for key in SUMMARY_KEYS if key in found}
    return {"source": f"scripts/reproduce_paper.py --json ({path.name})", "heldout": rows} | summary


def make_card(run_dir: Path, name: str, trained_on: str | None, note: str, scores: Path | None):
    """(weights, card) of the run's chosen checkpoint."""
    checkpoint, state = chosen_checkpoint(run_dir)
    config = checkpoint.config
    training = training_record(config, state, checkpoint.path.name)
    names = training["data"]
    shown = names if len(names) <= 3 else [names[0], "...", names[-1]]
    default_source = f"{len(names)} slide(s): {', '.join(shown)}"
    card = {
        "name": name,
        "architecture": "GigaUNet-4492",
        "trained_on": trained_on or default_source,
        "note": note,
        "threshold": state.get("threshold", DEFAULT_THRESHOLD),
        "threshold_from": "validation" if "threshold" in state else "default",
        "postprocess": state.get("postprocess") or POSTPROCESS.to_dict(),
        "postprocess_from": "validation" if "postprocess" in state else "default",
        "trained_mpp": config.get("trained_mpp"),
        "trained_level": config.get("trained_level"),
        "normalize": bool(config.get("normalize", False)),
        "training": training,
        "scores": scores_record(scores) if scores is not None else None,
        "gigamlx_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return checkpoint.weights, card


MARKDOWN_TITLE = "The bundled model's card"
MARKDOWN_WHAT = (
    "Written by scripts/bundle_model.py from the card it wrote (`gigamlx info --model bundled` "
    "prints the same): what the weights were trained on, their cut and post-processing, and "
    "their Dice per held-out slide when the card has scores."
)
SCORE_HEADER = (  # runs/bundled.py SCORE_COLUMNS, as the page names them
    "slide",
    "Dice (raw map)",
    "Dice (post-processed)",
    "Otsu Dice",
    "morph Dice",
)


def write_markdown(path: Path, card: dict) -> None:
    """The card's section of `path`: its facts, then its per-slide Dice if it has any."""
    from benchmarks_md import command_line, markdown_table, write_section  # scripts/

    tables = [markdown_table(("fact", "value"), list(card_facts(card).items()), [False, False])]
    if rows := score_rows(card):
        tables.append(markdown_table(SCORE_HEADER, rows))
    facts = {"card written": card["created"], "command": f"`{command_line()}`"}
    write_section(path, "bundle_model.py", MARKDOWN_TITLE, MARKDOWN_WHAT, tables, facts)


def main(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    scores: Annotated[
        Path | None, typer.Option(help="scripts/reproduce_paper.py --json output")
    ] = None,
    name: Annotated[str, typer.Option(help="the model's name on its card")] = "gigaunet-4492",
    trained_on: Annotated[
        str | None,
        typer.Option(help="what it was trained on, in words (default: the run's slide names)"),
    ] = None,
    note: Annotated[str, typer.Option(help="anything a user should know")] = "",
    out: Annotated[Path, typer.Option(help="the bundle's folder")] = MODELS_DIR,
    markdown: Annotated[
        Path | None, typer.Option(help="rewrite the card's section of this page")
    ] = None,
) -> None:
    """Write OUT/gigaunet-4492.safetensors and its card from RUN_DIR's chosen checkpoint."""
    weights, card = make_card(run_dir, name, trained_on, note, scores)
    weights_path, card_path = write_bundle(out, weights, card)
    typer.echo(f"wrote {weights_path} and {card_path}: {describe(card)}")
    if markdown is not None:
        write_markdown(markdown, json.loads(card_path.read_text()))
        typer.echo(f"wrote the card's section of {markdown}")


if __name__ == "__main__":
    sys.exit(typer.run(main))
