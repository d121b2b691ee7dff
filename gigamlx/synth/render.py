"""Reproducible H&E-like synthetic slides with a known tissue mask, rendered chunk by chunk.

Every pixel is a pure function of (seed, y, x): the same seed gives the same bytes whatever
`chunk_px`, and memory stays bounded by one chunk whatever the slide size.

What each part models, and its label (mask 1 = tissue):
- tissue pieces: lobed shapes with noisy edges, eosin fibres and haematoxylin nuclei;
  some pale, some (the slide's `faint_share`) barely stained: tissue.
- slide style (drawn from the seed): stain strength and hue, glass tint, dust density and
  how much of the slide is out of focus: a threshold tuned on one slide fails on another.
- holes (tears, lumina): glass inside tissue, within the tissue region a pathologist outlines:
  tissue (the network cannot see across a wide one; the tissue mask's hole filling does).
- fat: white cells with thin stained septa inside tissue: tissue (artefacts.py).
- folds: tissue folded over itself, twice the stain: tissue.
- defocus: patches with soft nuclei, faded fibres and wide edges: labels unchanged.
- bubbles: dark rims and brighter insides: labelled by what is under them.
- dust and pen marks: dark specks and coloured strokes painted on top: labels unchanged
  (background on glass, which is where most of them lie).
- background: tinted glass, uneven illumination and sensor grain: background.
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
from typing import NamedTuple

import numpy as np

from gigamlx.core.geometry import Box
from gigamlx.core.progress import ChunkProgress
from gigamlx.runs.config import DEFAULT_CHUNK_PX, DEFAULT_SLIDE_HW, check_seed
from gigamlx.slide.store import (
    StoreError,
    StoreWriter,
    chunk_boxes,
    open_store,
)
from gigamlx.slide.written import check_chunk_px
from gigamlx.synth.artefacts import bubble_shade, defocus, fat
from gigamlx.synth.noise import fbm, uniform, value_noise
from gigamlx.synth.scene import BOUNDARY_NOISE, Ellipse, Scene, Stroke, make_scene

log = logging.getLogger(__name__)

SYNTH_VERSION = 3  # 2: slide styles, faint tissue, fat, bubbles, defocus; 3: holes labelled tissue
DUST_RGB = np.array([70.0, 66.0, 62.0], np.float32)
NUCLEUS_CELL_PX = 16
EDGE_FADE = 0.015  # stain fades in over this normalized distance inside the edge
DUST_CELL_PX = 64
F32 = np.float32


def _window(ys: np.ndarray, xs: np.ndarray, box: Box) -> tuple[slice, slice] | None:
    """Index window of the sampled coordinates that fall inside `box`, or None."""
    r0, r1 = np.searchsorted(ys, [box.y0, box.y1])
    c0, c1 = np.searchsorted(xs, [box.x0, box.x1])
    return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None


def _ellipse_field(e: Ellipse, ysf: np.ndarray, xsf: np.ndarray) -> np.ndarray:
    """1 - normalized distance to the ellipse center: > 0 inside. (h, w) float32."""
    dy, dx = ysf[:, None] - F32(e.cy), xsf[None, :] - F32(e.cx)
    u = (dy * F32(e.cos) + dx * F32(e.sin)) * F32(1 / e.a)
    v = (dx * F32(e.cos) - dy * F32(e.sin)) * F32(1 / e.b)
    return F32(1) - np.sqrt(u * u + v * v)


def _max_field(ellipses, ys, xs, ysf, xsf, grow: float, values=None):
    """Max of the ellipse fields (-2 where none reaches) and, optionally, the argmax's value."""
    best = np.full((len(ys), len(xs)), -2.0, np.float32)
    chosen = np.zeros_like(best)
    for i, e in enumerate(ellipses):
        win = _window(ys, xs, e.bbox(grow))
        if win is None:
            continue
        field = _ellipse_field(e, ysf[win[0]], xsf[win[1]])
        better = field > best[win]
        best[win] = np.where(better, field, best[win])
        if values is not None:
            chosen[win] = np.where(better, F32(values[i]), chosen[win])
    return best, chosen


