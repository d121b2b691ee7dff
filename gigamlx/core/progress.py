"""The progress callbacks long jobs take, defined once: the CLI draws its bars through them."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]  # (phase, done, total in that phase)
ChunkProgress = Callable[[int, int], None]  # (chunks written, chunks in all): no phases
