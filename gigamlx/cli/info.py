"""`gigamlx info`: versions, engine, BLAS, memory, and the model's geometry."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Annotated

import typer

from gigamlx.cli.common import SIZE_CONVENTION, app, stdout_errors


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
    }


@app.command()
def info(
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object to stdout")
    ] = False,
) -> None:
    """Versions, engine, BLAS, memory and the model's geometry."""
    facts = collect_info() | {"size convention": SIZE_CONVENTION}
    with stdout_errors():
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return
        for key, value in facts.items():
            typer.echo(f"{key:>22}: {value}")