def _tissue(scene: Scene, ys, xs, ysf, xsf, blur):
    """Tissue region (h, w) bool, stain density (h, w) float32, fold factor (h, w) and the fat
    patches (h, w) bool: fat is tissue, its cells unstained and its membranes stained; holes are
    glass in the image (no stain) and tissue in the region, as a pathologist outlines it."""
    noise = fbm(scene.seed * 977 + 1, ys, xs, scene.boundary_px, 5) * F32(BOUNDARY_NOISE)
    lobes = [(lobe, p.stain) for p in scene.pieces for lobe in p.lobes]
    best, stain = _max_field(
        [e for e, _ in lobes], ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE, [s for _, s in lobes]
    )
    strength = best + noise
    hole_best, _ = _max_field(scene.holes, ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE / 2)
    fat_best, _ = _max_field(scene.fat, ys, xs, ysf, xsf, 1 + BOUNDARY_NOISE / 2)
    in_fat = (fat_best + noise * F32(0.5) > 0) & (strength > F32(-0.05))
    region = (strength > 0) | in_fat
    tissue = region & ~(hole_best - noise * F32(0.5) > 0) | in_fat
    fade = F32(EDGE_FADE) * (F32(1) + F32(4) * blur)  # out of focus: softer edges
    density = np.clip(strength / fade, 0, 1) * stain * tissue
    septa = fat(scene, ys, xs, in_fat)
    density = np.where(in_fat, np.maximum(stain, F32(0.5)) * F32(0.7) * septa, density)
    fold_best, _ = _max_field(scene.folds, ys, xs, ysf, xsf, 1.0)
    fold = np.clip(fold_best * F32(4), 0, 1)
    return region, density, F32(1) + F32(0.9) * fold, in_fat


def _discs(
    key: int, ys, xs, ysf, xsf, cell_px: int, radius_px: tuple[float, float], presence, soft=1
):
    """One soft disc per cell at a hashed position, kept with probability `presence` (a float,
    or a function of the cells' (ly, lx) giving (ny, nx)); `soft` (scalar or (h, w)) widens
    the disc's edge, 1 = one pixel (defocus).

    Returns:
        (h, w) float32 coverage in [0, 1].
    """
    cy, cx = ys // cell_px, xs // cell_px
    ly, lx = np.arange(cy[0], cy[-1] + 1), np.arange(cx[0], cx[-1] + 1)
    per_row, per_col = np.bincount(cy - cy[0]), np.bincount(cx - cx[0])  # pixels per cell

    def draw(salt: int) -> np.ndarray:
        return uniform(key + salt, ly[:, None], lx[None, :])  # (ny, nx): one value per cell

    # Each cell's radius and centre, computed once per cell rather than once per pixel
    r = F32(radius_px[0]) + F32(radius_px[1] - radius_px[0]) * draw(1)  # (ny, nx)
    span = F32(cell_px) - F32(2) * r
    oy = (ly * cell_px).astype(np.float32)[:, None] + r + span * draw(2)
    ox = (lx * cell_px).astype(np.float32)[None, :] + r + span * draw(3)
    # r * r - dy * dy varies along x only from cell to cell, and dx * dx along y: each is
    # evaluated at (h, nx) or (ny, w) and repeated out to (h, w)
    dy = ysf[:, None] - np.repeat(oy, per_row, axis=0)  # (h, nx)
    reach = np.repeat(r * r, per_row, axis=0) - dy * dy
    dx = xsf[None, :] - np.repeat(ox, per_col, axis=1)  # (ny, w)
    disc = np.repeat(reach, per_col, axis=1)  # (h, w)
    disc -= np.repeat(dx * dx, per_row, axis=0)
    edge = _per_pixel(F32(2) * r, per_row, per_col)
    if not np.isscalar(soft):
        edge *= soft
    disc /= edge
    disc += F32(0.5)
    np.clip(disc, 0, 1, out=disc)
    keep = draw(4) < (presence(ly, lx) if callable(presence) else F32(presence))
    disc *= _per_pixel(keep, per_row, per_col)
    return disc


def _per_pixel(per_cell: np.ndarray, per_row: np.ndarray, per_col: np.ndarray) -> np.ndarray:
    """(ny, nx) cell values repeated out to the (h, w) pixels: `per_row` pixels per cell row."""
    return np.repeat(np.repeat(per_cell, per_row, axis=0), per_col, axis=1)


