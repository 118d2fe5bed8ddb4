"""The small Dask graphs of a run, one per unit of work, with readable key names.

Segment pass, per population and frame (or a batch of untiled frames)::

    frame -> [stats] -> [tile stats per tile -> reduce] -> tile per tile -> merge (records the frame)

Number pass, per batch of frames: one task writes their final ids. Every key is named here
(``<stage>-<population>-t<frame>-<run id>``): hashing arguments (dask's default) pickles the
segmenter and the frame's graph once per frame, which dominated the client's time on long
movies, and the run id keeps runs on one cluster apart.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from ..io.labels import LabelGrid
from .plan import PopulationJob, RunPlan
from ..location import Location
from .worker import (ArrayRef, FrameRecord, FrameSource, frame_stats_task, merge_task, number_task, reduce_stats_task,
                     tile_stats_task, tile_task, whole_frames_task)

__all__ = ["FrameSlicer", "PassArrays", "number_graph", "segment_graph"]


class FrameSlicer:
    """Cut one frame's small graph out of a movie's dask array in time proportional to the frame.

    ``movie[t]`` on a dask array of 10^5 chunks, then optimising it, walks the whole graph: 80 ms
    per frame, hours for a long movie. Here the graph is materialised once and each frame's
    chunks are culled from it, so a frame costs what its own chunks cost.
    """

    def __init__(self, arr):
        self.arr = arr
        self.dsk = dict(arr.__dask_graph__())
        self.t_starts = np.cumsum((0,) + tuple(arr.chunks[0]))

    def frame(self, t: int, channels):
        """The dask array ``arr[t, channels]`` with only the chunks it needs in its graph."""
        import dask.array as da
        from dask.optimization import cull

        arr = self.arr
        i = int(np.searchsorted(self.t_starts, t, side="right") - 1)
        rests = list(itertools.product(*(range(len(c)) for c in arr.chunks[1:])))
        sub, _ = cull(self.dsk, [(arr.name, i, *rest) for rest in rests])
        # the block row becomes row 0 of a one-row array: alias its keys under a new name
        name = f"{arr.name}-t{t}"
        for rest in rests:
            sub[(name, 0, *rest)] = (arr.name, i, *rest)
        block = da.Array(sub, name, chunks=((arr.chunks[0][i],), *arr.chunks[1:]), meta=arr._meta)
        return block[t - int(self.t_starts[i])][channels]


@dataclass
class PassArrays:
    """What the segment pass's graphs point at: the run's id, the movie, and per population its
    scratch arrays and movie statistics."""

    run_id: str
    slicer: FrameSlicer
    label: str                      # the input, for messages
    ledger: Location
    scratch: dict[str, ArrayRef] = field(default_factory=dict)
    aux: dict[str, ArrayRef | None] = field(default_factory=dict)
    stats0: dict[str, Any] = field(default_factory=dict)

    def source(self, job: PopulationJob, t: int) -> FrameSource:
        return FrameSource(self.slicer.frame(t, job.channel_index), f"frame {t} of {self.label}")


def segment_graph(job: PopulationJob, ts: list[int], arrays: PassArrays):
    """The graph that segments frames ``ts`` of a population and records each in the ledger."""
    name, seg, tiles = job.name, job.segmenter, job.tiles
    scratch, aux, stats0 = arrays.scratch[name], arrays.aux[name], arrays.stats0.get(name)
    record = FrameRecord(arrays.ledger, name)
    # a key of its own per unit: a key shared by graphs submitted at different times can be
    # released by one while another still waits on it
    seg_d = dask.delayed(seg, name=f"segmenter-{name}-t{ts[0]}-{arrays.run_id}", traverse=False)
    if tiles.untiled:  # whole frames, one or several per task: statistics computed inside
        (tile,) = tiles
        with job.resource_annotation():
            return dask.delayed(whole_frames_task)(
                [arrays.source(job, t) for t in ts], ts, stats0, seg_d, tile, scratch, aux, tiles, record,
                dask_key_name=f"whole-{name}-t{ts[0]}-{arrays.run_id}")
    (t,) = ts
    tag = f"{name}-t{t}-{arrays.run_id}"
    src = dask.delayed(arrays.source(job, t), name=f"frame-{tag}", traverse=False)
    stats = dask.delayed(frame_stats_task)(src, stats0, seg_d, dask_key_name=f"stats-{tag}") \
        if seg.needs_frame_stats else stats0
    for r in range(seg.tile_stats_rounds if seg.needs_tile_stats else 0):
        kind = "tilestats" if r == 0 else f"tilestats{r + 1}"
        parts = [dask.delayed(tile_stats_task)(src, stats, seg_d, tile, aux, t, r,
                                               dask_key_name=f"{kind}-{tag}-{tile.index[0]}.{tile.index[1]}")
                 for tile in tiles]
        stats = dask.delayed(reduce_stats_task)(parts, stats, seg_d, tiles,
                                                dask_key_name=f"reduce-{tag}" + (f"-r{r + 1}" if r else ""))
    with job.resource_annotation():
        results = [dask.delayed(tile_task)(src, stats, seg_d, tile, scratch, t, aux, tiles,
                                           dask_key_name=f"tile-{name}-t{t}-{tile.index[0]}.{tile.index[1]}-"
                                                         f"{arrays.run_id}")
                   for tile in tiles]
        return dask.delayed(merge_task)(src, stats, seg_d, results, scratch, t, aux, tiles, record,
                                        dask_key_name=f"merge-{tag}")


def number_graph(plan: RunPlan, job: PopulationJob, groups: list[list[int]], final: ArrayRef, grid: LabelGrid,
                 offsets: np.ndarray, counts: np.ndarray, dtype: np.dtype, run_id: str):
    """The task that writes the final ids of groups of frames (whole shard rows) and marks them numbered."""
    ts = [t for g in groups for t in g]
    return dask.delayed(number_task)(
        ArrayRef(plan.layout.scratch(job.name), run_id), final, groups, grid.windows(plan.frame_shape),
        plan.layout.ledger, job.name, {t: int(offsets[t]) for t in ts}, np.dtype(dtype).str,
        {t: int(counts[t]) for t in ts}, dask_key_name=f"number-{job.name}-t{ts[0]}-{run_id}")
