"""What workers run: thin tasks that read pixels, call :mod:`popseg_dask.stitch`, and write the
scratch array and the ledger; then the numbering of finished frames.

Module-level functions, so that they pickle by reference. A frame counts as segmented once its
merge has saved its record in the ledger, after its pixels are in the scratch array.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from ..errors import PopsegError
from ..io.ledger import Ledger
from ..location import Location
from ..segmenters import Segmenter, WindowContext
from ..stitch import FrameResult, TileResult, complete_frame, number_from_provisional, provisional_dtype, resolve_tile
from ..tiling import Tile, TilePlan

__all__ = ["ArrayRef", "FrameSource", "FrameRecord", "ArrayCanvas", "open_array", "window_context", "frame_stats_task",
           "frame_windows",
           "tile_stats_task", "reduce_stats_task", "tile_task", "merge_task", "whole_frames_task", "number_task",
           "shard_block", "write_shard_row"]

_FRAME_CACHE: dict[str, np.ndarray] = {}
_FRAME_CACHE_BYTES = 256 * 2**20
_ARRAYS: dict[tuple[str, str, str], Any] = {}


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

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

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


@dataclass(frozen=True)
class ArrayRef:
    """A Zarr array a run's tasks open by location; ``token`` (the run's id) tells a re-created
    array in the same place from the one a worker already opened."""

    location: Location
    token: str = ""


def open_array(a, mode: str):
    """The Zarr array ``a`` refers to, opened once per worker process and run.

    Opening reads and parses the metadata (milliseconds locally, a request on an object store);
    with thousands of small frames per run that was most of a task's time. Anything but an
    :class:`ArrayRef` (an array already) is returned as is.
    """
    import zarr

    if not isinstance(a, ArrayRef):
        return a
    key = (a.location.url, a.token, mode)
    arr = _ARRAYS.get(key)
    if arr is None:
        arr = zarr.open_array(store=a.location.zarr_store(read_only=mode == "r"), mode=mode)
        if len(_ARRAYS) > 64:
            _ARRAYS.clear()
        _ARRAYS[key] = arr
    return arr


class ArrayCanvas:
    """Frame ``t`` of a (t, y, x) array (Zarr or numpy) as a :class:`popseg_dask.stitch.Canvas`."""

    def __init__(self, arr, t: int):
        self.arr, self.t = arr, t

    def read(self, window):
        y0, y1, x0, x1 = window
        return np.array(self.arr[self.t, y0:y1, x0:x1])

    def write(self, window, values):
        y0, y1, x0, x1 = window
        self.arr[self.t, y0:y1, x0:x1] = values


@dataclass(frozen=True)
class FrameRecord:
    """Where a frame's merge records it: the ledger and the population."""

    ledger: Location
    population: str


def window_context(window, frame_shape, aux=None, t: int = 0) -> WindowContext:
    """The context of a window of frame ``t``, with its part of the stored tile facts (if any)."""
    y0, y1, x0, x1 = window
    aux_win = None if aux is None else np.asarray(open_array(aux, "r")[t, y0:y1, x0:x1])
    return WindowContext(tuple(frame_shape), (y0, x0), (y0 > 0, y1 < frame_shape[0], x0 > 0, x1 < frame_shape[1]),
                         aux_win, frame=t)


def frame_stats_task(source: FrameSource, stats: Any, segmenter: Segmenter) -> Any:
    """The segmenter's whole-frame statistics (or ``stats`` unchanged when it needs none)."""
    if not segmenter.needs_frame_stats:
        return stats
    return segmenter.frame_stats(source.read((0, source.shape[1], 0, source.shape[2])), stats)


def tile_stats_task(source: FrameSource, stats: Any, segmenter: Segmenter, tile: Tile, aux, t: int,
                    round_: int = 0) -> Any:
    """One core's partial frame statistics in round ``round_``; its per-pixel part is stored in ``aux``
    (rounds after the first see what earlier rounds stored there, over their whole window)."""
    ctx = window_context(tile.window, source.frame_shape, aux if round_ else None, t)
    partial, core_aux = segmenter.tile_stats(source.read(tile.window), stats, ctx, tile.core_in_window)
    if core_aux is not None:
        y0, y1, x0, x1 = tile.core
        open_array(aux, "r+")[t, y0:y1, x0:x1] = core_aux
    return partial


def reduce_stats_task(partials: list, stats: Any, segmenter: Segmenter, plan: TilePlan) -> Any:
    return segmenter.reduce_tile_stats(list(partials), stats, plan)


def tile_task(source: FrameSource, stats: Any, segmenter: Segmenter, tile: Tile, scratch, t: int,
              aux, plan: TilePlan, segmented: tuple | None = None) -> TileResult:
    """Segment one tile and write the provisional ids of its core (its own chunk of ``scratch``).

    ``segmented``: the segmenter's result for the tile's window, when already computed."""
    ctx = window_context(tile.window, source.frame_shape, aux, t)
    block = source.read(tile.window)
    core, result = resolve_tile(segmenter, block, stats, ctx, tile, plan, provisional_dtype(source.frame_shape),
                                segmented)
    y0, y1, x0, x1 = tile.core
    open_array(scratch, "r+")[t, y0:y1, x0:x1] = core
    return result


