"""Direct numbering: frames written with their final ids by one pass, no scratch array.

A staged run segments every frame into a scratch array (a frame's tiles in tasks of their own,
perhaps on several workers), then a second pass reads it back and writes the final ids once
every count is known. Frames that fit a worker's memory — untiled, or tiled with every tile of
the frame in one task (:func:`popseg_dask._engine.frame.stitch_frame`) — keep their labels in
worker memory until their offset is known::

    segment (a few frames, labels 1..n per frame)  -> count ─┐
    segment ...                                     -> count ─┴─> offset of the next shard row
    [segments of one shard row] + offset of the row -> write (every shard of the row, once)

The offsets form a chain of tiny tasks (offset + counts) that runs ahead of the writes: a
shard row is written as soon as its own frames and every earlier frame are counted, in
parallel with other rows, and never waits for an earlier row's pixels to be stored. A worker
lost mid-run loses only labels not yet written; dask recomputes them (segmenters are pure).

Ids are those of the staged path (1 + raster rank of an object's first pixel + the counts of
earlier frames), so both write bitwise the same labels. The final dtype is fixed before any
count is known: direct numbering is chosen only where uint32 provably holds every id (frames x
pixels < 2^32, see :func:`popseg_dask._engine.plan.direct_fits`); longer movies of large frames are numbered staged.
"""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from ..io.ledger import Ledger
from ..location import Location
from ..segmenters import Segmenter
from ..stitch import FrameInfo, canonical_relabel, number_from_provisional
from ..tiling import Tile, TilePlan
from .frame import stitch_frame
from .plan import DIRECT_DTYPE
from .worker import ArrayRef, FrameSource, frame_windows, open_array, write_shard_row

__all__ = ["FramesInMemory", "segment_in_memory_task", "count_task", "advance_task", "write_task",
           "DirectChain", "shifted_into"]

@dataclass
class FramesInMemory:
    """Frames segmented and numbered 1..n each, held by the worker until their offset is known."""

    ts: list[int]
    labels: list[np.ndarray]
    infos: list[FrameInfo]

    @property
    def count(self) -> int:
        return sum(i.count for i in self.infos)

    def __sizeof__(self) -> int:  # what dask's memory accounting sees
        return sum(a.nbytes for a in self.labels) + 256 * len(self.ts)


def segment_in_memory_task(sources: list[FrameSource], ts: list[int], stats0: Any, segmenter: Segmenter, tile: Tile,
                           plan: TilePlan) -> FramesInMemory:
    """Segment frames and number each 1..n in raster order of the objects' first pixels.

    A whole frame cuts nothing, so every object is exact and stitching has nothing to do: the
    staged path's provisional ids, anchors and ranks reduce to :func:`canonical_relabel`
    (raster order of first pixels), which is computed directly (12 % of the task's time saved).
    A tiled frame is stitched in this task (``plan`` has several tiles), then numbered by its anchors.
    """
    if not plan.untiled:
        return _stitched_in_memory(sources, ts, stats0, segmenter, plan)
    labels, infos = [], []
    t0 = time.perf_counter()
    segmented = segmenter.segment_windows(frame_windows(sources, ts, stats0, segmenter, tile))
    for source, (raw, _, _) in zip(sources, segmented, strict=True):  # strict: runs it to its end
        if raw.shape != tuple(source.frame_shape):
            raise RuntimeError(f"segmenter {segmenter.name} returned shape {raw.shape} for a frame of "
                               f"{tuple(source.frame_shape)}")
        ids, n = canonical_relabel(raw)
        labels.append(ids)
        t1 = time.perf_counter()  # frames overlap in a batch: each is charged the time since the last one
        infos.append(FrameInfo(tile_s=t1 - t0, count=n))
        t0 = t1
    return FramesInMemory(list(ts), labels, infos)


def _stitched_in_memory(sources: list[FrameSource], ts: list[int], stats0: Any, segmenter: Segmenter,
                        plan: TilePlan) -> FramesInMemory:
    labels, infos = [], []
    for source, t in zip(sources, ts):
        prov, result = stitch_frame(segmenter, source, t, stats0, plan)
        labels.append(number_from_provisional(prov, result.anchors, 0, DIRECT_DTYPE))
        infos.append(result.info)
    return FramesInMemory(list(ts), labels, infos)


def count_task(frames: FramesInMemory) -> int:
    """Objects in a segment task's frames (runs where they are held: nothing travels)."""
    return frames.count


def advance_task(offset: int, counts: list[int]) -> int:
    """The offset after a unit: ``offset`` + its frames' counts."""
    return int(offset) + int(sum(counts))


