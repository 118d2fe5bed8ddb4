"""Watershed markers as a frame fact: candidate peaks found tile by tile, spaced once per frame.

skimage's ``peak_local_max(distance, footprint, labels=mask, min_distance)`` keeps, in order of
decreasing distance (ties in raster order), each local maximum farther than ``min_distance`` from
every maximum kept before it. That greedy rule is sequential over the whole frame: a peak can
suppress one that would have suppressed a third, so in a dense field the markers of one clump
depend on clumps far away. Tiles that each ran the rule on their own window had to treat every
object within the spacing of another as one cluster, and in dense fields those clusters chained
across the frame.

Here the rule is split where it is local and where it is not:

1. each tile lists the *candidates* of its core — pixels of the mask that are the maximum of the
   distance over the footprint — and certifies that every decision (candidate or not) is the
   whole frame's: see :func:`core_candidates`;
2. the frame's reduction sorts all candidates and applies the spacing rule once
   (:func:`frame_markers`), on a list of a few thousand points;
3. every window then takes the frame's markers that fall inside it, so an object depends only
   on its own connected component of the mask (its distance map, its markers), and a cluster is
   bounded by the clump, not by the field.

Numpy and scipy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["clamp_safe", "core_candidates", "footprint_of", "frame_markers", "greedy_spacing", "local_maxima",
           "markers_in_window", "search_box"]


def greedy_spacing(coords: np.ndarray, spacing: int) -> np.ndarray:
    """Keep points in order, dropping any within Chebyshev distance < ``spacing`` of a kept one.

    The rule of skimage's ``ensure_spacing`` (as ``peak_local_max`` uses it), done in batches so
    that plateaus with many candidate peaks cannot blow up memory.
    """
    from scipy.spatial import cKDTree

    kept = coords[:0]
    start, size = 0, 50
    while start < len(coords):
        batch = coords[start:start + size]
        start += len(batch)
        size = min(2 * size, 2000)
        pts = np.vstack([kept, batch])
        near = cKDTree(pts).query_ball_point(pts, r=spacing, p=np.inf)
        rejected = np.zeros(len(pts), bool)
        for i, cand in enumerate(near):
            if rejected[i]:
                continue
            cand = np.asarray([c for c in cand if c != i], dtype=np.int64)
            if len(cand):
                d = np.abs(pts[cand] - pts[i]).max(axis=1)
                rejected[cand[d < spacing]] = True
        kept = pts[~rejected]
    return kept


def local_maxima(img: np.ndarray, mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose value is the maximum of ``img`` over ``footprint`` (edges clamped).

    ``img`` is the distance map of the search box; pixels outside the mask count as minus
    infinity, and only positive distances qualify (skimage's ``threshold_abs`` of 0 on a frame
    that has background).
    """
    img = img.copy()
    img[~mask] = np.finfo(img.dtype).min
    if footprint.size == 1:
        return img > 0
    return (img == ndi.maximum_filter(img, footprint=footprint, mode="nearest")) & (img > 0)


def search_box(frame_shape: tuple[int, int], min_distance: int) -> tuple[int, int, int, int]:
    """The largest box skimage searches for peaks: the frame without a border of ``min_distance``."""
    Y, X = frame_shape
    return min_distance, Y - min_distance, min_distance, X - min_distance


