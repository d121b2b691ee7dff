"""The one lazy-array protocol: an (H, W[, C]) array read a window at a time.

Stores, slide readers, training regions, predictions and tissue maskers all hand out
`LazyArray`s, most of them as a `WindowArray` over a `read(box)` function, so the scheduler,
the metrics and the writers slice numpy, zarr and on-disk views the same way. A 16000x64000
region is never read whole: each consumer reads the windows it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from gigamlx.core.geometry import Box


class LazyArray(Protocol):
    """Array-like (H, W[, C]): `array[rows, cols]` reads that window as numpy."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


class WindowArray:
    """A `LazyArray` over a function that reads one box.

    Args:
        shape: (H, W) or (H, W, C).
        dtype: what `read_box` returns.
        read_box: Box inside the array -> ndarray of shape box.hw + shape[2:].
        chunk_hw: (rows, cols) worth reading at a time (storage chunks), if known.
        source: where the data comes from, for messages.
        closer: called once by `close()` (an open file), or None.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype,
        read_box: Callable[[Box], np.ndarray],
        chunk_hw: tuple[int, int] | None = None,
        source: str = "",
        closer: Callable[[], Any] | None = None,
    ):
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.chunk_hw = tuple(chunk_hw) if chunk_hw else None
        self.source, self._read_box, self._closer = source, read_box, closer

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        """Rows `key[0]` x cols `key[1]` (step 1, clipped to the array) as numpy."""
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        return self.read(Box(y0, x0, max(y0, y1), max(x0, x1)))

    def read(self, box: Box) -> np.ndarray:
        """The window `box` (inside the array), shape box.hw + shape[2:]."""
        return self._read_box(box)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def crop_view(array, box: Box) -> WindowArray:
    """(h, w[, C]) view of `box` (inside `array`) of a larger array; reads only what is sliced."""

    def read(inner: Box) -> np.ndarray:
        y, x = box.y0, box.x0
        return np.asarray(array[y + inner.y0 : y + inner.y1, x + inner.x0 : x + inner.x1])

    return WindowArray(box.hw + tuple(array.shape[2:]), array.dtype, read)


def axes_index(axes: str, box: Box) -> tuple:
    """Index into an array whose axes are named by `axes` (e.g. "tczyx", "YXS"): the box on
    y and x, every channel ("c" or "s"), and the first entry of any other (size-1) axis."""
    rows, cols = slice(box.y0, box.y1), slice(box.x0, box.x1)
    pick = {"y": rows, "x": cols, "c": slice(None), "s": slice(None)}
    return tuple(pick.get(axis, 0) for axis in axes.lower())


def to_rgb(block: np.ndarray, axes: str, contiguous: bool = True) -> np.ndarray:
    """A block read with `axes_index(axes, ...)` as (h, w, 3): channels last, grey or
    grey+alpha repeated to RGB, extra channels (alpha) dropped.

    Args:
        contiguous: copy into a C-contiguous array; False leaves a planar (c, y, x) block as a
            strided channels-last view when the reader copies it anyway (`read_window` does;
            the training windows' turn reads any strides), saving a transposing copy.
    """
    kept = [a for a in axes.lower() if a in "yxcs"]
    channel = next((a for a in kept if a in "cs"), None)
    order = [kept.index("y"), kept.index("x")] + ([kept.index(channel)] if channel else [])
    block = np.asarray(block).transpose(order)
    if channel is None:
        block = block[..., None]
    if block.shape[-1] < 3:
        block = np.repeat(block[..., :1], 3, axis=-1)
    return np.ascontiguousarray(block[..., :3]) if contiguous else block[..., :3]


def to_plane(block: np.ndarray, axes: str) -> np.ndarray:
    """A block read with `axes_index(axes, ...)` on a single-channel array as (h, w)."""
    kept = [a for a in axes.lower() if a in "yxcs"]
    block = np.asarray(block)
    if len(kept) == 3:  # a channel axis of size one
        block = np.take(block, 0, axis=kept.index(next(a for a in kept if a in "cs")))
        kept = [a for a in kept if a in "yx"]
    return block.T if kept == ["x", "y"] else block


def read_window(array, box: Box, fill: int | float = 0) -> np.ndarray:
    """Read `array[box]` (rows, cols, ...) as numpy; pixels outside the array are `fill`.

    Works on anything sliceable with numpy semantics (numpy, zarr, any `LazyArray`), so a
    16000x64000 region never has to be read whole. Only the overlap is read.

    Returns:
        An array of shape box.hw + array.shape[2:], dtype of `array`.
    """
    rows, cols = array.shape[0], array.shape[1]
    y0, x0 = max(box.y0, 0), max(box.x0, 0)
    y1, x1 = min(box.y1, rows), min(box.x1, cols)
    if (y0, x0, y1, x1) == tuple(box) and not isinstance(array, np.ndarray):
        block = array[y0:y1, x0:x1]  # inside: a block the reader just made needs no refill
        owned = isinstance(block, np.ndarray) and block.base is None
        return block if owned and block.flags.c_contiguous else np.array(block, array.dtype)
    out = np.full(box.hw + tuple(array.shape[2:]), fill, dtype=array.dtype)
    if y0 < y1 and x0 < x1:
        out[y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0] = array[y0:y1, x0:x1]
    return out
