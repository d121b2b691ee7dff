"""The `gigamlx` command line, one module per group of commands. Nothing imports it."""

# the import order is the order of --help (the main command first); each module registers
from gigamlx.cli import train, data, info, predict, eval, report  # noqa: F401, I001
from gigamlx.cli.common import app

__all__ = ["app"]