def clamp_safe(footprint: np.ndarray) -> bool:
    """Whether, for every offset the footprint holds, it holds every offset between it and the centre.

    For such footprints (squares, rectangles, discs, diamonds) the maximum over a box with clamped
    edges equals the maximum over the footprint inside the box, so searching the largest box
    instead of the foreground's (a frame fact known only after the tiles) changes no decision.
    """
    fp = np.asarray(footprint, bool)
    cy, cx = (s // 2 for s in fp.shape)
    for y, x in np.argwhere(fp):
        ys = slice(min(y, cy), max(y, cy) + 1)
        xs = slice(min(x, cx), max(x, cx) + 1)
        if not fp[ys, xs].all():
            return False
    return True


def _depth_to_cut(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                  artificial: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """For window rows x cols: how many window pixels lie between each and the nearest artificial edge."""
    H, W = shape
    big = H + W
    top, bottom, left, right = artificial
    dy = np.minimum(rows if top else big, H - 1 - rows if bottom else big)
    dx = np.minimum(cols if left else big, W - 1 - cols if right else big)
    return np.minimum(np.broadcast_to(dy, rows.shape)[:, None], np.broadcast_to(dx, cols.shape)[None, :])


def core_candidates(distance: np.ndarray, binary: np.ndarray, ctx: Any, core: tuple[slice, slice],
                    footprint: np.ndarray, min_distance: int, filter_reach: int) -> dict[str, Any]:
    """The candidate peaks of a tile's core, each decision certified to be the whole frame's.

    A pixel's mask value is exact ``filter_reach`` pixels from a cut. Its distance value ``d``
    is exact when every pixel within ``d + 2`` of it is: then the window sees the same nearest
    background as the frame (the ``+ 2`` covers the lattice between the distance disc and that
    pixel). A pixel's decision is exact when every pixel of its footprint is. A core whose mask
    pixels are not all certified (an object wider than the window's padding) is *uncertain*: the
    frame is then segmented whole.

    Returns
    -------
    dict
        ``values`` (float64 distances) and ``flat`` (frame raster indices) of the candidates,
        ``uncertain`` and ``trivial`` (every mask pixel of the core is a maximum).
    """
    (Y, X), (oy, ox) = ctx.frame_shape, ctx.origin
    H, W = binary.shape
    b0, b1, c0, c1 = search_box((Y, X), min_distance)
    y0, y1, x0, x1 = max(b0 - oy, 0), min(b1 - oy, H), max(c0 - ox, 0), min(c1 - ox, W)
    cy, cx = core
    # the core's part of the search box, in box coordinates
    ky0, ky1 = max(cy.start, y0) - y0, min(cy.stop, y1) - y0
    kx0, kx1 = max(cx.start, x0) - x0, min(cx.stop, x1) - x0
    empty = {"values": np.zeros(0), "flat": np.zeros(0, np.int64), "uncertain": False, "trivial": True}
    if y0 >= y1 or x0 >= x1 or ky0 >= ky1 or kx0 >= kx1:
        return empty
    img, mask = distance[y0:y1, x0:x1], binary[y0:y1, x0:x1]
    # A core pixel's maximum looks no farther than the footprint's reach: search the core and
    # that rim, not the whole padded window (edges of the box are clamped alike in both).
    ry, rx = footprint.shape[0] // 2, footprint.shape[1] // 2
    sy0, sy1, sx0, sx1 = max(ky0 - ry, 0), min(ky1 + ry, y1 - y0), max(kx0 - rx, 0), min(kx1 + rx, x1 - x0)
    k = (slice(ky0 - sy0, ky1 - sy0), slice(kx0 - sx0, kx1 - sx0))
    o = local_maxima(img[sy0:sy1, sx0:sx1], mask[sy0:sy1, sx0:sx1], footprint)[k]
    k = (slice(ky0, ky1), slice(kx0, kx1))
    m = mask[k]
    ys, xs = np.nonzero(o)
    uncertain = m.any() and _uncertain(img, mask, k, (y0, x0), (H, W), ctx.artificial, footprint, filter_reach)
    return {"values": img[k][o].astype(np.float64),
            "flat": (ys + ky0 + y0 + oy).astype(np.int64) * X + (xs + kx0 + x0 + ox),
            "uncertain": bool(uncertain), "trivial": bool(o[m].all())}


def _uncertain(img: np.ndarray, mask: np.ndarray, k: tuple[slice, slice], origin: tuple[int, int],
               shape: tuple[int, int], artificial: tuple[bool, bool, bool, bool], footprint: np.ndarray,
               filter_reach: int) -> bool:
    """Whether a mask pixel of the core ``k`` (box coordinates; the box at ``origin`` of a window
    of ``shape``) has a footprint pixel whose value may differ from the frame's.

    A pixel ``q`` is exact when its depth to the nearest cut is at least ``need(q)``, at most
    ``reach = filter_reach + 2 + ceil(max distance)``; a pixel whose footprint (half-size ``r``)
    holds an inexact one is within ``reach + r`` of a cut. So only strips of that depth along
    the artificial sides are looked at, each with ``r`` more rows of context so that its minimum
    filter is the whole box's where it is read.
    """
    (y0, x0), (H, W), (h, w) = origin, shape, mask.shape
    reach = filter_reach + 2 + int(np.ceil(img[mask].max()))
    r = max(footprint.shape) // 2
    depth = reach + r  # pixels this deep or deeper are certified
    top, bottom, left, right = artificial
    # (strip rows, strip cols, rows/cols read) per artificial side, in box coordinates
    strips = []
    if top:
        strips.append(((0, min(h, depth + r - y0)), (0, w), (slice(0, max(0, depth - y0)), slice(None))))
    if bottom:
        lo = max(0, H - depth - r - y0)
        strips.append(((lo, h), (0, w), (slice(max(0, H - depth - y0) - lo, None), slice(None))))
    if left:
        strips.append(((0, h), (0, min(w, depth + r - x0)), (slice(None), slice(0, max(0, depth - x0)))))
    if right:
        lo = max(0, W - depth - r - x0)
        strips.append(((0, h), (lo, w), (slice(None), slice(max(0, W - depth - x0) - lo, None))))
    core = np.zeros((h, w), bool)
    core[k] = mask[k]
    for (a, b), (c, d), read in strips:
        if a >= b or c >= d or not core[a:b, c:d][read].any():
            continue
        sub_img, sub_mask = img[a:b, c:d], mask[a:b, c:d]
        need = np.where(sub_mask, filter_reach + 2 + np.ceil(sub_img).astype(np.int64), filter_reach)
        cut = _depth_to_cut(np.arange(a, b) + y0, np.arange(c, d) + x0, shape, artificial)
        exact = (cut >= need).view(np.uint8)
        certified = ndi.minimum_filter(exact, footprint=footprint, mode="nearest") > 0
        if (core[a:b, c:d][read] & ~certified[read]).any():
            return True
    return False


def frame_markers(partials: list[dict[str, Any]], frame_shape: tuple[int, int], min_distance: int,
                  roi: tuple[int, int, int, int] | None, footprint_size: int) -> np.ndarray | None:
    """The frame's markers (``(n, 2)`` frame coordinates) from its cores' candidates.

    Returns None when the frame must be segmented whole: a core was uncertain, or every mask
    pixel is a maximum (skimage's 'trivial image' rule, which only the whole frame can apply).
    """
    if roi is None:
        return np.zeros((0, 2), np.int64)
    if any(p["uncertain"] for p in partials):
        return None
    roi_size = (roi[1] - roi[0]) * (roi[3] - roi[2])
    if footprint_size > 1 and roi_size > 1 and all(p["trivial"] for p in partials):
        return None
    values = np.concatenate([p["values"] for p in partials])
    flat = np.concatenate([p["flat"] for p in partials])
    order = np.lexsort((flat, -values))  # decreasing distance, ties in raster order
    X = frame_shape[1]
    coords = np.stack([flat[order] // X, flat[order] % X], axis=1)
    if len(coords) and min_distance > 1:
        coords = greedy_spacing(coords, min_distance)
    return coords.astype(np.int64)


def markers_in_window(markers: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A peak mask of the window holding the frame's markers that fall inside it."""
    (oy, ox), (H, W) = origin, shape
    peaks = np.zeros((H, W), bool)
    if len(markers):
        y, x = markers[:, 0] - oy, markers[:, 1] - ox
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        peaks[y[inside], x[inside]] = True
    return peaks


def footprint_of(marker_footprint, marker_footprint_size: int) -> np.ndarray:
    """The peak search's footprint: the explicit one, or a square of the given size."""
    if marker_footprint is not None:
        return np.asarray(marker_footprint)
    return np.ones((marker_footprint_size, marker_footprint_size))

