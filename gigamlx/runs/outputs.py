"""Output paths every writer shares: hidden sibling names, atomic replacement, leftovers of
killed runs, and the checks made before any work (a folder, not a file; not an input).

A writer builds `DIR/.NAME.partial-PID-HEX` and renames it to `DIR/NAME` when complete; a
replaced output is first renamed to `DIR/.NAME.old-PID-HEX`. A run killed with -9 leaves these
hidden siblings behind; the next run of the same command on the same output removes those whose
process is gone (`remove_stale_siblings`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class OutputError(ValueError):
    """An output path that cannot be written as asked; the message names it and the fix."""


def hidden_sibling(path: Path, tag: str) -> Path:
    """`DIR/.NAME.TAG-PID-HEX`: where `path` is built (tag "partial") or parked ("old")."""
    path = Path(path)
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}"


def remove_tree_or_file(path: Path) -> None:
    """Delete a file, a link or a folder; what is already gone is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(tmp_path: Path, path: Path) -> None:
    """Rename `tmp_path` (file or folder) to `path`, replacing what was there."""
    old = None
    if os.path.lexists(path):
        old = hidden_sibling(path, "old")
        os.rename(path, old)
    os.rename(tmp_path, path)
    if old is not None:
        remove_tree_or_file(old)


def name_the_path(error: BaseException, path: Path) -> None:
    """Give an OSError raised without a file name (zarr's, tifffile's) the output's path."""
    if isinstance(error, OSError) and error.errno is not None and error.filename is None:
        error.filename = str(path)


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists (ours included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_siblings(path: Path) -> list[Path]:
    """Delete `.NAME.partial-PID-*` (and `.NAME.old-PID-*` while NAME exists) of dead processes.

    Returns:
        The paths removed (logged too).
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(\d+)-[0-9a-f]+")
    removed = []
    for sibling in path.parent.iterdir():
        match = pattern.fullmatch(sibling.name)
        if match is None or pid_alive(int(match[2])):
            continue
        if match[1] == "old" and not os.path.lexists(path):
            continue  # killed between two renames: the old output is the only copy
        remove_tree_or_file(sibling)
        removed.append(sibling)
        log.info("removed %s, left by a run that was killed", sibling)
    return removed


def check_output_folder(path: Path, flag: str = "--out") -> Path:
    """A folder to write into must be a folder or not exist yet (nor be a dangling link).

    Raises:
        OutputError: `path` is a file, a device such as /dev/null, or a link to nowhere.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(
            f"{flag} {path} is a symbolic link to {os.readlink(path)}, which does not exist: "
            "create that folder or choose another " + flag
        )
    if path.exists() and not path.is_dir():
        kind = "a file" if path.is_file() else "not a folder (a device or a pipe)"
        raise OutputError(f"{flag} {path} is {kind}: choose a folder for {flag}")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return path


def check_output_file(path: Path, what: str = "output") -> Path:
    """An output that will be renamed into place: not a dangling link, its folder not a file."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputError(
            f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist: "
            "remove the link or choose another path"
        )
    check_output_folder(path.parent, f"the folder of {path}")
    return path


def check_replaceable(
    path: Path, overwrite: bool, ours: Callable[[Path], bool], what: str = "output"
) -> None:
    """An existing output is replaced only with `overwrite`, and only if gigamlx wrote it.

    Args:
        ours: tells whether the thing at a path carries gigamlx's marker for this output.
        what: the kind of output, for the message ("slide store", "prediction").

    Raises:
        FileExistsError: it exists and `overwrite` is off.
        OutputError: it exists but gigamlx did not write it (a user's folder, a training run).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    if not ours(path):
        raise OutputError(
            f"{path} is not a {what} written by gigamlx, so --overwrite will not delete it: "
            "move it away yourself or choose another output path"
        )


def check_not_input(output: Path, inputs: list[Path], what: str = "output") -> None:
    """Refuse an output that is, contains or lies inside one of the inputs (links resolved).

    Raises:
        OutputError: naming both paths.
    """
    target = Path(output).resolve()
    for source in inputs:
        if source is None:
            continue
        resolved = Path(source).resolve()
        if target == resolved or target in resolved.parents or resolved in target.parents:
            raise OutputError(
                f"{what} {output} would replace the input {source}: choose another {what}"
            )


def probe_writable(folder: Path) -> None:
    """Create and delete a hidden file in `folder`, so that an unwritable folder fails at the
    start of a command rather than at its first save.

    Raises:
        OSError: (EACCES, EROFS, ENOSPC, ...) with `folder` as its filename.
    """
    probe = Path(folder) / f".probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise type(error)(error.errno, error.strerror, str(folder)) from None


@contextmanager
def file_written_atomically(path: Path) -> Iterator[Path]:
    """Yield a hidden sibling to write the file `path` into; it replaces `path` when the block
    completes and is removed otherwise (an error names `path`). Leftovers of dead processes
    are cleared first."""
    path = Path(path)
    remove_stale_siblings(path)
    tmp_path = hidden_sibling(path, "partial")
    try:
        yield tmp_path
        replace_path(tmp_path, path)
    except BaseException as error:
        name_the_path(error, path)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)
