"""What every command shares: the typer app, stderr console, logging, errors, progress bars."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    add_completion=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    help="Train GigaUNet-4492 on whole gigapixel slide regions with exact gradients "
    "and a peak memory you choose. Sizes are HxW (rows x columns) everywhere; OpenSlide "
    "says WxH.",
)
err = Console(stderr=True)
log = logging.getLogger("gigamlx")
SIZE_CONVENTION = "sizes are HxW (rows x columns); OpenSlide and PIL say WxH"


def hw_text(hw: tuple[int, int]) -> str:
    """'600x1100 px (HxW)': every size the CLI prints says which side is which."""
    return f"{hw[0]}x{hw[1]} px (HxW)"


def _print_version(value: bool) -> None:
    if value:
        from gigamlx import __version__

        typer.echo(f"gigamlx {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version"
    ),
) -> None:
    # the app's help text is Typer(help=...); this callback only adds --version
    del version


def setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False, show_time=False)
    level = logging.DEBUG if verbose else logging.INFO
    # the handler prints level and time itself: the format is the message alone
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def say_error(error: BaseException) -> None:
    """One line on stderr, never wrapped, never read as rich markup (paths have brackets)."""
    err.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)


@contextmanager
def user_errors():
    """Known bad input ends the command with one line on stderr and exit code 2, no trace."""
    from gigamlx.core.checkpoint import CheckpointError
    from gigamlx.core.lock import LockError
    from gigamlx.slide.store import StoreError
    from gigamlx.train.loop import Interrupted, TrainingError
    from gigamlx.train.stop import Stopped, exit_code

    try:
        yield
    except Interrupted as stop:
        err.print(f"interrupted: {stop}. Continue with --resume.", markup=False, soft_wrap=True)
        raise typer.Exit(exit_code(stop.signum)) from None
    except Stopped as stop:
        err.print(f"stopped: {stop}", markup=False, soft_wrap=True)
        raise typer.Exit(exit_code(stop.signum)) from None
    except LockError as error:
        say_error(error)
        raise typer.Exit(1) from None
    except TrainingError as error:
        say_error(error)
        raise typer.Exit(1) from None
    except (ValueError, StoreError, CheckpointError, FileNotFoundError, FileExistsError) as error:
        say_error(error)
        raise typer.Exit(2) from None


def progress_bar(description: str):
    """A (callback, context) pair for chunk-by-chunk work like synth and ingest."""
    from rich.progress import Progress

    progress = Progress(console=err)
    task = progress.add_task(description, total=None, visible=False)

    def update(done: int, total: int) -> None:
        # shown from the first chunk on: work that turns out to be cached draws nothing
        progress.update(task, completed=done, total=total, visible=True)

    return update, progress
