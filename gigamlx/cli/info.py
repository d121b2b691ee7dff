"""`gigamlx info`: versions, engine, BLAS, memory, the model's geometry and the bundled model;
`gigamlx info --model bundled`: the bundled model's card."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Annotated

import typer

from gigamlx.cli.common import SIZE_CONVENTION, app, stdout_errors, user_errors


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _total_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def collect_info() -> dict[str, str]:
    from gigamlx.backends import get_backend
    from gigamlx.core.spec import halo_px, param_count, receptive_field_px, total_stride

    ram = _total_ram_bytes()
    return {
        "gigamlx": _version("gigamlx"),
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx": _version("mlx"),
        **get_backend("mlx").describe(),
        "torch (cuda-um)": _version("torch"),
        "RAM": f"{ram / 1e9:.1f} GB" if ram else "unknown",
        "model parameters": str(param_count()),
        "total stride px": str(total_stride()),
        "receptive field px": f"{receptive_field_px()} (one side)",
        "tile halo px": str(halo_px()),
        "bundled model": _bundled_line(),
    }


def _bundled_line() -> str:
    from gigamlx.runs.bundled import BundleError, read_card

    try:
        card = read_card()
    except BundleError as error:
        return str(error)
    return f"{card['name']}, trained on {card['trained_on']} (gigamlx info --model bundled)"


def show_card(as_json: bool) -> None:
    """Print the bundled model's card: facts, then its per-slide Dice."""
    from gigamlx.runs.bundled import SCORE_COLUMNS, card_facts, load_bundled, score_rows

    card = load_bundled().card  # the weights checked against the card too
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    for key, value in card_facts(card).items():
        typer.echo(f"{key:>16}: {value}")
    rows = score_rows(card)
    if rows:
        typer.echo("\n" + "  ".join(f"{c:>12}" for c in SCORE_COLUMNS))
        for row in rows:
            typer.echo("  ".join(f"{c:>12}" for c in row))


@app.command()
def info(
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object to stdout")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="bundled: print the card of the model that ships with gigamlx (what it was "
            "trained on, its Dice, threshold and post-processing)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Versions, engine, BLAS, memory, the model's geometry and the bundled model."""
    if model is not None:
        with user_errors():
            if model != "bundled":
                raise ValueError(f"--model {model}: only `bundled` has a card")
            with stdout_errors():
                show_card(as_json)
        return
    facts = collect_info() | {"size convention": SIZE_CONVENTION}
    with stdout_errors():
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:>22}: {value}")
