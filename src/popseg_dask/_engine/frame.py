"""One frame in this process, through the same tile policy, tasks and stitching as a run."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PopsegError
from ..segmenters import Segmenter
from ..stitch import FrameInfo, FrameResult, canonical_relabel, number_from_provisional, provisional_dtype
from ..tiling import TilePlan, tile_policy
from .worker import (FrameSource, frame_stats_task, merge_task, reduce_stats_task, tile_stats_task, tile_task,
                     window_context)

__all__ = ["FrameFacts", "FramePlane", "REGION_TILE", "clip_region", "frame_facts", "region_plan", "segment_frame",
           "segment_region", "stitch_frame"]

# Tiles a region of an untiled population's frame is segmented with (exact tiles only): the
# frame's facts then come tile by tile, and only the tiles under the region are segmented.
REGION_TILE = 1024


def segment_frame(segmenter: Segmenter, frame: np.ndarray, tile=None, halo: int | None = None,
                  stats: Any = None, *, tile_memory_mb: float = 1024) -> tuple[np.ndarray, FrameInfo]:
    """Segment one frame ``(c, y, x)`` exactly as a run does — tiles, merges, numbering — in this process.

    The tile policy is the run's (:func:`popseg_dask.tiling.tile_policy`): a segmenter that cannot
    be tiled exactly runs whole, a user's ``halo`` becomes a network's context, tiles are aligned.

    Parameters
    ----------
    segmenter : Segmenter
    frame : array (c, y, x)
        The channels the segmenter reads, in its order.
    tile : None, "none", "auto", int or (ty, tx)
        Core tile size (None: whole frame).
    halo : int, optional
        Window padding (default: the segmenter's margin plus its object size).
    stats : optional
        Movie statistics (what ``segmenter.movie_stats`` returns).
    tile_memory_mb : float
        Memory a tile may use, for ``tile="auto"``.

    Returns
    -------
    labels : (y, x) array
        Ids 1..n in raster order of the objects' first pixels (uint32).
    info : FrameInfo
        Merged regions, whole-frame fallback, task times.
    """
    segmenter, plan = tile_policy(_uncached(segmenter), np.shape(frame)[-2:], tile, halo, memory_mb=tile_memory_mb)
    prov, result = stitch_frame(segmenter, FrameSource(_lazy(frame)), 0, stats, plan)
    return number_from_provisional(prov, result.anchors, 0), result.info


class FramePlane:
    """Frame ``t`` of a ``(t, y, x)`` array, held in memory as one plane: what a run's scratch
    arrays are to its tasks, for a frame whose tiles all run in one process."""

    def __init__(self, t: int, frame_shape: tuple[int, int], dtype):
        self.t = t
        self.plane = np.zeros(frame_shape, dtype)

    def _at(self, key) -> tuple:
        if key[0] != self.t:
            raise IndexError(f"frame {key[0]} asked of the plane of frame {self.t}")
        return key[1:]

    def __getitem__(self, key):
        view = self.plane[self._at(key)].view()
        view.flags.writeable = False  # a read, as from a Zarr array: never an alias to write through
        return view

    def __setitem__(self, key, values) -> None:
        self.plane[self._at(key)] = values


def stitch_frame(segmenter: Segmenter, source: FrameSource, t: int, stats: Any, plan: TilePlan
                 ) -> tuple[np.ndarray, FrameResult]:
    """Frame ``t`` through the run's tasks — facts, every tile, the merge — in this process.

    The tiles' windows go through ``segment_windows`` together (a network batches them), and the
    provisional ids and per-pixel facts stay in memory, never in a scratch array.

    Returns
    -------
    prov : (y, x) array
        Provisional ids (see :func:`popseg_dask.stitch.number_from_provisional`).
    result : FrameResult
        The frame's sorted anchors and how it was stitched.
    """
    t0 = time.perf_counter()
    facts = frame_facts(segmenter, source, plan, stats, t)
    scratch = FramePlane(t, plan.frame_shape, provisional_dtype(plan.frame_shape))
    windows = ((source.read(tile.window), facts.stats, window_context(tile.window, source.frame_shape, facts.aux, t))
               for tile in plan)
    results = [tile_task(source, facts.stats, segmenter, tile, scratch, t, facts.aux, plan, done)
               for tile, done in zip(plan, segmenter.segment_windows(windows), strict=True)]
    tiles_s = time.perf_counter() - t0
    result = merge_task(source, facts.stats, segmenter, results, scratch, t, facts.aux, plan)
    # the tiles' time is all of it until the merge: the facts and the (batched) segmentation ran
    # outside tile_task here, whose own timer saw only the bookkeeping
    result.info.tile_s = tiles_s
    return scratch.plane, result


@dataclass
class FrameFacts:
    """A frame's statistics as its tiles see them, and the per-pixel tile facts (or None)."""

    stats: Any
    aux: Any = None


def frame_facts(segmenter: Segmenter, source: FrameSource, plan: TilePlan, stats: Any = None,
                t: int = 0) -> FrameFacts:
    """Whole-frame statistics, then the rounds of tile facts over every tile of ``plan``, as a run
    computes them (tile by tile: a frame larger than memory is never segmented whole for them);
    ``t``: the frame's index in its movie."""
    stats = frame_stats_task(source, stats, segmenter)
    if not segmenter.needs_tile_stats or plan.untiled:
        return FrameFacts(stats)
    aux = FramePlane(t, plan.frame_shape, np.int32)
    for r in range(segmenter.tile_stats_rounds):
        parts = [tile_stats_task(source, stats, segmenter, tile, aux, t, r) for tile in plan]
        stats = reduce_stats_task(parts, stats, segmenter, plan)
    return FrameFacts(stats, aux)


def region_plan(segmenter: Segmenter, frame_shape: tuple[int, int], tile=None, halo: int | None = None, *,
                tile_memory_mb: float = 1024) -> tuple[Segmenter, TilePlan]:
    """The tile plan a region of the frame is segmented with: the run's; for a population that
    runs untiled, tiles of :data:`REGION_TILE` when its segmenter's tiles are exact (bitwise the
    untiled labels, so the region is what the run writes there), else the whole frame."""
    seg, plan = tile_policy(_uncached(segmenter), frame_shape, tile, halo, memory_mb=tile_memory_mb)
    if plan.untiled and segmenter.exact_tiles and max(frame_shape) > REGION_TILE:
        seg, plan = tile_policy(_uncached(segmenter), frame_shape, REGION_TILE, halo, memory_mb=tile_memory_mb)
    return seg, plan


def segment_region(segmenter: Segmenter, frame, region: tuple[int, int, int, int], tile=None,
                   halo: int | None = None, stats: Any = None, *, tile_memory_mb: float = 1024,
                   facts: FrameFacts | None = None) -> tuple[np.ndarray, FrameInfo, FrameFacts]:
    """The labels a run writes in ``region`` (y0, y1, x0, x1) of a frame, segmenting only around it.

    The frame's facts come from every tile (or from ``facts``, returned by an earlier call with
    the same segmenter and frame); then only the run's tiles whose cores meet the region are
    segmented — with the tiles around them for segmenters whose tiles are not exact, so that a
    cut object is copied from the neighbour a run copies it from — and merged as a run merges
    them, objects cut by the region's tiles re-segmented whole. Objects reaching out of the
    region are cropped to it.

    Parameters
    ----------
    segmenter, tile, halo, stats, tile_memory_mb
        As for :func:`segment_frame`.
    frame : array (c, y, x)
        Numpy or dask: only the windows segmented are read from a dask array (and the whole
        frame once, tile by tile, for the facts).
    region : (y0, y1, x0, x1)
        Clipped to the frame.
    facts : FrameFacts, optional

    Returns
    -------
    labels : (h, w) array
        The region's objects, ids 1..n in raster order of their first pixel in the region
        (a run's ids there, renumbered).
    info : FrameInfo
    facts : FrameFacts
        To pass to the next call for the same segmenter and frame.
    """
    seg, plan = region_plan(segmenter, np.shape(frame)[-2:], tile, halo, tile_memory_mb=tile_memory_mb)
    y0, y1, x0, x1 = clip_region(region, plan.frame_shape)
    src = FrameSource(_lazy(frame))
    facts = facts or frame_facts(seg, src, plan, stats)
    ring = 0 if seg.exact_tiles else 1
    (ty, tx), scratch = plan.tile, FramePlane(0, plan.frame_shape, provisional_dtype(plan.frame_shape))
    near = [t for t in plan if y0 // ty - ring <= t.index[0] <= (y1 - 1) // ty + ring
            and x0 // tx - ring <= t.index[1] <= (x1 - 1) // tx + ring]
    results = {t.index: tile_task(src, facts.stats, seg, t, scratch, 0, facts.aux, plan) for t in near}
    if all(r.vote for r in results.values()):  # a run segments the frame whole if every tile asks
        results.update({t.index: tile_task(src, facts.stats, seg, t, scratch, 0, facts.aux, plan)
                        for t in plan if t.index not in results})
    results = [results[t.index] for t in plan if t.index in results]  # in plan order, as a run's merge
    result = merge_task(src, facts.stats, seg, results, scratch, 0, facts.aux, plan)
    labels, _ = canonical_relabel(scratch.plane[y0:y1, x0:x1])
    return labels, result.info, facts


def _uncached(segmenter: Segmenter) -> Segmenter:
    if segmenter.cache is not None and not getattr(segmenter.cache, "frame_local", False):
        # a frame without its index in a movie: never read or fill a run's cache (a cache of this
        # one frame's windows, ``frame_local``, is safe: popseg tune shares one between settings)
        segmenter = copy.copy(segmenter)
        segmenter.cache = None
    return segmenter


def _lazy(frame):
    import dask.array as da

    return frame if isinstance(frame, da.Array) else da.from_array(np.asarray(frame), chunks=np.shape(frame))


def clip_region(region, frame_shape) -> tuple[int, int, int, int]:
    """``region`` (y0, y1, x0, x1) clipped to a frame of ``frame_shape``; one that holds no pixel
    of it is a :class:`PopsegError`."""
    Y, X = frame_shape
    y0, y1, x0, x1 = (int(v) for v in region)
    y0, y1, x0, x1 = max(0, y0), min(Y, y1), max(0, x0), min(X, x1)
    if y1 <= y0 or x1 <= x0:
        raise PopsegError(f"region {tuple(region)} holds no pixel of the frame ({Y}x{X}); give y0 < y1 and x0 < x1 "
                          "inside it")
    return y0, y1, x0, x1
