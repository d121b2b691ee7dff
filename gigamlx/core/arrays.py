"""Reading one window of a (possibly on-disk) array, zero-filled where it leaves the array."""

from __future__ import annotations

import numpy as np

from gigamlx.core.geometry import Box


def read_window(array, box: Box, fill: int | float = 0) -> np.ndarray:
    """Read `array[box]` (rows, cols, ...) as numpy; pixels outside the array are `fill`.

    Works on anything sliceable with numpy semantics (numpy, zarr, tifffile's zarr store), so a
    16000x64000 region never has to be read whole. Only the overlap is read.

    Returns:
        An array of shape box.hw + array.shape[2:], dtype of `array`.
    """
    rows, cols = array.shape[0], array.shape[1]
    y0, x0 = max(box.y0, 0), max(box.x0, 0)
    y1, x1 = min(box.y1, rows), min(box.x1, cols)
    if (y0, x0, y1, x1) == tuple(box) and not isinstance(array, np.ndarray):
        return np.ascontiguousarray(array[y0:y1, x0:x1])  # inside: a fresh block, no refill
    out = np.full(box.hw + tuple(array.shape[2:]), fill, dtype=array.dtype)
    if y0 < y1 and x0 < x1:
        out[y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0] = array[y0:y1, x0:x1]
    return out