def write_task(parts: list[FramesInMemory], offset: int, final: ArrayRef, groups: list[list[int]], windows,
               ledger: Location, population: str) -> list[tuple[int, FrameInfo]]:
    """Write the final ids of whole shard rows (``groups``) and mark each numbered, with its frames' facts."""
    labels, infos = {}, {}
    for p in parts:
        labels.update(zip(p.ts, p.labels))
        infos.update(zip(p.ts, p.infos))
    ts_all = sorted(labels)
    counts = np.asarray([infos[t].count for t in ts_all], np.int64)
    offsets = dict(zip(ts_all, (int(offset) + np.cumsum(counts) - counts).tolist()))
    if offsets[ts_all[-1]] + int(counts[-1]) > np.iinfo(DIRECT_DTYPE).max:  # excluded by direct_fits
        raise RuntimeError(f"{population}: more objects than {DIRECT_DTYPE} can number")
    dst, led = open_array(final, "r+"), Ledger(ledger)

    def fill(out, t, window):
        y0, y1, x0, x1 = window
        shifted_into(out, labels[t][y0:y1, x0:x1], offsets[t])

    for ts in groups:
        write_shard_row(dst, ts, windows, DIRECT_DTYPE, fill)
        led.mark_numbered(population, ts, [infos[t] for t in ts])
    return [(t, infos[t]) for t in ts_all]


def shifted_into(out: np.ndarray, ids: np.ndarray, offset: int) -> None:
    """``out`` = ``ids`` + ``offset`` where ``ids`` > 0, else 0 (a masked add is 5x slower)."""
    if not offset:
        out[...] = ids
        return
    np.not_equal(ids, 0, out=out)
    np.multiply(out, out.dtype.type(offset), out=out)
    np.add(out, ids, out=out, casting="unsafe")


class DirectChain:
    """The graphs of one population's direct numbering, unit by unit in frame order.

    Keeps the future of the offset after the last unit built; units must be built in order.
    ``known``: frames already numbered (a resumed run) and their counts, added to the chain
    where they lie.
    """

    def __init__(self, job, arrays, final: ArrayRef, windows, known: dict[int, int], n_frames: int):
        self.job, self.arrays, self.final, self.windows = job, arrays, final, windows
        counts = np.zeros(n_frames, np.int64)
        counts[list(known)] = list(known.values())
        # prefix sums: a unit's skipped counts in O(1), not a pass over every known frame per unit
        self.known_before = np.concatenate([[0], np.cumsum(counts)])
        self.offset: Any = 0
        self.next_frame = 0

    def _known_between(self, start: int, stop: int) -> int:
        return int(self.known_before[stop] - self.known_before[start])

    def build(self, groups: list[list[int]]):
        """The graph of one unit (whole shard rows): its write, and the offset after it."""
        job, arrays = self.job, self.arrays
        ts = [t for g in groups for t in g]
        tag = f"{job.name}-t{ts[0]}-{arrays.run_id}"
        tile = next(iter(job.tiles))  # the whole frame, when untiled
        seg_d = dask.delayed(job.segmenter, name=f"segmenter-{tag}", traverse=False)
        offset = self.offset
        before = self._known_between(self.next_frame, ts[0])
        if before:
            offset = dask.delayed(operator.add)(offset, before, dask_key_name=f"skip-{tag}")
        per = job.frames_per_task
        parts, counts = [], []
        for i in range(0, len(ts), per):
            chunk = ts[i:i + per]
            with job.resource_annotation():  # segmenting needs the segmenter's device; counting and writing do not
                part = dask.delayed(segment_in_memory_task)(
                    [arrays.source(job, t) for t in chunk], chunk, arrays.stats0.get(job.name), seg_d, tile,
                    job.tiles, dask_key_name=f"direct-{job.name}-t{chunk[0]}-{arrays.run_id}")
            parts.append(part)
            counts.append(dask.delayed(count_task)(part, dask_key_name=f"count-{job.name}-t{chunk[0]}-{arrays.run_id}"))
        write = dask.delayed(write_task)(parts, offset, self.final, groups, self.windows, arrays.ledger, job.name,
                                         dask_key_name=f"write-{tag}")
        after = dask.delayed(advance_task)(offset, counts, dask_key_name=f"offset-{tag}")
        self.next_frame = ts[-1] + 1
        return write, after

    def submitted(self, offset_future) -> None:
        """Called with the future of the offset after the unit just built."""
        self.offset = offset_future

