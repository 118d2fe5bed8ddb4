"""What workers run: frame statistics, tile segmentation, per-frame merges, numbering.

Module-level functions, so that they pickle by reference. The stages and their invariants are
described in :mod:`popseg_dask.pipeline` (how they are chained) and :mod:`popseg_dask.stitch`
(why the result is exact). :func:`segment_frame` chains them in this process, for one frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from scipy import ndimage as ndi

from .errors import PopsegError
from .segmenters import Segmenter, TileGrid, WindowContext
from .stitch import (cluster_boxes, clusters, compact_ids, group_boxes, number_from_provisional,
                     provisional_ids, resolved_clusters)
from .tiling import Tile, TilePlan, plan_tiles

__all__ = ["FrameSource", "FrameSlicer", "TileResult", "segment_frame"]

log = logging.getLogger(__name__)

_FRAME_CACHE: dict[str, np.ndarray] = {}
_FRAME_CACHE_BYTES = 256 * 2**20


class FrameSource:
    """One frame of a population's channels ``(c, y, x)``, read window by window inside tasks.

    Holds a small dask graph (the frame's chunks only). Frames up to 256 MiB are read once
    per worker process and sliced, since a window read decodes whole chunks anyway.
    """

    def __init__(self, frame, label: str = "the frame"):
        (self.arr,) = dask.optimize(frame)
        self.shape = tuple(frame.shape)
        self.nbytes = int(np.prod(self.shape)) * frame.dtype.itemsize
        self.label = label

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Pixels ``(c, y0:y1, x0:x1)``; an unreadable input is a :class:`PopsegError`."""
        try:
            return self._read(window)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            # Damaged chunks, vanished files, codec errors: the input's fault, said in one line.
            raise PopsegError(f"cannot read {self.label}: {type(err).__name__}: {err}; "
                              "the input is damaged or unreadable (check or re-export it)") from err

    def _read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        y0, y1, x0, x1 = window
        if self.nbytes <= _FRAME_CACHE_BYTES:
            full = _FRAME_CACHE.get(self.arr.name)
            if full is None:
                # optimised once at construction: optimising again per read costs ~15 ms
                full = np.asarray(self.arr.compute(scheduler="sync", optimize_graph=False))
                if len(_FRAME_CACHE) >= 2:
                    _FRAME_CACHE.pop(next(iter(_FRAME_CACHE)))
                _FRAME_CACHE[self.arr.name] = full
            return full[:, y0:y1, x0:x1]
        return np.asarray(self.arr[:, y0:y1, x0:x1].compute(scheduler="sync", optimize_graph=False))


class FrameSlicer:
    """Cut one frame's small graph out of a movie's dask array in time proportional to the frame.

    ``movie[t]`` on a dask array of 10^5 chunks, then optimising it, walks the whole graph: 80 ms
    per frame, hours for a long movie. Here the graph is materialised once and each frame's
    chunks are culled from it, so a frame costs what its own chunks cost.
    """

    def __init__(self, arr):
        from dask.optimization import cull

        self.arr = arr
        self._cull = cull
        self.dsk = dict(arr.__dask_graph__())
        self.t_starts = np.cumsum((0,) + tuple(arr.chunks[0]))

    def frame(self, t: int, channels):
        """The dask array ``arr[t, channels]`` with only the chunks it needs in its graph."""
        import itertools

        import dask.array as da

        arr = self.arr
        i = int(np.searchsorted(self.t_starts, t, side="right") - 1)
        rests = list(itertools.product(*(range(len(c)) for c in arr.chunks[1:])))
        sub, _ = self._cull(self.dsk, [(arr.name, i, *rest) for rest in rests])
        # the block row becomes row 0 of a one-row array: alias its keys under a new name
        name = f"{arr.name}-t{t}"
        for rest in rests:
            sub[(name, 0, *rest)] = (arr.name, i, *rest)
        block = da.Array(sub, name, chunks=((arr.chunks[0][i],), *arr.chunks[1:]), meta=arr._meta)
        return block[t - int(self.t_starts[i])][channels]


@dataclass
class TileResult:
    """What a tile hands to its frame's merge.

    ``anchors``: provisional ids of every object the tile resolved. ``shared``: the support pixels
    of its resolved clusters that lie outside its core (flat frame index, provisional id or 0), so
    neighbours need not re-segment them. ``unresolved``: per cut cluster, its box and its core
    pixels (flat indices). ``vote``: the segmenter's whole-frame vote.
    """

    anchors: np.ndarray
    shared: tuple[np.ndarray, np.ndarray]
    unresolved: list
    vote: bool
    seconds: float = 0.0


def _context(window, frame_shape, aux=None, t: int = 0) -> WindowContext:
    y0, y1, x0, x1 = window
    aux_win = None if aux is None else np.asarray(_open_array(aux, "r")[t, y0:y1, x0:x1])
    return WindowContext(tuple(frame_shape), (y0, x0), (y0 > 0, y1 < frame_shape[0], x0 > 0, x1 < frame_shape[1]),
                         aux_win)


def _frame_stats_task(source: FrameSource, stats: Any, segmenter: Segmenter) -> Any:
    if not segmenter.needs_frame_stats:
        return stats
    return segmenter.frame_stats(source.read((0, source.shape[1], 0, source.shape[2])), stats)


def _tile_stats_task(source: FrameSource, stats: Any, segmenter: Segmenter, tile: Tile, aux, t: int) -> Any:
    ctx = _context(tile.window, source.shape[1:])
    partial, core_aux = segmenter.tile_stats(source.read(tile.window), stats, ctx, tile.core_in_window)
    if core_aux is not None:
        y0, y1, x0, x1 = tile.core
        _open_array(aux, "r+")[t, y0:y1, x0:x1] = core_aux
    return partial


def _reduce_stats_task(partials: list, stats: Any, segmenter: Segmenter, grid: TileGrid) -> Any:
    return segmenter.reduce_tile_stats(list(partials), stats, grid)


def _segment_window(segmenter: Segmenter, block: np.ndarray, stats: Any, ctx: WindowContext):
    """Segment a window; return compact labels, cluster labels, resolved flags per cluster, vote."""
    labels, support, vote = segmenter.segment_window(block, stats, ctx)
    if labels.shape != block.shape[-2:]:
        raise RuntimeError(f"segmenter {segmenter.name} returned shape {labels.shape} for a block of {block.shape}")
    local, n = compact_ids(labels)
    if ctx.is_whole_frame:
        # nothing is cut: every object is exact; one cluster holds the whole support
        cl = (np.asarray(support, bool) | (local > 0)).astype(np.int32)
        return local, cl, np.ones(2, bool), np.ones(n + 1, bool), vote
    if getattr(segmenter, "objects_independent", False):
        # each object is its own cluster: touching cells do not chain into one unresolvable blob
        cl, nc = local.astype(np.int32, copy=False), n
    else:
        cl, nc = clusters(np.asarray(support, bool) | (local > 0), segmenter.link)
    ok = resolved_clusters(cl, nc, ctx.artificial, max(segmenter.halo, 1))
    if n:
        # an object is exact when every cluster it touches is resolved
        keep = np.ones(n + 1, bool)
        keep[1:] = ndi.minimum(ok[cl].astype(np.uint8), local, index=np.arange(1, n + 1)).astype(bool)
    else:
        keep = np.ones(1, bool)
    return local, cl, ok, keep, vote


def _present(labels: np.ndarray, n: int) -> np.ndarray:
    """Nonzero ids present in ``labels`` (ids < n): a counting pass, not a sort."""
    found = np.flatnonzero(np.bincount(labels.ravel(), minlength=n))
    return found[found > 0]


def _resolvable_by_others(box, tile: Tile, plan: TilePlan, margin: int) -> bool:
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


def _tile_task(source: FrameSource, stats: Any, segmenter: Segmenter, tile: Tile, scratch: str, t: int,
               aux=None, plan: TilePlan | None = None) -> TileResult:
    t0 = time.perf_counter()
    Y, X = source.shape[1:]
    ctx = _context(tile.window, (Y, X), aux, t)
    local, cl, ok, keep, vote = _segment_window(segmenter, source.read(tile.window), stats, ctx)
    prov, anchors = provisional_ids(local, keep, ctx.origin, X, _prov_dtype(Y, X))
    cy, cx = tile.core_in_window
    y0, y1, x0, x1 = tile.core
    _open_array(scratch, "r+")[t, y0:y1, x0:x1] = prov[cy, cx]
    oy, ox = ctx.origin
    # Resolved clusters reaching into other cores are exact here: hand them to the merge for the
    # neighbours that cannot resolve them themselves (the rest they compute alike).
    outside = np.ones(cl.shape, bool)
    outside[cy, cx] = False
    wanted = np.zeros(len(ok), bool)
    margin = max(segmenter.halo, 1) + 1
    reaching = _present(cl[outside], len(ok))
    reaching = reaching[ok[reaching]]
    for c, b in zip(reaching, cluster_boxes(cl, reaching)):  # one find_objects pass for all
        gbox = (b[0] + oy, b[1] + oy, b[2] + ox, b[3] + ox)
        if plan is None or not _resolvable_by_others(gbox, tile, plan, margin):
            wanted[c] = True
    share = outside & wanted[cl]
    ys, xs = np.nonzero(share)
    shared = ((ys + oy).astype(np.int64) * X + (xs + ox), prov[ys, xs])
    bad = _present(cl[cy, cx], len(ok))
    bad = bad[~ok[bad]]
    unresolved = []
    core_cl = cl[cy, cx]
    for c, b in zip(bad, cluster_boxes(cl, bad)):
        py, px = np.nonzero(core_cl == c)
        unresolved.append(((b[0] + oy, b[1] + oy, b[2] + ox, b[3] + ox), (py + y0).astype(np.int64) * X + (px + x0)))
    return TileResult(anchors, shared, unresolved, vote, time.perf_counter() - t0)


def _write_pixels(out, t: int, flat: np.ndarray, values: np.ndarray, frame_shape, chunk_shape) -> None:
    """Write scattered pixels of frame ``t``, one read-modify-write per touched chunk."""
    if not len(flat):
        return
    Y, X = frame_shape
    ys, xs = flat // X, flat % X
    cy, cx = ys // chunk_shape[0], xs // chunk_shape[1]
    key = cy * (-(-X // chunk_shape[1])) + cx
    order = np.argsort(key, kind="stable")
    ys, xs, values, key = ys[order], xs[order], values[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    for a, b in zip(starts, ends):
        y0, x0 = (ys[a] // chunk_shape[0]) * chunk_shape[0], (xs[a] // chunk_shape[1]) * chunk_shape[1]
        y1, x1 = min(Y, y0 + chunk_shape[0]), min(X, x0 + chunk_shape[1])
        block = out[t, y0:y1, x0:x1]
        block[ys[a:b] - y0, xs[a:b] - x0] = values[a:b]
        out[t, y0:y1, x0:x1] = block


def _merge_task(source: FrameSource, stats: Any, segmenter: Segmenter, results: list, scratch: str, t: int,
                tile_shape: tuple[int, int], aux=None, record: tuple[str, str] | None = None):
    """Complete a frame: copy what tiles resolved for their neighbours, re-segment what none resolved.

    A cut cluster whose core pixels some other tile resolved is copied from it; the rest are
    grouped (union of overlapping boxes) and re-segmented in a window grown around each group
    until every cluster touching the group is resolved (at worst the whole frame).

    With ``record`` (ledger folder, population) the frame's anchors are saved there once its pixels
    are written, and only ``(count, info)`` travels back; otherwise ``(anchors, info)``.
    """
    t0 = time.perf_counter()
    Y, X = source.shape[1:]
    dtype = _prov_dtype(Y, X)
    out = _open_array(scratch, "r+")
    info = {"regions": 0, "copied": 0, "whole_frame": False, "tile_s": sum(r.seconds for r in results)}
    anchors = [r.anchors for r in results]
    if len(results) > 1 and all(r.vote for r in results):
        groups = [(0, Y, 0, X)]
        info["whole_frame"] = True
        log.info("frame %d: segmented whole (the segmenter asked for the whole frame)", t)
    else:
        flat = np.concatenate([r.shared[0] for r in results]) if results else np.zeros(0, np.int64)
        vals = np.concatenate([r.shared[1] for r in results]) if results else np.zeros(0, dtype)
        flat, first = np.unique(flat, return_index=True)
        vals = vals[first]
        _write_pixels(out, t, flat, vals.astype(dtype), (Y, X), tile_shape)
        boxes = []
        for r in results:
            for box, pix in r.unresolved:
                if np.isin(pix, flat, assume_unique=False).all():
                    info["copied"] += 1
                else:
                    boxes.append(box)
        groups = group_boxes(boxes)
    step = max(segmenter.halo, 1)
    for g in groups:
        grow = segmenter.halo
        while True:
            window = (max(0, g[0] - grow), min(Y, g[1] + grow), max(0, g[2] - grow), min(X, g[3] + grow))
            ctx = _context(window, (Y, X), aux, t)
            local, cl, ok, keep, _ = _segment_window(segmenter, source.read(window), stats, ctx)
            gy0, gy1, gx0, gx1 = g[0] - window[0], g[1] - window[0], g[2] - window[2], g[3] - window[2]
            ids = np.unique(cl[gy0:gy1, gx0:gx1])
            ids = ids[ids > 0]
            if ok[ids].all() or ctx.is_whole_frame:
                break
            grow += max(step, *tile_shape)
        if window == (0, Y, 0, X):
            info["whole_frame"] = True
        info["regions"] += 1
        # objects of the group's clusters: every pixel of them, wherever it lies in the window
        in_group = np.zeros(int(cl.max()) + 1, bool)
        in_group[ids] = True
        sel = keep.copy()
        if local.max() > 0:
            obj_cluster = ndi.maximum(cl, local, index=np.arange(1, int(local.max()) + 1)).astype(np.int64)
            sel[1:] &= in_group[obj_cluster]
        prov, anc = provisional_ids(local, sel, (window[0], window[2]), X, dtype)
        region = out[t, window[0]:window[1], window[2]:window[3]]
        cover = in_group[cl]
        region[cover] = prov[cover]
        out[t, window[0]:window[1], window[2]:window[3]] = region
        anchors.append(anc)
    anchors = np.unique(np.concatenate(anchors)) if anchors else np.zeros(0, np.int64)
    if getattr(segmenter, "objects_independent", False) and len(results) > 1:
        # Networks agree between overlapping windows only up to float rounding: keep the ids that
        # are on the frame, so a rare disagreement can leave no numbered object without pixels.
        anchors = np.intersect1d(anchors, np.unique(np.asarray(out[t])).astype(np.int64))
    info["merge_s"] = time.perf_counter() - t0
    if record is not None:
        from .io.ledger import Ledger

        info["count"] = int(len(anchors))
        Ledger(record[0]).save_frame(record[1], t, anchors, info)
        return len(anchors), info
    return anchors, info


_ARRAYS: dict[tuple[str, str], tuple[tuple, Any]] = {}


def _open_array(a, mode: str):
    """A Zarr array by path, opened once per worker process while its metadata file is unchanged.

    Opening reads and parses the metadata (milliseconds); with thousands of small frames per
    run that was most of a task's time. A re-created array (a new run in the same place) has a
    new metadata file, so it is opened again.
    """
    import os

    import zarr

    if not isinstance(a, str):
        return a
    meta = os.path.join(a, "zarr.json")
    try:
        st = os.stat(meta if os.path.exists(meta) else os.path.join(a, ".zarray"))
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
    except OSError:
        return zarr.open_array(a, mode=mode)
    hit = _ARRAYS.get((a, mode))
    if hit is not None and hit[0] == stamp:
        return hit[1]
    arr = zarr.open_array(a, mode=mode)
    if len(_ARRAYS) > 64:
        _ARRAYS.clear()
    _ARRAYS[(a, mode)] = (stamp, arr)
    return arr


def segment_frame(segmenter: Segmenter, frame: np.ndarray, tile=None, halo: int | None = None,
                  stats: Any = None) -> tuple[np.ndarray, dict]:
    """Segment one frame ``(c, y, x)`` exactly as a run does — tiles, merges, numbering — in this process.

    Parameters
    ----------
    segmenter : Segmenter
    frame : array (c, y, x)
        The channels the segmenter reads, in its order.
    tile : None, "none", int or (ty, tx)
        Core tile size (None: whole frame).
    halo : int, optional
        Window padding (default: the segmenter's margin plus its object size).
    stats : optional
        Movie statistics (what ``segmenter.movie_stats`` returns).

    Returns
    -------
    labels : (y, x) uint32 array
        Ids 1..n in raster order of the objects' first pixels.
    info : dict
        Merged regions, whole-frame fallback, task times.
    """
    import dask.array as da
    import zarr

    frame = np.asarray(frame)
    Y, X = frame.shape[-2:]
    plan = plan_tiles((Y, X), tile, segmenter.halo + segmenter.object_size if halo is None else halo,
                      clamp_halo=halo is None)
    src = FrameSource(da.from_array(frame, chunks=frame.shape))
    scratch = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(1, Y, X), chunks=(1, *plan.tile),
                                dtype=_prov_dtype(Y, X), fill_value=0)
    aux = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(1, Y, X), chunks=(1, *plan.tile),
                            dtype=np.int32, fill_value=0)
    if segmenter.needs_frame_stats:
        stats = _frame_stats_task(src, stats, segmenter)
    if segmenter.needs_tile_stats and not plan.untiled:
        parts = [_tile_stats_task(src, stats, segmenter, t, aux, 0) for t in plan]
        stats = segmenter.reduce_tile_stats(parts, stats, TileGrid((Y, X), plan.tile))
    results = [_tile_task(src, stats, segmenter, t, scratch, 0, aux, plan) for t in plan]
    anchors, info = _merge_task(src, stats, segmenter, results, scratch, 0, plan.tile, aux)
    return number_from_provisional(scratch[0], anchors, 0), info


def _number_task(scratch: str, final: str, ts: list[int], windows, ledger: str, population: str,
                 offsets: list[int], dtype: str, counts: list[int] | None = None) -> int:
    """Write frames ``ts``' final ids (chunk by chunk) from their recorded anchors, marking each numbered.

    ``counts``: the objects per frame the offsets were computed from; a recorded frame with
    another count (a frame segmented twice at once, differently) would give ids that overlap
    the next frame's, so it stops the run instead.
    """
    from .io.ledger import Ledger

    led = Ledger(ledger)
    src, dst = _open_array(scratch, "r"), _open_array(final, "r+")
    for i, (t, offset) in enumerate(zip(ts, offsets)):
        anchors, _ = led.load_frame(population, t)
        if counts is not None and len(anchors) != counts[i]:
            raise RuntimeError(f"frame {t} of {population}: {len(anchors)} objects recorded, {counts[i]} counted; "
                               "run the same command again: it resumes and numbers from the records")
        for y0, y1, x0, x1 in windows:
            dst[t, y0:y1, x0:x1] = number_from_provisional(src[t, y0:y1, x0:x1], anchors, offset, np.dtype(dtype))
        led.mark_numbered(population, t)
    return len(ts)


def _whole_frames_task(sources: list[FrameSource], ts: list[int], stats0: Any, segmenter: Segmenter, tile: Tile,
                       scratch: str, aux, plan: TilePlan, record) -> list:
    """Untiled frames, one after the other: statistics, the one tile and the merge of each, in one
    task (nothing travels between them). Each frame is recorded as soon as it is written."""
    out = []
    for source, t in zip(sources, ts):
        stats = _frame_stats_task(source, stats0, segmenter)
        result = _tile_task(source, stats, segmenter, tile, scratch, t, aux, plan)
        out.append(_merge_task(source, stats, segmenter, [result], scratch, t, plan.tile, aux, record))
    return out


def _prov_dtype(Y: int, X: int) -> np.dtype:
    return np.dtype(np.uint32) if Y * X < np.iinfo(np.uint32).max else np.dtype(np.uint64)
