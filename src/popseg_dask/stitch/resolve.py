"""The resolution algorithm: what a tile keeps, what it hands to its neighbours, how a merge grows.

Numpy only: the segmenter, the pixels and the frame's provisional-id canvas come in as plain
objects, so the whole algorithm runs (and is tested) without Dask or Zarr. The invariants that
make it exact are stated in :mod:`popseg_dask.stitch`; the steps are:

1. :func:`segment_window` — segment a padded window, group its support into clusters and say
   which clusters (hence objects) it *resolves*: those ``halo`` pixels or more from every cut.
2. :func:`resolve_tile` — a tile keeps the provisional ids of the objects it resolves, for its own
   core; it hands the pixels of resolved clusters that reach into other cores to its frame's merge
   (only those some neighbour cannot resolve itself: :func:`resolvable_by_others`), and reports
   the clusters of its core it could not resolve (their box and core pixels).
3. :func:`complete_frame` — a cut cluster whose core pixels a neighbour resolved is copied from
   the pixels it handed over; each of the others is re-segmented in a window grown around its
   piece until the clusters holding that piece are resolved (neighbours the window also meets
   need not be) — at worst the whole frame, which is exact by definition. A piece whose pixels an
   earlier re-segmentation already wrote (another piece of the same cluster) is skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
from scipy import ndimage as ndi

from .clusters import cluster_boxes, clusters, present_ids, resolved_clusters
from .ids import compact_ids, provisional_ids

if TYPE_CHECKING:
    from ..tiling import Tile, TilePlan

__all__ = ["Canvas", "FrameInfo", "FrameResult", "TileResult", "WindowLabels", "complete_frame",
           "resolvable_by_others", "resolve_tile", "segment_window", "write_pixels"]

Window = tuple[int, int, int, int]  # (y0, y1, x0, x1) in frame coordinates


class Canvas(Protocol):
    """A frame's provisional ids, read and written window by window (a Zarr array, a numpy array)."""

    def read(self, window: Window) -> np.ndarray: ...

    def write(self, window: Window, values: np.ndarray) -> None: ...


@dataclass
class WindowLabels:
    """A segmented window: compact object ids, cluster ids, and what the window resolves.

    ``resolved[c]``: cluster ``c`` is exact here; ``keep[i]``: object ``i`` is exact here (every
    cluster it touches is resolved); ``vote``: the segmenter asks for the whole frame.
    """

    local: np.ndarray
    clusters: np.ndarray
    resolved: np.ndarray
    keep: np.ndarray
    vote: bool


@dataclass
class TileResult:
    """What a tile hands to its frame's merge.

    ``anchors``: provisional ids of every object the tile resolved. ``shared``: the support pixels
    of its resolved clusters that lie outside its core (flat frame index, provisional id or 0), for
    neighbours that cannot resolve them. ``unresolved``: per cut cluster, its box and its core
    pixels (flat indices). ``vote``: the segmenter's whole-frame vote.
    """

    anchors: np.ndarray
    shared: tuple[np.ndarray, np.ndarray]
    unresolved: list[tuple[Window, np.ndarray]]
    vote: bool
    seconds: float = 0.0


@dataclass
class FrameInfo:
    """How a frame was stitched (recorded per frame, summed per population in the run record)."""

    regions: int = 0          # windows the merge re-segmented (one per cut cluster nobody resolved)
    copied: int = 0           # cut clusters copied from a neighbour that resolved them
    whole_frame: bool = False  # a merge window grew to the whole frame (or every tile voted for it)
    tile_s: float = 0.0       # segmenting the tiles (with the frame's facts, where a task does both)
    merge_s: float = 0.0      # completing the frame: copies and re-segmented regions
    count: int = 0            # objects of the frame
    largest_merge_px: int = 0  # pixels of the largest window a merge re-segmented


@dataclass
class FrameResult:
    """A completed frame: the sorted provisional ids of its objects and how it was stitched."""

    anchors: np.ndarray
    info: FrameInfo = field(default_factory=FrameInfo)


