"""Process memory readings (engine-free): peak and current resident set size, in bytes.

Linux reads /proc; elsewhere (macOS has no /proc) psutil asks the kernel (Mach task_info).
"""

from __future__ import annotations

import ctypes
import math
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple


class CpuUsage(NamedTuple):
    """CPU seconds and page faults of this process (all threads) so far."""

    user_s: float
    system_s: float
    minor_faults: int
    major_faults: int

    def __sub__(self, other: CpuUsage) -> CpuUsage:  # type: ignore[override]
        return CpuUsage(*(a - b for a, b in zip(self, other, strict=True)))


def cpu_usage() -> CpuUsage:
    """getrusage of this process (Linux and macOS alike; no /proc)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return CpuUsage(r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_majflt)


try:
    import psutil
except ImportError:  # a dependency, but a reading that is missing must not stop a run
    psutil = None

_STATM = Path("/proc/self/statm")  # Linux: size, resident, ... in pages


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_kept: dict[str, int] = {}


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux), else None (macOS, musl)."""
    if not sys.platform.startswith("linux") or _kept.get("unsupported"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and others: no libc.so.6
        return None


def keep_freed_memory(max_block_bytes: int) -> bool:
    """Let glibc's malloc reuse freed blocks up to `max_block_bytes` instead of unmapping them.

    By default every block above 32 MB (a tile's window, an activation) is mmap'd fresh and
    unmapped when freed, so the next tile faults in and zeroes the same memory again: on an
    8192² step that was ~160k page faults and a third of the CPU time in the kernel. Kept
    blocks count in the resident set, which the budget already holds. The limit only ever
    rises (the largest asked for). Returns False where the C library is not glibc (macOS: its
    allocator reuses large blocks itself).
    """
    if _kept.get("bytes", 0) >= max_block_bytes:
        return True
    libc = _glibc()
    ok = libc is not None and bool(
        libc.mallopt(_M_MMAP_THRESHOLD, max_block_bytes)
        and libc.mallopt(_M_TRIM_THRESHOLD, max_block_bytes)
    )
    if not ok:
        _kept["unsupported"] = 1
        return False
    _kept["bytes"] = max_block_bytes
    return True


def share_one_heap() -> bool:
    """Make threads that have not allocated yet use the main thread's malloc heap (glibc's
    M_ARENA_MAX = 1), where `keep_freed_memory` lets freed blocks be reused.

    Otherwise each thread (MLX's, the window readers') allocates from heaps of its own, at
    most 64 MB each: an emptied one is unmapped, so the next tile's activations or window
    fault in and zero its pages again, and their freed memory sits apart from the main heap
    that `release_freed_memory` trims. These threads allocate a few large blocks per tile,
    so sharing one lock costs nothing measurable. False where the C library is not glibc.
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, 1))


def release_freed_memory() -> bool:
    """Hand the freed blocks glibc's malloc keeps (`keep_freed_memory`) back to the system,
    holes between live blocks included (malloc_trim). Called between training steps: kept
    across steps, fragmentation let a 16000x64000 step's resident set creep up from step to
    step (docs/experiments.md). False where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def current_rss_bytes() -> int | None:
    """Resident memory now: /proc on Linux, psutil elsewhere; None where neither can tell
    (Linux with /proc hidden). Callers treat None as unknown, never as 0 bytes."""
    try:
        fields = _STATM.read_text().split()
        return int(fields[1]) * resource.getpagesize()
    except OSError:
        pass
    if psutil is None:
        return None
    try:
        return int(psutil.Process().memory_info().rss)
    except (psutil.Error, OSError):  # psutil itself reads /proc on Linux
        return None


class SampledPeak:
    """Peak RSS since `reset()`, sampled on a daemon thread every `period_s`: for kernels that
    keep no resettable peak (macOS; Linux has VmHWM). Spikes shorter than the period are
    missed; `peak()` is None where the current RSS is unknown."""

    def __init__(self, period_s: float = 0.002):
        self.period_s = period_s
        self._peak: int | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        with self._lock:
            self._peak = current_rss_bytes()
        if self._thread is None and self._peak is not None:
            self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)
            self._thread.start()

    def peak(self) -> int | None:
        self._sample()
        return self._peak

    def _sample(self) -> None:
        # read under the lock: a reading taken before a reset() must not land after it (the
        # last step's peak would leak into the next one)
        with self._lock:
            now = current_rss_bytes()
            if now is not None and (self._peak is None or now > self._peak):
                self._peak = now

    def _run(self) -> None:
        if hasattr(signal, "pthread_sigmask"):  # never the thread a Ctrl-C is delivered to:
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # see train/loop
        while True:  # a daemon: it lives as long as the process
            time.sleep(self.period_s)
            self._sample()


def parse_bytes(text: str) -> int:
    """'4GB', '512MB', '1.5G', '2GiB', '1000000' -> bytes (decimal units; *iB are binary)."""
    units = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    clean = text.strip().upper().replace(" ", "")
    binary = clean.endswith("IB")
    stem = clean[:-2] if binary else clean[:-1] if clean.endswith("B") else clean
    number, unit = stem, ""
    if stem and stem[-1] in "KMGT":
        number, unit = stem[:-1], stem[-1]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"cannot read a memory size from {text!r}; write e.g. 4GB or 512MB"
        ) from None
    scale = 1024 ** "KMGT".index(unit) * 1024 if binary and unit else units[unit]
    if not math.isfinite(value):
        raise ValueError(f"memory size must be a finite number, got {text!r}; write e.g. 4GB")
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value * scale)


def format_bytes(n: float) -> str:
    """12345678 -> '12.3 MB' (decimal units, as `parse_bytes` reads them)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n} TB"
