"""Score predicted tissue probabilities against masks, streamed: Dice, IoU, precision, recall.

Usage: python scripts/evaluate_dice.py PRED... --masks MASK... [--threshold 0.5]
[--json FILE] [--baseline otsu] [--level N]. A thin wrapper: it runs the `gigamlx eval`
command itself (gigamlx/cli/eval.py), so the two never drift apart.
"""

from __future__ import annotations

import sys

import typer

from gigamlx.cli.eval import MasksCommand, evaluate

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(cls=MasksCommand)(evaluate)  # the only command: `app PRED... --masks MASK...`

if __name__ == "__main__":
    sys.exit(app())
