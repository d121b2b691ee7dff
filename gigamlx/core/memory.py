"""Process memory readings (engine-free): peak and current resident set size, in bytes."""

from __future__ import annotations

import math
import resource
import sys
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


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def current_rss_bytes() -> int | None:
    """Resident memory now (Linux /proc; None where that is not available)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * resource.getpagesize()


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
