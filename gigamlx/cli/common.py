"""What every command shares: the typer app, stderr console, logging, errors, progress bars."""

from __future__ import annotations

import errno
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler

from gigamlx.backends import BACKENDS, KERNELS
from gigamlx.core.losses import LOSSES
from gigamlx.runs.config import LR_SCHEDULES
from gigamlx.slide.readers import BACKENDS as SLIDE_READERS

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

# options that take one of a fixed set: typer lists the choices in --help and rejects a typo
LossName = Literal[LOSSES]
BackendName = Literal[BACKENDS]
Kernels = Literal[KERNELS]
LrSchedule = Literal[LR_SCHEDULES]
SlideReader = Literal[SLIDE_READERS]


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
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    # the app's help text is Typer(help=...); this callback only adds --version
    del version


def setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=err, show_path=False, show_time=False)
    level = logging.DEBUG if verbose else logging.INFO
    # the handler prints level and time itself: the format is the message alone
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def say_error(error: BaseException | str) -> None:
    """One line on stderr, never wrapped, never read as rich markup (paths have brackets)."""
    err.print(f"error: {error}", soft_wrap=True, markup=False, highlight=False)


@contextmanager
def user_errors():
    """Known bad input ends the command with one line on stderr and exit code 2, no trace."""
    from gigamlx.runs.checkpoint import CheckpointError
    from gigamlx.runs.lock import LockError
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
    except (ValueError, StoreError, CheckpointError) as error:
        say_error(error)
        raise typer.Exit(2) from None
    except OSError as error:
        message, code = describe_os_error(error)
        say_error(message)
        quiet_teardown()
        raise typer.Exit(code) from None


def quiet_teardown() -> None:
    """After a reported write error, zarr's abandoned chunk writes would print pages of
    "Task was destroyed" / "Event loop is closed" at exit: the one line said it all."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
    sys.unraisablehook = lambda unraisable: None


# errno -> (what happened, what to do); ENOSPC and EIO exit 1 (the machine), the rest 2
_OS_ERRORS = {
    errno.ENOSPC: ("the disk is full (no space left on device)", "free some space, then rerun"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, then rerun"),
    errno.EIO: ("input/output error", "check the disk"),
    errno.EACCES: ("permission denied", "make it writable, or choose another path"),
    errno.EPERM: ("operation not permitted", "make it writable, or choose another path"),
    errno.EROFS: ("read-only file system", "choose a path on a writable disk"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("is a folder where a file was expected", "choose another path"),
    errno.EEXIST: ("already exists (a file, or a link to nowhere)", "choose another path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links"),
}
_MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def describe_os_error(error: OSError, where: str | None = None) -> tuple[str, int]:
    """One line naming the path (or `where`), what the system said and what to do; and the
    exit code."""
    notes = "; ".join(getattr(error, "__notes__", ()))
    if error.errno is None:  # raised by gigamlx with its own message
        return str(error) + (f"; {notes}" if notes else ""), 2
    what, fix = _OS_ERRORS.get(error.errno, (error.strerror or str(error), "check the path"))
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    where = where or " -> ".join(paths)
    line = f"{where}: {what}; {notes or fix}" if where else f"{what}; {notes or fix}"
    return line, 1 if error.errno in _MACHINE_ERRORS else 2


@contextmanager
def stdout_errors():
    """Output piped to a reader that quit (`| head`) ends quietly; a full disk in one line."""
    try:
        yield
        sys.stdout.flush()
    except OSError as error:
        if error.filename is not None:  # a file's error, not stdout's: user_errors says it
            raise
        # nothing more can reach stdout: point it at /dev/null so the exit flush is silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if error.errno == errno.EPIPE:
            raise typer.Exit(141) from None
        say_error(describe_os_error(error, "standard output")[0])
        raise typer.Exit(1) from None


def progress_bar(description: str):
    """A (callback, context) pair for chunk-by-chunk work like synth and ingest."""
    from rich.progress import Progress

    progress = Progress(console=err)
    task = progress.add_task(description, total=None, visible=False)

    def update(done: int, total: int) -> None:
        # shown from the first chunk on: work that turns out to be cached draws nothing
        progress.update(task, completed=done, total=total, visible=True)

    return update, progress
