"""Lengths with units: OME / NGFF unit names to µm, and region sizes typed with a unit."""

import math

import pytest

from gigamlx.core.units import parse_size, to_um


@pytest.mark.parametrize(
    ("value", "unit", "um"),
    [(499, "nm", 0.499), (0.499, "µm", 0.499), (0.000499, "mm", 0.499), (0.5, None, 0.5)]
    + [(250, "nanometer", 0.25), (0.25, "micrometer", 0.25), ("0.25", "MICROMETER", 0.25)],
)
def test_to_um_converts_units(value, unit, um):
    assert to_um(value, unit) == pytest.approx(um)


@pytest.mark.parametrize(("value", "unit"), [(1, "pixel"), (0, "µm"), (math.nan, "µm"), ("x", "")])
def test_to_um_unusable_is_none(value, unit):
    assert to_um(value, unit) is None


def test_parse_size_pixels_and_lengths():
    assert parse_size("16000x64000") == ((16000, 64000), None)
    assert parse_size("8000x32000um") == ((8000, 32000), "um")
    assert parse_size("2mm x 8mm") == ((2, 8), "mm")
    assert parse_size("256x256px") == ((256, 256), None)
    for bad, message in [("16000by64000", "cannot read a region"), ("1x2km", "unknown length")]:
        with pytest.raises(ValueError, match=message):
            parse_size(bad)
    with pytest.raises(ValueError, match="mixes units"):
        parse_size("1mmx2um")