def segment_window(segmenter: Any, block: np.ndarray, stats: Any, ctx: Any, segmented: tuple | None = None
                   ) -> WindowLabels:
    """Segment a window and decide which of its clusters and objects are exact.

    ``segmenter`` follows :class:`popseg_dask.segmenters.Segmenter` (``segment_window``, ``halo``,
    ``link``, ``objects_independent``); ``ctx`` is the window's
    :class:`~popseg_dask.segmenters.WindowContext`. ``segmented``: the segmenter's result for
    this window when it was already computed (``segment_windows`` of a batch).
    """
    labels, support, vote = segmented if segmented is not None else segmenter.segment_window(block, stats, ctx)
    if labels.shape != block.shape[-2:]:
        raise RuntimeError(f"segmenter {segmenter.name} returned shape {labels.shape} for a block of {block.shape}")
    local, n = compact_ids(labels)
    if ctx.is_whole_frame:
        # nothing is cut: every object is exact; one cluster holds the whole support
        cl = (np.asarray(support, bool) | (local > 0)).astype(np.int32)
        return WindowLabels(local, cl, np.ones(2, bool), np.ones(n + 1, bool), vote)
    if segmenter.objects_independent:
        # each object is its own cluster: touching cells do not chain into one unresolvable blob
        cl, nc = local.astype(np.int32, copy=False), n
    else:
        cl, nc = clusters(np.asarray(support, bool) | (local > 0), segmenter.link)
    ok = resolved_clusters(cl, nc, ctx.artificial, max(segmenter.halo, 1))
    keep = np.ones(n + 1 if n else 1, bool)
    if n:
        # an object is exact when every cluster it touches is: count its pixels in unresolved ones
        # (a labelled minimum over the window cost 3x as much)
        unresolved = ~ok[cl]
        unresolved &= local > 0
        keep[1:] = np.bincount(local[unresolved], minlength=n + 1)[1:] == 0
    return WindowLabels(local, cl, ok, keep, vote)


