"""Binary mask -> polygons with holes that follow pixel edges exactly (for QuPath GeoJSON).

Boundary ("crack") tracing: every edge between a tissue pixel and a background pixel becomes a
unit segment on the pixel lattice, directed so tissue lies on its right (y down): outer rings
run clockwise on screen, holes anticlockwise. Segments are linked into rings; where two tissue
pixels touch only at a corner the ring turns right, so diagonal neighbours stay separate
polygons (4-connectivity). At such a saddle vertex each ring cuts its corner by `SADDLE_CUT_PX`
so that no two rings (or two visits of one ring) touch: the polygons are valid for JTS /
shapely, as QuPath needs. Straight runs are merged. Rasterising the rings at pixel centres
(even-odd, `polygons.rasterize_polygon`) gives the mask back exactly.
"""

from __future__ import annotations

import numpy as np

# direction codes, clockwise on screen: east, south, west, north as (dy, dx)
STEPS_YX = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], np.int64)
SADDLE_CUT_PX = 0.01  # far from every pixel centre: rasterising is unchanged


def _segments(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) start vertices (y, x) and (n,) directions of every boundary segment."""
    m = np.pad(mask.astype(bool), 1)
    starts, dirs = [], []
    # (pixel, neighbour) pairs: top, bottom, left, right edges of tissue pixels
    top = m[1:-1, 1:-1] & ~m[:-2, 1:-1]  # runs east from the pixel's top-left corner
    bottom = m[1:-1, 1:-1] & ~m[2:, 1:-1]  # runs west from its bottom-right corner
    left = m[1:-1, 1:-1] & ~m[1:-1, :-2]  # runs north from its bottom-left corner
    right = m[1:-1, 1:-1] & ~m[1:-1, 2:]  # runs south from its top-right corner
    for edges, offset_yx, direction in (
        (top, (0, 0), 0),
        (right, (0, 1), 1),
        (bottom, (1, 1), 2),
        (left, (1, 0), 3),
    ):
        ys, xs = np.nonzero(edges)
        starts.append(np.stack([ys + offset_yx[0], xs + offset_yx[1]], axis=1))
        dirs.append(np.full(len(ys), direction, np.int64))
    return np.concatenate(starts), np.concatenate(dirs)


def _successors(starts: np.ndarray, dirs: np.ndarray, width: int):
    """((n,) index of the segment that follows each one: right turn, else straight, else left;
    (n,) bool: the segment starts at a saddle vertex, where two segments leave)."""
    key = starts[:, 0] * (width + 2) + starts[:, 1]
    ends = starts + STEPS_YX[dirs]
    end_key = ends[:, 0] * (width + 2) + ends[:, 1]
    vertices, vertex_of = np.unique(key, return_inverse=True)
    table = np.full((len(vertices), 4), -1, np.int64)  # outgoing segment per direction
    table[vertex_of, dirs] = np.arange(len(dirs))
    at_end = np.searchsorted(vertices, end_key)
    nxt = np.full(len(dirs), -1, np.int64)
    for turn in (3, 0, 1):  # left, straight, right (direction + turn): the right turn wins
        candidate = table[at_end, (dirs + turn) % 4]
        nxt = np.where(candidate >= 0, candidate, nxt)
    saddle = (table >= 0).sum(axis=1)[vertex_of] == 2
    return nxt, saddle


def _cycle_labels(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label, order) of a permutation's cycles: label = smallest index in the cycle, order =
    steps from the cycle's smallest index along `nxt`. Pointer doubling, O(n log n) numpy."""
    n = len(nxt)
    label, jump = np.arange(n), nxt.copy()
    # after k rounds label[e] = min over e .. nxt^(2^k - 1)(e); done once each cycle agrees
    while not np.array_equal(label, label[nxt]):
        label = np.minimum(label, label[jump])
        jump = jump[jump]
    head = label == np.arange(n)
    prev = np.empty(n, np.int64)
    prev[nxt] = np.arange(n)
    succ = nxt.copy()
    tails = prev[head]
    succ[tails] = tails  # cut every cycle before its head
    to_tail = np.ones(n, np.int64)
    to_tail[tails] = 0
    while not np.array_equal(succ, succ[succ]):  # list ranking: steps to the tail
        to_tail = to_tail + to_tail[succ]
        succ = succ[succ]
    return label, -to_tail