def merge_task(source: FrameSource, stats: Any, segmenter: Segmenter, results: list, scratch, t: int,
               aux, plan: TilePlan, record: FrameRecord | None = None) -> FrameResult:
    """Complete frame ``t`` (see :func:`popseg_dask.stitch.complete_frame`) and record it.

    With ``record`` the frame's anchors are saved in the ledger once its pixels are written, and
    only the frame's facts travel back (``anchors`` empty, ``info.count`` set).
    """
    canvas = ArrayCanvas(open_array(scratch, "r+"), t)
    result = complete_frame(segmenter, source.read, lambda w: window_context(w, source.frame_shape, aux, t), stats,
                            list(results), canvas, plan, provisional_dtype(source.frame_shape))
    if record is None:
        return result
    Ledger(record.ledger).save_frame(record.population, t, result)
    return FrameResult(np.zeros(0, np.int64), result.info)


def whole_frames_task(sources: list[FrameSource], ts: list[int], stats0: Any, segmenter: Segmenter, tile: Tile,
                      scratch, aux, plan: TilePlan, record: FrameRecord) -> list[FrameResult]:
    """Untiled frames in one task (nothing travels between them): statistics, the one tile and the
    merge of each. Frames go through ``segment_windows`` together (a network batches them); each
    is recorded as soon as it is written."""
    stats: dict[int, Any] = {}
    segmented = segmenter.segment_windows(frame_windows(sources, ts, stats0, segmenter, tile, aux, stats))
    out = []
    for source, t, result in zip(sources, ts, segmented, strict=True):  # strict: runs it to its end
        s = stats.pop(t)
        # the tile reads its window again: a slice of the frame cache up to 256 MiB; keeping every
        # streamed frame's pixels until its result instead would hold a batch of frames more
        part = tile_task(source, s, segmenter, tile, scratch, t, aux, plan, result)
        out.append(merge_task(source, s, segmenter, [part], scratch, t, aux, plan, record))
    return out


def frame_windows(sources: list[FrameSource], ts: list[int], stats0: Any, segmenter: Segmenter, tile: Tile,
                  aux=None, stats: dict | None = None):
    """``(block, stats, ctx)`` of each whole frame, read as it is pulled (by ``segment_windows``,
    perhaps in a thread of its own); each frame's statistics are also left in ``stats``."""
    for source, t in zip(sources, ts):
        s = frame_stats_task(source, stats0, segmenter)
        if stats is not None:
            stats[t] = s
        yield source.read(tile.window), s, window_context(tile.window, source.frame_shape, aux, t)


_BLOCKS = threading.local()


def shard_block(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A buffer for one shard row's block, reused by this thread's next write of the same shape.

    A shard row (8 frames of up to 2048²) is 128 MiB of uint32, above glibc's largest mmap
    threshold (32 MiB): allocated afresh, every write would map and first-touch 128 MiB anew,
    which measured 0.7-0.8 s per block here against 0.02 s reused (RESULTS.md, "Shard-row writes").
    One block per worker thread is kept; a block of another shape replaces it.
    """
    block = getattr(_BLOCKS, "block", None)
    if block is None or block.shape != tuple(shape) or block.dtype != np.dtype(dtype):
        _BLOCKS.block = block = np.empty(shape, dtype)
    return block


def write_shard_row(dst, ts: list[int], windows, dtype, fill) -> None:
    """Write every shard of frames ``ts`` (one shard row) whole, once, from a reused block;
    ``fill(out, t, (y0, y1, x0, x1))`` writes frame ``t``'s final ids of that window into ``out``."""
    for y0, y1, x0, x1 in windows:
        block = shard_block((len(ts), y1 - y0, x1 - x0), dtype)
        for i, t in enumerate(ts):
            fill(block[i], t, (y0, y1, x0, x1))
        dst[ts[0]:ts[-1] + 1, y0:y1, x0:x1] = block


def number_task(scratch: ArrayRef, final: ArrayRef, groups: list[list[int]], windows, ledger: Location,
                population: str, offsets: dict[int, int], dtype: str, counts: dict[int, int]) -> int:
    """Write the final ids of each group of frames (one shard row: every shard of those frames,
    each written whole, once) from their recorded anchors, then mark the group numbered.

    ``counts``: the objects per frame the offsets were computed from; a recorded frame with
    another count (a frame segmented twice at once, differently) would give ids that overlap
    the next frame's, so it stops the run instead.
    """
    led = Ledger(ledger)
    src, dst = open_array(scratch, "r"), open_array(final, "r+")
    anchors: dict[int, Any] = {}  # the current group's, rebound per group

    def fill(out, t, window):
        y0, y1, x0, x1 = window
        out[...] = number_from_provisional(src[t, y0:y1, x0:x1], anchors[t], offsets[t], np.dtype(dtype))

    for ts in groups:
        anchors = {t: led.load_frame(population, t).anchors for t in ts}
        for t in ts:
            if len(anchors[t]) != counts[t]:
                raise RuntimeError(f"frame {t} of {population}: {len(anchors[t])} objects recorded, {counts[t]} "
                                   "counted; run the same command again: it resumes and numbers from the records")
        write_shard_row(dst, ts, windows, dtype, fill)
        led.mark_numbered(population, ts)
    return sum(len(ts) for ts in groups)
