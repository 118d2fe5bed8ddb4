"""Frame-wide facts of a threshold segmentation, and how a tile's window uses them.

Computed before a frame's tiles (:class:`FrameFacts`): the histogram-matching table and the
Otsu-type filter thresholds from the whole frame; the peak search's box, whether there is
background, which background regions are holes (:func:`join_background`) and the watershed
markers (:mod:`.markers`) from the tiles' cores, reduced once per frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FrameFacts", "join_background", "holes_in_window"]


@dataclass(frozen=True)
class FrameFacts:
    """Frame-wide facts of a threshold segmentation, computed before its tiles (never mutated).

    Attributes
    ----------
    equalize_reference : array or None
        The reference frame's pixels for histogram matching (movie statistics; dropped once the
        frame's own table is computed).
    equalize_table : (values, mapped) or None
        The frame's histogram-matching table: each pixel value and what it maps to.
    filter_params : dict or None
        Frame-wide filter arguments (Otsu-type thresholds) per filter, in filter order.
    whole : bool
        The frame must be segmented whole (NaNs, or no background at all).
    reduced : bool
        The tiles' partial facts were reduced (``roi`` and the holes below are known).
    roi : (y0, y1, x0, x1) or None
        Box of the foreground inside skimage's peak-search border (None: no foreground there).
    holes, hole_offsets, tile, grid_cols : arrays, tuple, int or None
        Hole filling across tiles: which background components (numbered per core, offset per
        core) are holes of the frame, and the core grid they are numbered on.
    markers : (n, 2) int array or None
        The frame's watershed markers (frame coordinates), found tile by tile (see
        :mod:`.markers`); None until reduced.
    """

    equalize_reference: np.ndarray | None = None
    equalize_table: tuple[np.ndarray, np.ndarray] | None = None
    filter_params: dict[int, Any] | None = None
    whole: bool = False
    reduced: bool = False
    roi: tuple[int, int, int, int] | None = None
    holes: np.ndarray | None = None
    hole_offsets: np.ndarray | None = None
    tile: tuple[int, int] | None = None
    grid_cols: int | None = None
    markers: np.ndarray | None = None


def join_background(partials: list, plan) -> dict[str, Any]:
    """Which background components of the cores are holes of the frame (union across cores)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    gy, gx = plan.grid
    counts = np.asarray([p["n"] for p in partials], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])[:-1]
    total = int(counts.sum())
    rows, cols = [], []
    for k, p in enumerate(partials):
        i, j = divmod(k, gx)
        for nb, mine, theirs in (((i, j + 1), p["sides"][3], 2), ((i + 1, j), p["sides"][1], 0)):
            if nb[0] >= gy or nb[1] >= gx:
                continue
            kk = nb[0] * gx + nb[1]
            other = partials[kk]["sides"][theirs]
            both = (mine > 0) & (other > 0)
            if both.any():
                pairs = np.unique(np.stack([mine[both] + offsets[k], other[both] + offsets[kk]]), axis=1)
                rows.append(pairs[0])
                cols.append(pairs[1])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    # global ids 1..total (0 unused)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total + 1, total + 1))
    _, comp = connected_components(graph, directed=False)
    touches = np.concatenate([[False]] + [p["touches"][1:] for p in partials])
    outside = np.zeros(comp.max() + 1, bool)
    np.logical_or.at(outside, comp[touches], True)
    holes = ~outside[comp]
    holes[0] = False
    return {"holes": holes, "hole_offsets": offsets, "tile": tuple(plan.tile), "grid_cols": gx}


def holes_in_window(ctx, stats) -> np.ndarray:
    """Pixels of the window that are frame holes (background filled by hole filling)."""
    aux = ctx.aux
    if aux is None:
        raise RuntimeError("hole filling in a tile needs the background components stored by tile_stats")
    oy, ox = ctx.origin
    ty, tx = stats.tile
    H, W = aux.shape
    ti = (np.arange(oy, oy + H) // ty)[:, None]
    tj = (np.arange(ox, ox + W) // tx)[None, :]
    k = ti * stats.grid_cols + tj
    glob = stats.hole_offsets[k] + aux
    return (aux > 0) & stats.holes[glob]