def _trace(mask: np.ndarray):
    """(rings, starts (n, 2) y,x, dirs (n,), ring index of every segment)."""
    starts, dirs = _segments(mask)
    if len(dirs) == 0:
        return [], starts, dirs, np.zeros(0, np.int64)
    nxt, saddle = _successors(starts, dirs, mask.shape[1])
    label, order = _cycle_labels(nxt)
    prev = np.empty(len(nxt), np.int64)
    prev[nxt] = np.arange(len(nxt))
    keep = np.flatnonzero(dirs != dirs[prev])  # corners: the direction changes here
    keep = keep[np.lexsort((order[keep], label[keep]))]
    _, ring_of = np.unique(label, return_inverse=True)
    points, is_point = _corner_points(starts[keep], dirs[prev[keep]], dirs[keep], saddle[keep])
    ring_ends = np.cumsum(is_point.sum(axis=1))
    cuts = ring_ends[np.flatnonzero(np.diff(label[keep]))]
    rings = []
    for yx in np.split(points, cuts):
        rings.append(np.concatenate([yx, yx[:1]])[:, ::-1])
    return rings, starts, dirs, ring_of


def _corner_points(yx, d_in, d_out, saddle):
    """((m, 2) float y,x ring vertices, (k, 2) bool which of before/after each corner exist):
    a corner, or at a saddle two points `SADDLE_CUT_PX` before and after it."""
    cut = SADDLE_CUT_PX * saddle[:, None]
    before = yx - cut * STEPS_YX[d_in]
    after = yx + cut * STEPS_YX[d_out]
    is_point = np.stack([np.ones(len(yx), bool), saddle], axis=1)
    return np.stack([before, after], axis=1)[is_point], is_point


def trace_rings(mask: np.ndarray) -> list[np.ndarray]:
    """Closed rings of the boundaries of an (H, W) bool mask.

    Returns:
        (n, 2) float64 (x, y) lattice vertices per ring, corners only, first vertex repeated
        last; outer rings clockwise on screen (positive shoelace area with y down), holes
        the other way. Rings are ordered by their first segment in raster order.
    """
    return _trace(mask)[0]


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of an (n, 2) x,y ring; positive for clockwise on screen (y down)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _ring_above(rings, starts, dirs, ring_of, holes: np.ndarray, width: int) -> np.ndarray:
    """For each hole ring, a ring of the same tissue piece whose top row is higher.

    Above the hole's top-left pixel lies tissue; the left edge of that pixel's run of tissue
    in its row belongs to a ring of the same piece: its outer ring or a hole nearer the top.
    """
    lattice = (np.round(rings[i]).astype(np.int64) for i in holes)  # undo the saddle cuts
    top_left = np.array([r[np.lexsort((r[:, 0], r[:, 1]))[0]] for r in lattice])
    targets = (top_left[:, 1] - 1) * (width + 1) + top_left[:, 0]  # pixel (y - 1, x)
    left = np.flatnonzero(dirs == 3)  # a left edge starts at its pixel's bottom-left corner
    keys = (starts[left, 0] - 1) * (width + 1) + starts[left, 1]
    order = np.argsort(keys)
    at = np.searchsorted(keys[order], targets, side="right") - 1
    return ring_of[left[order[at]]]


def mask_polygons(mask: np.ndarray) -> list[list[np.ndarray]]:
    """Polygons (exterior ring, then its holes) of an (H, W) bool mask, in pixel units.

    Returns:
        One list of (n, 2) float64 (x, y) rings per 4-connected piece of tissue, exterior first.
    """
    rings, starts, dirs, ring_of = _trace(mask)
    if not rings:
        return []
    is_hole = np.array([signed_area(r) < 0 for r in rings])
    holes = np.flatnonzero(is_hole)
    parent = np.arange(len(rings))
    if len(holes):
        parent[holes] = _ring_above(rings, starts, dirs, ring_of, holes, mask.shape[1])
    while is_hole[parent].any():  # climb hole -> hole nearer the top -> ... -> outer ring
        parent = np.where(is_hole[parent], parent[parent], parent)
    polygons = {int(i): [rings[i]] for i in np.flatnonzero(~is_hole)}
    for i in holes:
        polygons[int(parent[i])].append(rings[i])
    return list(polygons.values())
