"""Stopping on a signal: while the training loop runs, SIGINT, SIGTERM and SIGHUP only raise
a flag; the loop reads it between steps (and between tiles), saves the last completed step
and the command exits 128 + signal (130, 143, 129).

Nothing is interrupted mid-update or mid-save, and once a stop is under way later signals are
ignored, so a second Ctrl-C waits for the save. Outside the loop (opening slides, say) a
signal stops the command at once with `Stopped`. Handlers can only be installed from the main
thread; elsewhere the process keeps its own handling and the flag stays down.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Stopped(KeyboardInterrupt):
    """A stop signal ended the command; `signum` says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """The first stop signal received (None: none yet).

    `deferring` is True while a loop reads the flag: signals then only raise it. Outside, the
    first signal raises Stopped where the main thread is.
    """

    def __init__(self, deferring: bool = False) -> None:
        self.signum: int | None = None
        self.deferring = deferring

    @property
    def raised(self) -> bool:
        return self.signum is not None

    def raise_for(self, signum: int, frame=None) -> None:
        """The signal handler."""
        if self.signum is not None:
            log.debug("%s ignored: already stopping", signal.Signals(signum).name)
            return
        self.signum = signum
        if not self.deferring:
            name = signal.Signals(signum).name
            raise Stopped(f"{name} outside the training loop; nothing to save", signum)


@contextmanager
def stop_on_signals(deferring: bool = False, keep_after_stop: bool = False) -> Iterator[StopFlag]:
    """A StopFlag raised by SIGINT/SIGTERM/SIGHUP for the block.

    Args:
        deferring: start with signals only raising the flag (the loop sets this itself).
        keep_after_stop: once a stop was signalled, ignore stop signals after the block (a
            command about to exit: a late Ctrl-C must not cut its exit short).
    """
    flag = StopFlag(deferring)
    if threading.current_thread() is not threading.main_thread():
        log.debug("not the main thread: stop signals keep the process's own handlers")
        yield flag
        return
    previous = {signum: signal.signal(signum, flag.raise_for) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            # after a stop, a command about to exit ignores later stop signals: SIG_IGN (not a
            # Python handler, which CPython resets to the default while it shuts down) keeps a
            # late Ctrl-C from killing the process before it exits with its own code
            keep = keep_after_stop and flag.raised
            signal.signal(signum, signal.SIG_IGN if keep else handler)


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by `signum`: 130 SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + int(signum)
