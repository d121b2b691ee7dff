"""Windows of a local zarr v3 array read by decoding its chunks straight into the window.

zarr's own read of a training window spends more CPU assembling chunks than the zstd decode
itself (docs/experiments.md), and a training step reads every window twice on the same two
cores its network runs on. Only the plain layout gigamlx writes is read this way (a regular
chunk grid, the bytes codec with or without zstd, no sharding or storage transformers, a
directory on the local disk); anything else goes through zarr, which gives the same values.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.storage import LocalStore

Index = tuple  # of slices (step 1) and ints, one per axis, as `array[index]` takes
KEPT_MAX_BYTES = 48 * 2**20  # decoded chunks kept for the next window, per array and thread


def direct_reader(array) -> Callable[[Index], np.ndarray] | None:
    """`index -> array[index]` decoding chunks directly, or None where zarr must read it.

    Args:
        array: an opened zarr array.

    Returns:
        a function giving the same ndarray as `array[index]` for an index of slices with
        step 1 and ints (other indexes are passed to zarr), or None for a layout it does not
        read (see the module docstring).
    """
    meta = getattr(array, "metadata", None)
    if getattr(meta, "zarr_format", None) != 3 or meta.storage_transformers:
        return None
    if not isinstance(array.store, LocalStore) or not _plain_codecs(meta.codecs, array.dtype):
        return None
    chunk_shape = getattr(meta.chunk_grid, "chunk_shape", None)
    if chunk_shape is None or len(chunk_shape) != array.ndim:
        return None
    chunks = _ChunkFiles(
        Path(array.store.root) / array.path,
        tuple(int(n) for n in chunk_shape),
        np.dtype(array.dtype),
        meta.chunk_key_encoding.encode_chunk_key,
        compressed=len(meta.codecs) == 2,
    )
    fill = np.asarray(meta.fill_value, dtype=array.dtype)
    shape = tuple(int(n) for n in array.shape)

    def read(index: Index) -> np.ndarray:
        bounds = _bounds(index, shape)
        if bounds is None:
            return np.asarray(array[index])
        block = chunks.read(bounds, fill)
        return block[tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in index)]

    return read


def _plain_codecs(codecs, dtype) -> bool:
    if not codecs or not isinstance(codecs[0], BytesCodec):
        return False
    endian = getattr(codecs[0].endian, "value", codecs[0].endian)  # an enum in zarr 3
    native = np.dtype(dtype).itemsize == 1 or endian in (None, sys.byteorder)
    rest = codecs[1:]
    return native and (not rest or (len(rest) == 1 and isinstance(rest[0], ZstdCodec)))


def _bounds(index, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """(start, stop) per axis of an index of step-1 slices and ints, clipped as numpy does."""
    if not isinstance(index, tuple) or len(index) != len(shape):
        return None
    bounds = []
    for item, n in zip(index, shape, strict=True):
        if isinstance(item, (int, np.integer)) and -n <= item < n:
            start = int(item) % n
            bounds.append((start, start + 1))
        elif isinstance(item, slice) and item.step in (None, 1):
            start, stop, _ = item.indices(n)
            bounds.append((start, max(start, stop)))
        else:
            return None
    return bounds


class _Neighbour:
    """What one thread keeps between windows of one array: the last window's bounds, the
    decoded chunks the next window is expected to share, and freed chunk buffers for reuse."""

    def __init__(self):
        self.last: list[tuple[int, int]] | None = None
        self.kept: dict[tuple[int, ...], np.ndarray | None] = {}
        self.spare: list[np.ndarray] = []
        self.raw: np.ndarray | None = None  # the compressed bytes of the chunk being read
        self.block: np.ndarray | None = None  # the decoded chunk not kept


class _ChunkFiles:
    """The chunk files of one array, each decoded into a buffer and the part a window needs
    copied out (chunk files never written are the fill value).

    Tiles are read in rows, so a window shares the chunks under its halo with the one before:
    a 16000x64000 pass decoded 1.8 chunks per chunk of the region. The chunks a window shares
    with the next one, if that moves as this one did from the last, are kept (at most
    KEPT_MAX_BYTES), so the same pass decodes each chunk ~1.4 times.
    """

    def __init__(self, root: Path, chunk_shape, dtype, encode_key, compressed: bool):
        self.root, self.chunk_shape, self.dtype = root, chunk_shape, dtype
        self.encode_key, self.compressed = encode_key, compressed
        self.chunk_bytes = int(np.prod(chunk_shape)) * dtype.itemsize
        self.keep_max = KEPT_MAX_BYTES // self.chunk_bytes  # chunks kept (and spare) at most

    def read(self, bounds: list[tuple[int, int]], fill: np.ndarray) -> np.ndarray:
        state = _state_of(self)
        out = np.empty([stop - start for start, stop in bounds], self.dtype)
        ahead = self._chunk_ranges(_moved_on(bounds, state.last))
        kept: dict[tuple[int, ...], np.ndarray | None] = {}
        for coords in itertools.product(*self._chunk_ranges(bounds)):
            keep = len(kept) < self.keep_max and all(
                i in r for i, r in zip(coords, ahead, strict=True)
            )
            if coords in state.kept:
                block = state.kept.pop(coords)
            else:
                block = self._decoded(coords, state, self._buffer(state) if keep else None)
            if keep:
                kept[coords] = block
            elif block is not None and block.base is not state.block:
                state.spare.append(block)
            dst, src = self._overlap(coords, bounds)
            out[dst] = fill if block is None else block[src]
        state.spare += [b for b in state.kept.values() if b is not None]  # not shared after all
        del state.spare[max(self.keep_max - len(kept), 0) :]
        state.kept, state.last = kept, bounds
        return out

    def _overlap(self, coords, bounds) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """Where chunk `coords` and the window `bounds` overlap: (in the window, in the chunk)."""
        dst, src = [], []
        for i, c, (start, stop) in zip(coords, self.chunk_shape, bounds, strict=True):
            lo, hi = max(i * c, start), min((i + 1) * c, stop)
            dst.append(slice(lo - start, hi - start))
            src.append(slice(lo - i * c, hi - i * c))
        return tuple(dst), tuple(src)

    def _chunk_ranges(self, bounds: list[tuple[int, int]] | None) -> list[range]:
        if bounds is None:
            return [range(0)] * len(self.chunk_shape)
        pairs = zip(bounds, self.chunk_shape, strict=True)
        return [range(lo // c, -(-hi // c)) for (lo, hi), c in pairs]

    def _buffer(self, state: _Neighbour) -> np.ndarray:
        return state.spare.pop() if state.spare else np.empty(self.chunk_shape, self.dtype)

    def _decoded(self, coords, state: _Neighbour, into: np.ndarray | None) -> np.ndarray | None:
        """The chunk at `coords` decoded into `into`, or into the thread's scratch block (then
        overwritten by the next chunk) when None; None where no chunk file was written."""
        path = self.root / self.encode_key(coords)
        if into is None:
            if state.block is None:
                state.block = np.empty(self.chunk_bytes, np.uint8)
            into = state.block.view(self.dtype).reshape(self.chunk_shape)
        flat = into.reshape(-1).view(np.uint8)
        try:
            with open(path, "rb", buffering=0) as file:
                size = os.fstat(file.fileno()).st_size
                if not self.compressed:
                    if size != self.chunk_bytes:
                        raise OSError(f"{path}: {size} bytes, a chunk here has {self.chunk_bytes}")
                    got = file.readinto(flat)
                else:
                    if state.raw is None or state.raw.size < size:
                        state.raw = np.empty(max(size, self.chunk_bytes), np.uint8)
                    got = file.readinto(state.raw[:size])
        except FileNotFoundError:
            return None
        if got != size:
            raise OSError(f"{path}: read {got} of {size} bytes of a zarr chunk")
        if self.compressed:
            try:
                got = len(imagecodecs.zstd_decode(state.raw[:size], out=flat))
            except imagecodecs.ZstdError as error:
                got = error
            if got != self.chunk_bytes:  # zarr would fail here too; this names the file
                raise OSError(f"{path}: not a zstd chunk of this array ({got}); rewrite the store")
        return into


_THREAD = threading.local()  # the prefetch thread and the main thread read windows
STATES_PER_THREAD = 4  # a training tile reads two arrays (image, mask); older ones are let go


def _state_of(chunks: _ChunkFiles) -> _Neighbour:
    """This thread's state for `chunks`: a thread reading many stores one after the other
    (validation slides) holds the buffers of its last STATES_PER_THREAD arrays only."""
    states = getattr(_THREAD, "states", None)
    if states is None:
        states = _THREAD.states = OrderedDict()
    state = states.pop(chunks, None) or _Neighbour()  # keyed by the object: ids are reused
    states[chunks] = state
    while len(states) > STATES_PER_THREAD:
        states.popitem(last=False)
    return state


def _moved_on(bounds, last) -> list[tuple[int, int]] | None:
    """Where the next window is if it moves as `bounds` did from `last` (None: no guess)."""
    if last is None or len(last) != len(bounds):
        return None
    return [(lo + lo - lo0, hi + lo - lo0) for (lo, hi), (lo0, _) in zip(bounds, last, strict=True)]