def resolvable_by_others(box: Window, tile: "Tile", plan: "TilePlan", margin: int) -> bool:
    """Whether every other tile whose core meets ``box`` (global y0, y1, x0, x1) sees it resolved."""
    (Y, X), (ty, tx) = plan.frame_shape, plan.tile
    y0, y1, x0, x1 = box
    for i in range(y0 // ty, (y1 - 1) // ty + 1):
        for j in range(x0 // tx, (x1 - 1) // tx + 1):
            if (i, j) == tile.index:
                continue
            cy0, cx0 = i * ty, j * tx
            wy0, wy1 = max(0, cy0 - plan.halo), min(Y, cy0 + ty + plan.halo)
            wx0, wx1 = max(0, cx0 - plan.halo), min(X, cx0 + tx + plan.halo)
            lo_y = wy0 + (margin if wy0 > 0 else 0)
            hi_y = wy1 - (margin if wy1 < Y else 0)
            lo_x = wx0 + (margin if wx0 > 0 else 0)
            hi_x = wx1 - (margin if wx1 < X else 0)
            if not (y0 >= lo_y and y1 <= hi_y and x0 >= lo_x and x1 <= hi_x):
                return False
    return True


def resolve_tile(segmenter: Any, block: np.ndarray, stats: Any, ctx: Any, tile: "Tile", plan: "TilePlan",
                 dtype: np.dtype, segmented: tuple | None = None) -> tuple[np.ndarray, TileResult]:
    """Segment one tile's window: the provisional ids of its core, and what its merge needs.

    Returns the core's provisional ids (0 where no resolved object lies) and the tile's
    :class:`TileResult`. ``segmented``: as for :func:`segment_window`.
    """
    t0 = time.perf_counter()
    X = plan.frame_shape[1]
    w = segment_window(segmenter, block, stats, ctx, segmented)
    prov, anchors = provisional_ids(w.local, w.keep, ctx.origin, X, dtype)
    if ctx.is_whole_frame and tuple(tile.core) == (0, plan.frame_shape[0], 0, X):
        # the core is the frame: nothing reaches another core and every cluster is resolved, so
        # skip the frame-sized passes that would find so (0.035 s of a 0.5 s 2048² threshold frame)
        shared = (np.zeros(0, np.int64), np.zeros(0, dtype))
        return prov, TileResult(anchors, shared, [], w.vote, time.perf_counter() - t0)
    cy, cx = tile.core_in_window
    oy, ox = ctx.origin
    outside = np.ones(w.clusters.shape, bool)
    outside[cy, cx] = False
    shared = _shared_pixels(w, prov, outside, (oy, ox), tile, plan, max(segmenter.halo, 1) + 1)
    core_cl = w.clusters[cy, cx]
    bad = present_ids(core_cl, len(w.resolved))
    bad = bad[~w.resolved[bad]]
    unresolved = []
    for c, b in zip(bad, cluster_boxes(w.clusters, bad)):
        # its core pixels lie in its box (window coordinates) within the core: look only there
        y0, y1, x0, x1 = max(b[0], cy.start), min(b[1], cy.stop), max(b[2], cx.start), min(b[3], cx.stop)
        py, px = np.nonzero(w.clusters[y0:y1, x0:x1] == c)
        unresolved.append(((b[0] + oy, b[1] + oy, b[2] + ox, b[3] + ox),
                           (py + y0 + oy).astype(np.int64) * X + (px + x0 + ox)))
    return prov[cy, cx], TileResult(anchors, shared, unresolved, w.vote, time.perf_counter() - t0)


def _shared_pixels(w: WindowLabels, prov: np.ndarray, outside: np.ndarray, origin: tuple[int, int],
                   tile: "Tile", plan: "TilePlan", margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of resolved clusters reaching into other cores that some neighbour cannot resolve
    (the rest, every neighbour computes alike): flat frame index and provisional id."""
    oy, ox = origin
    wanted = np.zeros(len(w.resolved), bool)
    reaching = present_ids(w.clusters[outside], len(w.resolved))
    reaching = reaching[w.resolved[reaching]]
    for c, b in zip(reaching, cluster_boxes(w.clusters, reaching)):  # one find_objects pass for all
        if not resolvable_by_others((b[0] + oy, b[1] + oy, b[2] + ox, b[3] + ox), tile, plan, margin):
            wanted[c] = True
    ys, xs = np.nonzero(outside & wanted[w.clusters])
    return (ys + oy).astype(np.int64) * plan.frame_shape[1] + (xs + ox), prov[ys, xs]


def write_pixels(canvas: Canvas, flat: np.ndarray, values: np.ndarray, frame_shape: tuple[int, int],
                 chunk_shape: tuple[int, int]) -> None:
    """Write scattered pixels of a frame, one read-modify-write per touched chunk."""
    if not len(flat):
        return
    Y, X = frame_shape
    ys, xs = flat // X, flat % X
    key = (ys // chunk_shape[0]) * (-(-X // chunk_shape[1])) + xs // chunk_shape[1]
    order = np.argsort(key, kind="stable")
    ys, xs, values, key = ys[order], xs[order], values[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(key)]):
        y0, x0 = (ys[a] // chunk_shape[0]) * chunk_shape[0], (xs[a] // chunk_shape[1]) * chunk_shape[1]
        window = (y0, min(Y, y0 + chunk_shape[0]), x0, min(X, x0 + chunk_shape[1]))
        block = canvas.read(window)
        block[ys[a:b] - y0, xs[a:b] - x0] = values[a:b]
        canvas.write(window, block)


def complete_frame(segmenter: Any, read: Callable[[Window], np.ndarray], context: Callable[[Window], Any],
                   stats: Any, results: list[TileResult], canvas: Canvas, plan: "TilePlan",
                   dtype: np.dtype) -> FrameResult:
    """Finish a frame whose tiles have written their cores into ``canvas``.

    Parameters
    ----------
    segmenter : Segmenter
    read : callable
        Pixels ``(c, h, w)`` of a window of the frame.
    context : callable
        The :class:`~popseg_dask.segmenters.WindowContext` of a window.
    stats : any
        The frame's statistics (as the tiles had them).
    results : list of TileResult
        Every tile's result, in plan order.
    canvas : Canvas
        The frame's provisional ids.
    plan : TilePlan
    dtype : numpy dtype
        Of the provisional ids.

    Returns
    -------
    FrameResult
        Sorted provisional ids of the frame's objects and how it was stitched.
    """
    t0 = time.perf_counter()
    Y, X = plan.frame_shape
    info = FrameInfo(tile_s=sum(r.seconds for r in results))
    anchors = [r.anchors for r in results]
    if len(results) > 1 and all(r.vote for r in results):
        anchors.append(_resegment(segmenter, read, context, stats, canvas, plan, dtype, (0, Y, 0, X), None, info)[0])
        info.whole_frame = True
    else:
        written = np.zeros(0, np.int64)  # frame pixels merges wrote, sorted
        for box, pix in _copy_or_pieces(results, canvas, plan, dtype, info):
            if len(written) and np.isin(pix, written, assume_unique=True).all():
                continue  # another piece of the same cluster was re-segmented whole
            anc, flat = _resegment(segmenter, read, context, stats, canvas, plan, dtype, box, pix, info)
            anchors.append(anc)
            written = np.union1d(written, flat)
    anchors = np.unique(np.concatenate(anchors)) if anchors else np.zeros(0, np.int64)
    if segmenter.objects_independent and len(results) > 1:
        # Networks agree between overlapping windows only up to float rounding: keep the ids that
        # are on the frame, so a rare disagreement can leave no numbered object without pixels.
        anchors = np.intersect1d(anchors, np.unique(np.asarray(canvas.read((0, Y, 0, X)))).astype(np.int64))
    info.merge_s = time.perf_counter() - t0
    info.count = int(len(anchors))
    return FrameResult(anchors, info)


def _copy_or_pieces(results: list[TileResult], canvas: Canvas, plan: "TilePlan", dtype: np.dtype,
                    info: FrameInfo) -> list[tuple[Window, np.ndarray]]:
    """Write the pixels tiles handed over; return the cut clusters' pieces nobody resolved (their
    box and core pixels), in a fixed order."""
    flat = np.concatenate([r.shared[0] for r in results]) if results else np.zeros(0, np.int64)
    vals = np.concatenate([r.shared[1] for r in results]) if results else np.zeros(0, dtype)
    flat, first = np.unique(flat, return_index=True)
    write_pixels(canvas, flat, vals[first].astype(dtype), plan.frame_shape, plan.tile)
    pieces = []
    for r in results:
        for box, pix in r.unresolved:
            if np.isin(pix, flat, assume_unique=False).all():
                info.copied += 1
            else:
                pieces.append((tuple(int(v) for v in box), np.sort(pix)))
    return sorted(pieces, key=lambda p: (p[0], int(p[1][0])))


def _resegment(segmenter: Any, read, context, stats: Any, canvas: Canvas, plan: "TilePlan", dtype: np.dtype,
               box: Window, pix: np.ndarray | None, info: FrameInfo) -> tuple[np.ndarray, np.ndarray]:
    """Re-segment the clusters holding the pixels ``pix`` (None: every cluster of ``box``) in a
    window grown around ``box`` until they are resolved; write them.

    Only those clusters must be resolved, not every cluster the window meets: a piece's window
    never has to grow because of a neighbour. The growth doubles, so a cluster as large as a
    clump needs a few small windows, and the whole frame (nothing cut) always resolves.

    Returns the provisional ids of their objects and the frame pixels written (sorted).
    """
    Y, X = plan.frame_shape
    step = max(segmenter.halo, 1)
    grow = [step] * 4  # top, bottom, left, right
    while True:
        window = (max(0, box[0] - grow[0]), min(Y, box[1] + grow[1]), max(0, box[2] - grow[2]), min(X, box[3] + grow[3]))
        ctx = context(window)
        w = segment_window(segmenter, read(window), stats, ctx)
        ids = _own_clusters(w.clusters, window, box, pix, X)
        cut = _sides_cutting(w.clusters, ids, ctx.artificial, step)
        if not cut or ctx.is_whole_frame:
            break
        for side in cut:  # only towards where the clusters still reach a cut
            grow[side] = 2 * grow[side] + step
    if window == (0, Y, 0, X):
        info.whole_frame = True
    info.regions += 1
    info.largest_merge_px = max(info.largest_merge_px, (window[1] - window[0]) * (window[3] - window[2]))
    # objects of those clusters: every pixel of them, wherever it lies in the window
    own = np.zeros(int(w.clusters.max()) + 1, bool)
    own[ids] = True
    sel = w.keep.copy()
    if w.local.max() > 0:
        obj_cluster = ndi.maximum(w.clusters, w.local, index=np.arange(1, int(w.local.max()) + 1)).astype(np.int64)
        sel[1:] &= own[obj_cluster]
    prov, anc = provisional_ids(w.local, sel, (window[0], window[2]), X, dtype)
    region = canvas.read(window)
    cover = own[w.clusters]
    region[cover] = prov[cover]
    canvas.write(window, region)
    ys, xs = np.nonzero(cover)
    return anc, np.sort((ys + window[0]).astype(np.int64) * X + (xs + window[2]))


def _sides_cutting(cluster_labels: np.ndarray, ids: np.ndarray, artificial: tuple[bool, bool, bool, bool],
                   margin: int) -> list[int]:
    """Sides (0 top, 1 bottom, 2 left, 3 right) whose artificial band of ``margin`` holds one of ``ids``."""
    H, W = cluster_labels.shape
    bands = (cluster_labels[:margin], cluster_labels[max(0, H - margin):], cluster_labels[:, :margin],
             cluster_labels[:, max(0, W - margin):])
    return [side for side, band in enumerate(bands) if artificial[side] and np.isin(band, ids).any()]


def _own_clusters(cluster_labels: np.ndarray, window: Window, box: Window, pix: np.ndarray | None,
                  X: int) -> np.ndarray:
    """Cluster ids (in the window) at the frame pixels ``pix``, or of every cluster meeting ``box``."""
    if pix is None:
        y0, y1, x0, x1 = box[0] - window[0], box[1] - window[0], box[2] - window[2], box[3] - window[2]
        ids = np.unique(cluster_labels[y0:y1, x0:x1])
    else:
        ids = np.unique(cluster_labels[pix // X - window[0], pix % X - window[2]])
    return ids[ids > 0]
