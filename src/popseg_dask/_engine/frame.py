"""One frame in this process, through the same tile policy, tasks and stitching as a run."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..segmenters import Segmenter
from ..stitch import FrameInfo, number_from_provisional, provisional_dtype
from ..tiling import tile_policy
from .worker import FrameSource, frame_stats_task, merge_task, reduce_stats_task, tile_stats_task, tile_task

__all__ = ["segment_frame"]


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
    import dask.array as da
    import zarr

    frame = np.asarray(frame)
    Y, X = frame.shape[-2:]
    if segmenter.cache is not None and not getattr(segmenter.cache, "frame_local", False):
        # a frame without its index in a movie: never read or fill a run's cache (a cache of this
        # one frame's windows, ``frame_local``, is safe: popseg tune shares one between settings)
        segmenter = copy.copy(segmenter)
        segmenter.cache = None
    segmenter, plan = tile_policy(segmenter, (Y, X), tile, halo, memory_mb=tile_memory_mb)
    src = FrameSource(da.from_array(frame, chunks=frame.shape))
    def array(dtype):
        return zarr.create_array(store=zarr.storage.MemoryStore(), shape=(1, Y, X), chunks=(1, *plan.tile),
                                 dtype=dtype, fill_value=0)

    scratch = array(provisional_dtype((Y, X)))
    aux = array(np.int32) if segmenter.needs_tile_stats and not plan.untiled else None  # as a run has it
    stats = frame_stats_task(src, stats, segmenter)
    if segmenter.needs_tile_stats and not plan.untiled:
        for r in range(segmenter.tile_stats_rounds):
            parts = [tile_stats_task(src, stats, segmenter, t, aux, 0, r) for t in plan]
            stats = reduce_stats_task(parts, stats, segmenter, plan)
    results = [tile_task(src, stats, segmenter, t, scratch, 0, aux, plan) for t in plan]
    result = merge_task(src, stats, segmenter, results, scratch, 0, aux, plan)
    return number_from_provisional(scratch[0], result.anchors, 0), result.info
