"""Which pyramid level to read: by index (`--level N`) or by resolution (`--mpp X`).

Training records the µm per pixel it read at; prediction reads the level of each slide that
matches it within `MPP_TOLERANCE`, or says plainly that the slide has no such level.
"""

from __future__ import annotations

from collections.abc import Sequence

from gigamlx.core.units import UM_PER_UNIT

MPP_TOLERANCE = 0.1  # relative: 0.5 µm/px matches levels of 0.45..0.55 µm/px


class LevelError(ValueError):
    """No pyramid level fits the request; the message lists the levels there are."""


def describe_levels(mpps: Sequence[float | None], hws: Sequence[tuple[int, int]]) -> str:
    """'0: 4096x8192 (HxW) at 0.25 µm/px, 1: ...' for messages."""
    parts = []
    for n, (mpp, hw) in enumerate(zip(mpps, hws, strict=True)):
        at = f" at {mpp:.4g} µm/px" if mpp else " (no pixel size)"
        parts.append(f"{n}: {hw[0]}x{hw[1]} (HxW){at}")
    return "; ".join(parts)


def match_mpp(
    mpps: Sequence[float | None],
    hws: Sequence[tuple[int, int]],
    target_mpp: float,
    source: str,
    tolerance: float = MPP_TOLERANCE,
) -> int:
    """The level whose µm/px is closest to `target_mpp`, within `tolerance` (relative).

    Raises:
        LevelError: the slide has no calibration, or no level is close enough.
    """
    if not any(mpps):
        raise LevelError(
            f"{source} has no pixel size (mpp), so no level can be matched to "
            f"{target_mpp:g} µm/px; give --level N instead, or ingest a calibrated slide"
        )
    errors = [abs(m / target_mpp - 1) if m else float("inf") for m in mpps]
    best = min(range(len(mpps)), key=errors.__getitem__)
    if errors[best] > tolerance:
        raise LevelError(
            f"{source} has no level within {tolerance:.0%} of {target_mpp:g} µm/px "
            f"(levels {describe_levels(mpps, hws)}); ingest a pyramid that has one, "
            "or choose --level / --mpp to match"
        )
    return best


def pick_level(
    mpps: Sequence[float | None],
    hws: Sequence[tuple[int, int]],
    source: str,
    level: int | None = None,
    mpp: float | None = None,
) -> int:
    """Level index for `--level` (checked) or `--mpp` (matched); level 0 when neither."""
    if level is not None and mpp is not None:
        raise LevelError("give --level or --mpp, not both")
    if mpp is not None:
        return match_mpp(mpps, hws, mpp, source)
    level = level or 0
    if not 0 <= level < len(hws):
        raise LevelError(
            f"{source} has levels 0..{len(hws) - 1}, not {level} ({describe_levels(mpps, hws)})"
        )
    return level


def size_px(size: tuple[float, float], unit: str | None, mpp: float | None, source: str):
    """(h, w) pixels of a size in pixels (`unit` None) or in a length unit at `mpp` µm/px.

    Raises:
        LevelError: a physical size for a slide with no pixel size.
    """
    if unit is None:
        return round(size[0]), round(size[1])
    if not mpp:
        raise LevelError(
            f"a region of {size[0]:g}x{size[1]:g} {unit} needs a pixel size, but {source} has "
            "none; give --region in pixels"
        )
    um = UM_PER_UNIT[unit]
    return max(1, round(size[0] * um / mpp)), max(1, round(size[1] * um / mpp))
