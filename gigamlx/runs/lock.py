"""An OS-level lock on a folder or an output, held for a whole command.

`flock` on a small lock file that holds the holder's PID: the kernel drops the lock when the
process ends however it ends (kill -9 included), so a stale lock never blocks the next run.
The holder removes the file on release; a process that locked a file just removed by its
holder sees the path gone (or another file there) and tries again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockError(RuntimeError):
    """Another process holds the lock; the message names it, its PID and the lock file."""


@contextmanager
def hold_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` for the block, or raise LockError at once.

    Args:
        lock_path: the lock file (made and removed here; its folder must exist).
        what: what the lock guards, for the message ("run folder runs/a").
    """
    lock_path = Path(lock_path)
    fd = _acquire(lock_path, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # still held: nobody else can be using this file
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(lock_path: Path, what: str) -> int:
    """A descriptor of `lock_path` holding its flock."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockError(
                f"{what} is in use by process {holder} (lock file {lock_path}); wait for it "
                "to finish or stop it, or choose another output"
            ) from None
        if _same_file(fd, lock_path):
            return fd
        os.close(fd)  # the previous holder removed this file as we locked it: again


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