def _nuclei(scene: Scene, ys, xs, ysf, xsf, blur) -> np.ndarray:
    """Nuclei-like purple texture in [0, 1], denser in 'cellular' regions. (h, w) float32."""
    key = scene.seed * 977 + 5
    cell = NUCLEUS_CELL_PX

    def presence(ly, lx):  # cellularity sampled at cell centers, so a nucleus is whole or absent
        cellular = value_noise(key + 2, ly * cell + cell // 2, lx * cell + cell // 2, (384, 384))
        return F32(0.15) + F32(0.75) * cellular  # (ny, nx)

    soft = F32(1) + F32(5) * blur
    disc = _discs(key, ys, xs, ysf, xsf, cell, (2.5, 5.5), presence, soft)
    chromatin = F32(0.7) + F32(0.3) * uniform(key + 3, ys[:, None], xs[None, :])
    return disc * chromatin / (F32(1) + F32(0.6) * blur)


def _stroke_alpha(stroke: Stroke, ys, xs, ysf, xsf):
    """Coverage of a pen stroke: (window, alpha) with alpha the (rows, cols) float32 coverage
    inside `window` (a pair of slices of the sampled grid) and 0 outside; None if it misses."""
    hw, windows = stroke.half_width_px, []
    for (y0, x0), (y1, x1) in zip(stroke.points[:-1], stroke.points[1:], strict=True):
        box = Box(
            int(min(y0, y1) - hw - 2),
            int(min(x0, x1) - hw - 2),
            int(max(y0, y1) + hw + 2),
            int(max(x0, x1) + hw + 2),
        )
        win = _window(ys, xs, box)
        if win is not None:
            windows.append(((y0, x0), (y1, x1), win))
    if not windows:
        return None
    top, left = min(w[0].start for *_, w in windows), min(w[1].start for *_, w in windows)
    bottom, right = max(w[0].stop for *_, w in windows), max(w[1].stop for *_, w in windows)
    alpha = np.zeros((bottom - top, right - left), F32)
    for (y0, x0), (y1, x1), win in windows:
        vy, vx = F32(y1 - y0), F32(x1 - x0)
        py, px = ysf[win[0]][:, None] - F32(y0), xsf[win[1]][None, :] - F32(x0)
        t = np.clip((py * vy + px * vx) * F32(1 / max(float(vy * vy + vx * vx), 1e-6)), 0, 1)
        ey, ex = py - t * vy, px - t * vx
        cover = np.clip(F32(hw) - np.sqrt(ey * ey + ex * ex) + F32(0.5), 0, 1) * F32(0.8)
        rows = slice(win[0].start - top, win[0].stop - top)
        cols = slice(win[1].start - left, win[1].stop - left)
        alpha[rows, cols] = np.maximum(alpha[rows, cols], cover)
    return (slice(top, bottom), slice(left, right)), alpha


def _illumination(scene: Scene, ys, xs, ysf, xsf) -> np.ndarray:
    """Uneven illumination: vignette plus a slow drift, about 0.85-1.0. (h, w) float32."""
    h, w = scene.image_hw
    ry = ysf * F32(2 / h) - F32(1)
    rx = xsf * F32(2 / w) - F32(1)
    drift_px = int(2 ** max(6, round(np.log2(max(min(h, w), 2) / 2))))
    light = fbm(scene.seed * 977 + 7, ys, xs, drift_px, 2)
    light *= F32(0.03)
    light += (F32(1) - F32(0.06) * (ry * ry))[:, None] - F32(0.06) * (rx * rx)[None, :]
    return light


def _stain(scene: Scene, ys, xs, ysf, xsf, blur, density, fold):
    """Eosin and haematoxylin amounts per pixel, (h, w) float32 each."""
    fiber = value_noise(scene.seed * 977 + 9, ys, xs, (5, 37))
    eosin = density * fold * (F32(0.45) + F32(0.55) * fiber * (F32(1) - F32(0.8) * blur))
    nuclei = _nuclei(scene, ys, xs, ysf, xsf, blur)
    hema = density * fold * (F32(0.08) + F32(0.9) * nuclei)
    return eosin, hema


def _nonzero_window(values: np.ndarray) -> tuple[slice, slice] | None:
    """Smallest window of `values` (h, w) holding all its nonzero pixels, or None."""
    rows, cols = np.flatnonzero(values.any(axis=1)), np.flatnonzero(values.any(axis=0))
    if not len(rows):
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def render(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render the slide at sampled global coordinates.

    Args:
        scene: layout from `make_scene`.
        ys: (h,) ascending row coordinates, ints >= 0 (a chunk's rows, or a strided preview).
        xs: (w,) ascending column coordinates.

    Returns:
        rgb (h, w, 3) uint8 and tissue mask (h, w) uint8 (0/1).
    """
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    ysf, xsf = ys.astype(np.float32), xs.astype(np.float32)
    style = scene.style
    blur = defocus(scene, ys, xs)
    tissue, density, fold, _ = _tissue(scene, ys, xs, ysf, xsf, blur)
    # Stain is computed only where density is nonzero: elsewhere it is 0 and subtracting 0
    # leaves the glass colour exactly
    stained = _nonzero_window(density)
    if stained:
        rows, cols = stained
        sub = (ys[rows], xs[cols], ysf[rows], xsf[cols])
        stain = _stain(scene, *sub, blur[stained], density[stained], fold[stained])
    grain = uniform(scene.seed * 977 + 11, ys[:, None], xs[None, :])
    grain -= F32(0.5)
    grain *= F32(12)
    light = _illumination(scene, ys, xs, ysf, xsf) * bubble_shade(scene, ysf, xsf)
    dust = _dust(scene, ys, xs, ysf, xsf).ravel()
    specks = np.flatnonzero(dust)  # blending where the coverage is 0 changes nothing
    specks_weight = dust[specks] * F32(0.85)
    strokes = [(st.ink_rgb, _stroke_alpha(st, ys, xs, ysf, xsf)) for st in scene.strokes]
    rgb = np.empty((len(ys), len(xs), 3), np.uint8)
    for c in range(3):  # one (h, w) plane per channel: numpy is slow on a last axis of 3
        plane = np.full((len(ys), len(xs)), np.array(style.background_rgb, F32)[c], F32)
        if stained:
            plane[stained] -= stain[0] * np.array(style.eosin_od, F32)[c]
            plane[stained] -= stain[1] * np.array(style.hema_od, F32)[c]
        plane *= light
        plane += grain
        flat = plane.ravel()
        flat[specks] += specks_weight * (DUST_RGB[c] - flat[specks])  # dust specks, then pen
        for ink_rgb, covered in strokes:
            if covered:
                win, alpha = covered
                plane[win] += alpha * (np.array(ink_rgb, np.float32)[c] - plane[win])
        np.rint(plane, out=plane)
        np.clip(plane, 0, 255, out=plane)
        rgb[..., c] = plane
    return rgb, tissue.view(np.uint8)


def _dust(scene: Scene, ys, xs, ysf, xsf) -> np.ndarray:
    """Coverage (h, w) in [0, 1] of the dust specks."""
    return _discs(
        scene.seed * 977 + 13, ys, xs, ysf, xsf, DUST_CELL_PX, (1.5, 6.0), scene.style.dust
    )


class Layers(NamedTuple):
    """Where the renderer drew each kind of thing, (h, w) bool each: what a model's errors on a
    synthetic slide can be attributed to (scripts/error_anatomy.py)."""

    tissue: np.ndarray  # the label
    fat: np.ndarray  # fat patches: tissue, most of it as white as glass
    faint: np.ndarray  # tissue outside fat with stain density < FAINT_DENSITY (pale pieces, edges,
    # holes)
    pen: np.ndarray  # under a pen stroke (coverage >= 5 %)
    dust: np.ndarray  # under a dust speck (coverage >= 5 %)
    bubble_rim: np.ndarray  # under a bubble's dark rim (light dimmed by >= 3 %)
    defocus: np.ndarray  # in an out-of-focus patch (blur >= 0.5)


FAINT_DENSITY = 0.1  # below this stain density tissue differs from glass by a few grey levels


def scene_layers(scene: Scene, ys: np.ndarray, xs: np.ndarray) -> Layers:
    """The layers of `scene` at sampled global coordinates, like `render` (same arguments)."""
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    ysf, xsf = ys.astype(np.float32), xs.astype(np.float32)
    blur = defocus(scene, ys, xs)
    tissue, density, _, in_fat = _tissue(scene, ys, xs, ysf, xsf, blur)
    pen = np.zeros(tissue.shape, bool)
    for stroke in scene.strokes:
        covered = _stroke_alpha(stroke, ys, xs, ysf, xsf)
        if covered:
            pen[covered[0]] |= covered[1] >= F32(0.05)
    return Layers(
        tissue=tissue,
        fat=in_fat,
        faint=tissue & ~in_fat & (density < F32(FAINT_DENSITY)),
        pen=pen,
        dust=_dust(scene, ys, xs, ysf, xsf) >= F32(0.05),
        bubble_rim=bubble_shade(scene, ysf, xsf) <= F32(0.97),
        defocus=blur >= F32(0.5),
    )


PARALLEL_MIN_CHUNKS = 16  # below this, starting worker processes costs more than it saves
_worker_scene: Scene | None = None


def _render_box(scene: Scene, box: Box) -> tuple[np.ndarray, np.ndarray]:
    return render(scene, np.arange(box.y0, box.y1), np.arange(box.x0, box.x1))


def _start_worker(scene: Scene) -> None:
    global _worker_scene
    _worker_scene = scene
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


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
    with ProcessPoolExecutor(workers, context, _start_worker, (scene,)) as pool:
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
        out = writer.finish()
    log.info(
        "synth %dx%d (HxW) seed %d: %.1f s (%d worker(s))",
        *size_hw,
        seed,
        time.perf_counter() - start,
        workers,
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
    pass of about 1024 chunks, minutes on a laptop-class CPU, in a few hundred MB, and ~2.3 GB
    on disk (the pixel noise barely compresses). A killed generation leaves only a hidden
    partial directory.

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
