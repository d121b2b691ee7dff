"""Synthetic slides as slide stores: chunks rendered in worker processes (synth/render.py
draws each), written as they come, and the default slide generated once into a cache.

The stored mask is the rendered tissue region with every white space it encloses filled (glass
between touching pieces included): the tissue region as a pathologist outlines it, which the
real slide's reference draws too (docs/real-slide.md). Whether glass is enclosed depends on the
whole slide, so that one pass runs over the written mask after the chunks
(`slide.morphology.fill_every_hole`); everything else in a chunk depends on its pixels alone.

The same seed and size give the same bytes whatever the chunk size and the number of workers.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from gigamlx.core.geometry import Box
from gigamlx.core.memory import keep_freed_memory
from gigamlx.core.progress import ChunkProgress
from gigamlx.runs.config import DEFAULT_CHUNK_PX, DEFAULT_SLIDE_HW, check_seed
from gigamlx.slide.morphology import fill_every_hole
from gigamlx.slide.pyramid import chunk_boxes
from gigamlx.slide.store import StoreError, open_store
from gigamlx.slide.writer import StoreWriter
from gigamlx.slide.written import check_chunk_px
from gigamlx.synth.render import SYNTH_VERSION, render
from gigamlx.synth.scene import Scene, make_scene

log = logging.getLogger(__name__)

PARALLEL_MIN_CHUNKS = 16  # below this, starting worker processes costs more than it saves
RENDER_HEAP_FLOOR_BYTES = 64 << 20  # blocks a worker's malloc keeps: above any default chunk's
_worker_scene: Scene | None = None


def _render_box(scene: Scene, box: Box) -> tuple[np.ndarray, np.ndarray]:
    return render(scene, np.arange(box.y0, box.y1), np.arange(box.x0, box.x1))


def prepare_worker(chunk_px: int) -> None:
    """Set up a process that renders chunk after chunk: glibc's malloc keeps the freed
    temporaries (a few dozen (h, w) arrays per chunk) for the next chunk, instead of handing
    them back and faulting in zeroed pages again; the peak resident set stays one chunk's."""
    keep_freed_memory(max(RENDER_HEAP_FLOOR_BYTES, 16 * chunk_px * chunk_px))


def _start_worker(scene: Scene, chunk_px: int) -> None:
    global _worker_scene
    _worker_scene = scene
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    prepare_worker(chunk_px)


def _render_in_worker(box: Box) -> tuple[np.ndarray, np.ndarray]:
    return _render_box(_worker_scene, box)


def synth_workers(chunks: int) -> int:
    """Processes that render chunks: one per core, none extra for a small slide."""
    return min(os.cpu_count() or 1, 8) if chunks >= PARALLEL_MIN_CHUNKS else 1


def rendered_chunks(
    scene: Scene, boxes: Iterable[Box], workers: int
) -> Iterator[tuple[Box, np.ndarray, np.ndarray]]:
    """(box, rgb, mask) for each box, in order. Each chunk is a pure function of the scene and
    its coordinates, so rendering them in `workers` processes gives the same bytes; at most
    two chunks per worker are in flight, so memory stays a few chunks."""
    if workers <= 1:
        for box in boxes:
            yield box, *_render_box(scene, box)
        return
    # spawn, not fork: the parent may hold BLAS or MLX threads, which a fork does not copy
    context = multiprocessing.get_context("spawn")
    boxes = list(boxes)
    chunk_px = max(max(box.hw) for box in boxes)
    with ProcessPoolExecutor(workers, context, _start_worker, (scene, chunk_px)) as pool:
        todo = iter(boxes)
        pending = deque(
            (b, pool.submit(_render_in_worker, b)) for b in itertools.islice(todo, 2 * workers)
        )
        while pending:
            box, future = pending.popleft()
            for following in itertools.islice(todo, 1):
                pending.append((following, pool.submit(_render_in_worker, following)))
            yield box, *future.result()


def synth_slide(
    path: str | os.PathLike,
    size_hw: tuple[int, int] = DEFAULT_SLIDE_HW,
    seed: int = 0,
    chunk_px: int = DEFAULT_CHUNK_PX,
    progress: ChunkProgress | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> Path:
    """Write a synthetic H&E-like slide and its true tissue mask as a slide store.

    Args:
        path: where the store goes (created atomically: a killed run leaves no store there).
        size_hw: (H, W) in pixels, any size; memory stays around a few chunks.
        seed: the same seed and size give the same pixels whatever `chunk_px` and `workers`.
        chunk_px: side of the square chunks rendered, written and stored.
        progress: optional callable(done_chunks, total_chunks).
        overwrite: replace an existing store at `path`.
        workers: processes rendering chunks (None: one per core for slides of at least
            PARALLEL_MIN_CHUNKS chunks, else 1).

    Returns:
        The store path; `open_store(path).image` is (H, W, 3) uint8, `.mask` (H, W) 0/1.
    """
    check_seed(seed)
    check_chunk_px(chunk_px)
    scene = make_scene(size_hw, seed)
    attrs = {"source": "synth", "seed": seed, "synth_version": SYNTH_VERSION, "mpp": 0.5}
    boxes = list(chunk_boxes(size_hw, chunk_px))
    workers = synth_workers(len(boxes)) if workers is None else workers
    start = time.perf_counter()
    with StoreWriter(
        path, size_hw, chunk_px, attrs=attrs, overwrite=overwrite, progress=progress
    ) as writer:
        for box, rgb, mask in rendered_chunks(scene, boxes, workers):
            writer.write_image(box, rgb)
            writer.write_mask(box, mask)
        filled_px = fill_every_hole(writer.masks[0])
        out = writer.finish()
    log.info(
        "synth %dx%d (HxW) seed %d: %.1f s (%d worker(s)); %d px of enclosed glass in the mask",
        *size_hw,
        seed,
        time.perf_counter() - start,
        workers,
        filled_px,
    )
    return out


def cache_dir() -> Path:
    """$GIGAMLX_CACHE, else ~/.cache/gigamlx."""
    return Path(os.environ.get("GIGAMLX_CACHE") or Path.home() / ".cache" / "gigamlx")


def default_slide(
    cache: str | os.PathLike | None = None,
    size_hw: tuple[int, int] = DEFAULT_SLIDE_HW,
    seed: int = 0,
    progress: ChunkProgress | None = None,
) -> Path:
    """The default synthetic slide, generated once into the cache and reused afterwards.

    The default (16384, 65536) holds the headline 16000x64000 region. Generating it is one
    pass of about 1024 chunks, a minute or two on a laptop-class CPU, in a few hundred MB,
    and ~2.3 GB on disk (the pixel noise barely compresses). A killed generation leaves only a
    hidden partial directory.

    Args:
        cache: directory to keep it in; default $GIGAMLX_CACHE or ~/.cache/gigamlx.
        size_hw: (H, W) of the slide.
        seed: layout and noise seed.
        progress: optional callable(done_chunks, total_chunks), only called when generating.

    Returns:
        Path of the store.
    """
    path = (
        Path(cache or cache_dir())
        / f"synth-v{SYNTH_VERSION}-s{seed}-{size_hw[0]}x{size_hw[1]}.zarr"
    )
    try:
        open_store(path)
        return path
    except StoreError:
        if path.exists():
            raise
    log.info("generating the default synthetic slide %s (once)", path)
    try:
        return synth_slide(path, size_hw, seed, progress=progress)
    except FileExistsError:  # another process finished first
        open_store(path)
        return path
