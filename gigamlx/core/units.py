"""Physical lengths: OME / NGFF unit names to micrometres, and sizes typed with a unit.

mpp (micrometres per pixel) is the one calibration unit inside gigamlx; every reader converts
what its format says (OME-XML `PhysicalSizeXUnit`, NGFF axis `unit`, TIFF resolution tags).
"""

from __future__ import annotations

import math
import re

# OME-XML writes symbols ("nm", "µm"), NGFF writes UDUNITS names ("nanometer", "micrometer")
UM_PER_UNIT = {
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, as some writers spell it
    "um": 1.0,
    "micrometer": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
}


def um_per_unit(unit: str | None, default: str = "µm") -> float | None:
    """Micrometres in one `unit` (case-insensitive; None -> `default`); None if not a length."""
    return UM_PER_UNIT.get((unit or default).strip().lower())


def to_um(value, unit: str | None, default: str = "µm") -> float | None:
    """`value` in `unit` as µm; None when the value or unit is unusable (0, NaN, 'pixel')."""
    factor = um_per_unit(unit, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not math.isfinite(number) or number <= 0:
        return None
    return number * factor


def parse_size(text: str) -> tuple[tuple[float, float], str | None]:
    """'16000x64000' -> ((16000, 64000), None); '8000x32000um' -> ((8000, 32000), 'um').

    Rows x cols (H x W); the unit, if any, follows the second number (or both).

    Raises:
        ValueError: not two positive numbers, or an unknown unit; the message shows the form.
    """
    number = r"(\d+(?:\.\d+)?)\s*([a-zA-Zµμ]*)"
    match = re.fullmatch(rf"\s*{number}\s*[xX×]\s*{number}\s*", text)
    form = "write HxW in pixels (16000x64000) or with a unit (8000x32000um, 2x8mm)"
    if not match:
        raise ValueError(f"cannot read a region from {text!r}; {form}")
    h, unit_h, w, unit_w = match.groups()
    unit = (unit_w or unit_h or "").lower() or None
    if unit_h and unit_w and unit_h.lower() != unit_w.lower():
        raise ValueError(f"size {text!r} mixes units {unit_h} and {unit_w}; {form}")
    if unit in ("px", "pixel", "pixels"):
        unit = None
    if unit is not None and um_per_unit(unit) is None:
        raise ValueError(f"unknown length unit {unit!r} in {text!r}; {form}")
    if float(h) <= 0 or float(w) <= 0:
        raise ValueError(f"size {text!r} has a zero side; {form}")
    return (float(h), float(w)), unit
