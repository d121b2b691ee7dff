"""Direct chunk reads give zarr's values, and only for the layouts they understand."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from gigamlx.slide.chunks import direct_reader
from gigamlx.slide.store import open_store
from gigamlx.synth.slide import synth_slide


def _array(tmp_path, name, shape, chunks, compressors, data):
    array = zarr.create_array(
        tmp_path / name, shape=shape, chunks=chunks, dtype=data.dtype, fill_value=7,
        compressors=compressors,
    )  # fmt: skip
    array[...] = data
    return zarr.open_array(tmp_path / name, mode="r")


def _count_decodes(monkeypatch) -> list:
    """A list that grows by one per zstd chunk decoded."""
    decoded, original = [], imagecodecs.zstd_decode
    monkeypatch.setattr(
        imagecodecs, "zstd_decode", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    return decoded


def _indexes(rng, shape, n):
    """Random step-1 windows (some past the edges, some empty) with an int or a slice first."""
    for _ in range(n):
        rows = sorted(int(v) for v in rng.integers(-5, shape[1] + 5, 2))
        cols = sorted(int(v) for v in rng.integers(0, shape[2] + 5, 2))
        first = int(rng.integers(shape[0])) if rng.random() < 0.3 else slice(None)
        yield first, slice(max(rows[0], 0), rows[1]), slice(*cols)


@pytest.mark.parametrize("compressors", [ZstdCodec(level=3), None], ids=["zstd", "raw"])
def test_direct_reads_equal_zarrs_with_edge_chunks_and_unwritten_chunks(tmp_path, compressors):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 100, 130), dtype=np.uint8)
    data[:, :64, :48] = 7  # chunks all equal to the fill value are never written
    array = _array(tmp_path, "a.zarr", data.shape, (3, 32, 48), compressors, data)
    read = direct_reader(array)
    assert read is not None
    assert not (tmp_path / "a.zarr" / "c" / "0" / "0" / "0").exists()  # an unwritten chunk
    for index in _indexes(rng, data.shape, 60):
        np.testing.assert_array_equal(read(index), array[index], err_msg=str(index))
    np.testing.assert_array_equal(read((slice(None),) * 3), data)
    stepped = (slice(None), slice(0, 100, 2), slice(None))  # not ours: zarr reads it
    np.testing.assert_array_equal(read(stepped), data[stepped])


def test_direct_reader_declines_layouts_it_does_not_decode(tmp_path):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    blosc = _array(tmp_path, "b.zarr", data.shape, (32, 32), BloscCodec(), data)
    assert direct_reader(blosc) is None
    sharded = zarr.create_array(
        tmp_path / "s.zarr", shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint8"
    )
    assert direct_reader(sharded) is None
    v2 = zarr.create_array(tmp_path / "v2.zarr", shape=(8, 8), dtype="uint8", zarr_format=2)
    assert direct_reader(v2) is None
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(4,), dtype="u1")
    assert direct_reader(in_memory) is None
    wide = _array(tmp_path, "w.zarr", data.shape, (32, 32), ZstdCodec(), data)
    np.testing.assert_array_equal(direct_reader(wide)((slice(3, 40), slice(5, 64))), data[3:40, 5:])


def test_slide_store_windows_decode_chunks_directly(tmp_path, monkeypatch):
    path = synth_slide(tmp_path / "s.zarr", (300, 400), seed=3, chunk_px=128)
    decoded = _count_decodes(monkeypatch)
    store = open_store(path)
    group = zarr.open_group(path, mode="r")
    window = store.image[50:290, 100:330]
    assert decoded, "the store's image was read through zarr, not chunk by chunk"
    np.testing.assert_array_equal(window, np.moveaxis(group["0"][:, 50:290, 100:330], 0, -1))
    np.testing.assert_array_equal(store.mask[0:300, 0:400], group["labels/tissue/0"][...])


def test_a_chunk_cut_short_is_an_error_naming_the_file(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    array = _array(tmp_path, "t.zarr", data.shape, (32, 32), ZstdCodec(), data)
    chunk = tmp_path / "t.zarr" / "c" / "1" / "1"
    chunk.write_bytes(chunk.read_bytes()[:-20])
    with pytest.raises(OSError, match=r"t\.zarr.c.1.1: not a zstd chunk of this array"):
        direct_reader(array)((slice(32, 64), slice(32, 64)))


def test_a_row_of_overlapping_windows_decodes_each_shared_chunk_once(tmp_path, monkeypatch):
    """Windows stepping along a row (tiles with halos) reuse the chunks under their overlap,
    and the values stay zarr's whatever the order (a jump back, a window read twice)."""
    rng = np.random.default_rng(2)
    data = rng.integers(0, 255, (3, 64, 512), dtype=np.uint8)
    array = _array(tmp_path, "r.zarr", data.shape, (3, 32, 32), ZstdCodec(), data)
    read = direct_reader(array)
    decoded = _count_decodes(monkeypatch)
    starts = list(range(0, 448, 80))  # 96-wide windows 80 apart: 16 px shared, in one chunk
    for x0 in starts + [0, 0, 240]:
        index = (slice(None), slice(8, 56), slice(x0, x0 + 96))
        np.testing.assert_array_equal(read(index), data[index])
    # rows 8..56 lie in 2 chunk rows; the six windows of the sweep cover 3, 4, 3, 4, 3, 4
    # chunk columns (21), consecutive ones share one; the first move has nothing to go by:
    # 2 * (21 - 4) decodes. The jump back to 0, the same window again and 240: 2 * (3 + 3 + 4).
    assert len(decoded) == 2 * (21 - 4) + 2 * (3 + 3 + 4)


def test_a_thread_reading_many_stores_holds_the_buffers_of_the_last_few(tmp_path):
    """Validation reads one slide after another: older arrays' kept chunks are let go, and an
    array read again after being let go still reads its own values."""
    from gigamlx.slide import chunks

    arrays = []
    for n in range(chunks.STATES_PER_THREAD + 3):
        data = np.full((3, 64, 96), n, np.uint8)
        arrays.append(
            (_array(tmp_path, f"{n}.zarr", data.shape, (3, 32, 32), ZstdCodec(), data), n)
        )
    readers = [(direct_reader(a), n) for a, n in arrays]
    for read, n in readers + readers[:2]:
        for x0 in (0, 16, 32):  # a sweep: chunks kept between its windows
            assert (read((slice(None), slice(0, 64), slice(x0, x0 + 48))) == n).all()
    assert len(chunks._THREAD.states) == chunks.STATES_PER_THREAD
