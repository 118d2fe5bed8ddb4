"""Build and run the Dask work of a run: segment every population, number ids globally, write.

Per population and frame:

1. **frame statistics** (only what the segmenter asks for): whole-frame facts such as Otsu
   thresholds, then per-tile partial facts reduced per frame (see :mod:`popseg_dask.tiling`);
2. **tiles**: each tile segments its padded window, writes the provisional ids of the objects it
   resolves into its own core of a scratch array (one writer per chunk), and reports the clusters
   it could not resolve (:mod:`popseg_dask.stitch`);
3. **merge** (one task per frame): copies clusters a neighbour resolved, re-segments what no tile
   resolved, and returns the frame's sorted anchors (the provisional ids of its objects);
4. **numbering**: frame t's ids become 1 + rank of the anchor + the prefix sum of the counts of
   frames < t, written to the population's NGFF label image.

Ids are therefore unique across the movie, ordered by (frame, first pixel), and the output is
bitwise identical whatever the tile size, the number of workers or the order tasks ran in. The run
record in the output's root attributes says ``complete: true`` only after the last write.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask
import numpy as np
import xarray as xr
from scipy import ndimage as ndi

from .cluster import open_client
from .config import RunConfig
from .errors import PopsegError
from .io.labels import LabelStore, label_chunks, relative_source
from .io.movie import open_movie
from .segmenters import Segmenter, TileGrid, WindowContext, build_segmenter
from .stitch import (cluster_boxes, compact_ids, clusters, frame_offsets, group_boxes, label_dtype_for,
                     number_from_provisional, provisional_ids, resolved_clusters)
from .tiling import Tile, TilePlan, plan_tiles

__all__ = ["PopulationJob", "RunPlan", "plan_run", "run", "default_output", "segment_frame"]

log = logging.getLogger(__name__)

_STRIP = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif")


@dataclass
class PopulationJob:
    """One population: its segmenter and the movie channels it reads."""

    name: str
    segmenter: Segmenter
    channel_index: list[int]
    tiles: TilePlan


@dataclass
class RunPlan:
    """Everything decided before any pixel is read."""

    config: RunConfig
    movie: xr.DataArray
    jobs: list[PopulationJob]
    output: Path
    in_place: bool
    ngff_version: str = "0.5"
    extra: dict[str, Any] = field(default_factory=dict)


def default_output(input_path: Path) -> Path:
    """``<name>.popseg.zarr`` beside the input."""
    name = input_path.name
    for suf in _STRIP:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    return input_path.parent / f"{name}.popseg.zarr"


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def plan_run(config: RunConfig, *, in_place: bool = False) -> RunPlan:
    """Open the movie lazily, build every population's segmenter and choose the output.

    Raises
    ------
    PopsegError
        For any config/input mismatch (unknown channel, bad output location, ...).
    """
    input_path = config.resolve(config.input)
    movie = open_movie(input_path, channels=config.channels, dims=config.dims, pixel_size_um=config.pixel_size_um)
    names = [str(c) for c in movie.c.values]
    jobs = []
    for pop, spec in config.populations.items():
        seg = build_segmenter(pop, spec, names, base_dir=config.base_dir)
        for t in seg.reference_frames():
            if not 0 <= t < movie.sizes["t"]:
                raise PopsegError(
                    f"population '{pop}': reference frame {t} is outside the movie (frames 0..{movie.sizes['t'] - 1})"
                )
        jobs.append(PopulationJob(pop, seg, [names.index(c) for c in seg.channels],
                                  _tile_plan(pop, spec, seg, (movie.sizes["y"], movie.sizes["x"]))))
    source = movie.attrs["source"]
    if in_place:
        if source["format"] != "ome-zarr":
            raise PopsegError("--in-place needs an OME-Zarr input (labels are written inside the image group)")
        output = input_path
        version = "0.4" if source.get("zarr_format") == 2 else "0.5"
    else:
        output = config.resolve(config.output) if config.output else default_output(input_path)
        if input_path.is_dir() and _is_within(output, input_path):
            raise PopsegError(
                f"output {output} is inside the input {input_path}; choose another 'output' or pass --in-place"
            )
        if _is_within(input_path, output):
            raise PopsegError(f"output {output} contains the input {input_path}; choose another 'output'")
        version = "0.5"
    return RunPlan(config, movie, jobs, Path(output), in_place, version)


def _tile_plan(pop: str, spec, seg: Segmenter, frame_shape: tuple[int, int]) -> TilePlan:
    # The window padding: the segmenter's exactness margin plus room for a whole object, so an
    # object cut by a core edge is seen whole (and resolved) by the tile that holds its anchor.
    halo = seg.halo + seg.object_size if spec.halo is None else spec.halo
    if spec.halo is not None and spec.halo < seg.halo:
        log.warning("population %s: halo %d is below the segmenter's margin %d; more objects will be "
                    "re-segmented in merged regions (results stay exact)", pop, spec.halo, seg.halo)
    tile = spec.tile
    if seg.whole_frame_reason and tile != "none":
        log.warning("population %s: frames are segmented whole: %s", pop, seg.whole_frame_reason)
        tile = "none"
    return plan_tiles(frame_shape, tile, halo, memory_bytes=spec.tile_memory_mb * 2**20,
                      clamp_halo=spec.halo is None)


# --------------------------------------------------------------------------- tasks
# Module-level functions: they are what workers run, and they pickle by reference.

_FRAME_CACHE: dict[str, np.ndarray] = {}
_FRAME_CACHE_BYTES = 256 * 2**20


class FrameSource:
    """One frame of a population's channels ``(c, y, x)``, read window by window inside tasks.

    Holds a small dask graph (the frame's chunks only). Frames up to 256 MiB are read once
    per worker process and sliced, since a window read decodes whole chunks anyway.
    """

    def __init__(self, frame):
        (self.arr,) = dask.optimize(frame)
        self.shape = tuple(frame.shape)
        self.nbytes = int(np.prod(self.shape)) * frame.dtype.itemsize

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
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
    for c in _present(cl[outside], len(ok)):
        if not ok[c]:
            continue
        b = cluster_boxes(cl, [c])[0]
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
                tile_shape: tuple[int, int], aux=None) -> tuple[np.ndarray, dict]:
    """Complete a frame: copy what tiles resolved for their neighbours, re-segment what none resolved.

    A cut cluster whose core pixels some other tile resolved is copied from it; the rest are
    grouped (union of overlapping boxes) and re-segmented in a window grown around each group
    until every cluster touching the group is resolved (at worst the whole frame).
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
    info["merge_s"] = time.perf_counter() - t0
    return np.unique(np.concatenate(anchors)) if anchors else np.zeros(0, np.int64), info


def _open_array(a, mode: str):
    import zarr

    return zarr.open_array(a, mode=mode) if isinstance(a, str) else a


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


def _number_task(scratch: str, final: str, t: int, window, anchors: np.ndarray, offset: int, dtype: str) -> int:
    import zarr

    y0, y1, x0, x1 = window
    prov = zarr.open_array(scratch, mode="r")[t, y0:y1, x0:x1]
    zarr.open_array(final, mode="r+")[t, y0:y1, x0:x1] = number_from_provisional(prov, anchors, offset, np.dtype(dtype))
    return t


def _prov_dtype(Y: int, X: int) -> np.dtype:
    return np.dtype(np.uint32) if Y * X < np.iinfo(np.uint32).max else np.dtype(np.uint64)


# --------------------------------------------------------------------------- run

def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("popseg-dask", "dask", "distributed", "zarr", "numpy", "scikit-image", "scipy", "xarray"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _compute(client, tasks: list, progress: bool) -> list:
    # optimize_graph=False keeps each task's resource annotation: graph fusion would drop it.
    futures = client.compute(tasks, optimize_graph=False)
    if progress:
        from distributed import progress as show_progress

        show_progress(futures)
        print()
    return client.gather(futures)


def run(
    config: RunConfig,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    in_place: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    client=None,
    echo: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Segment every population of a movie and write globally numbered labels.

    Parameters
    ----------
    config : RunConfig
        The validated configuration.
    scheduler : str, optional
        Address of an existing Dask scheduler; default: an embedded LocalCluster.
    n_workers : int, optional
        Workers of the embedded cluster.
    in_place : bool
        Write the labels inside the input OME-Zarr image.
    overwrite : bool
        Replace an existing output (or existing labels of these populations in place).
    progress : bool
        Show a progress bar.
    client : distributed.Client, optional
        Use this client (and ignore ``scheduler``/``n_workers``).
    echo : callable
        Receives one-line status messages (the CLI prints them).

    Returns
    -------
    dict
        The run record, as stored in the output's root attributes.
    """
    t0 = time.perf_counter()
    plan = plan_run(config, in_place=in_place)
    # Connect before touching the output: a cluster that cannot be reached leaves nothing behind.
    if client is not None:
        return _run_with(client, plan, overwrite, t0, progress, echo)
    with open_client(scheduler, n_workers=n_workers) as c:
        return _run_with(c, plan, overwrite, t0, progress, echo)


def _run_with(client, plan: RunPlan, overwrite: bool, t0: float, progress: bool,
              echo: Callable[[str], None]) -> dict[str, Any]:
    config = plan.config
    store = LabelStore(plan.output, plan.ngff_version)
    store.prepare(overwrite=overwrite, in_place=plan.in_place, populations=[j.name for j in plan.jobs])
    record: dict[str, Any] = {
        "complete": False,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": str(config.resolve(config.input).resolve()),
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "populations": {j.name: j.segmenter.describe() for j in plan.jobs},
    }
    store.write_record(record)
    movie = plan.movie
    n_t, n_y, n_x = movie.sizes["t"], movie.sizes["y"], movie.sizes["x"]
    if getattr(client, "dashboard_link", None):
        echo(f"dashboard: {client.dashboard_link}")
    echo(f"movie: {n_t} frames of {n_y}x{n_x}, channels {list(map(str, movie.c.values))}; "
         f"populations: {', '.join(j.name for j in plan.jobs)}; output: {plan.output}")
    timings: dict[str, float] = {"plan_s": time.perf_counter() - t0}

    # Pass 1: frame statistics, tiles, merges — every frame of every population.
    t1 = time.perf_counter()
    tasks, spans = [], {}
    for job in plan.jobs:
        seg, tiles = job.segmenter, job.tiles
        scratch = store.create_scratch(job.name, (n_t, n_y, n_x), tiles.tile, _prov_dtype(n_y, n_x))
        aux = store.create_scratch(job.name + ".aux", (n_t, n_y, n_x), tiles.tile, np.int32) \
            if seg.needs_tile_stats and not tiles.untiled else None
        grid = TileGrid((n_y, n_x), tiles.tile)
        data = movie.data[:, job.channel_index]
        stats0 = None
        if seg.reference_frames():
            refs = {t: data[t] for t in seg.reference_frames()}
            stats0 = dask.delayed(seg.movie_stats, pure=True)(refs)
        seg_d = dask.delayed(seg, pure=True, traverse=False)
        start = len(tasks)
        annotate = dask.annotate(resources=seg.resources) if seg.resources else contextlib.nullcontext()
        for t in range(n_t):
            src = dask.delayed(FrameSource(data[t]), pure=True, traverse=False)
            stats = dask.delayed(_frame_stats_task, pure=True)(src, stats0, seg_d) if seg.needs_frame_stats else stats0
            if seg.needs_tile_stats and not tiles.untiled:  # a whole frame computes its own
                parts = [dask.delayed(_tile_stats_task, pure=False)(src, stats, seg_d, tile, aux, t) for tile in tiles]
                stats = dask.delayed(_reduce_stats_task, pure=True)(parts, stats, seg_d, grid)
            with annotate:
                results = [dask.delayed(_tile_task, pure=False)(src, stats, seg_d, tile, scratch, t, aux, tiles)
                           for tile in tiles]
                tasks.append(dask.delayed(_merge_task, pure=False)(src, stats, seg_d, results, scratch, t, tiles.tile,
                                                                   aux))
        spans[job.name] = (start, len(tasks))
    echo(f"segmenting {n_t} frames x {len(plan.jobs)} population(s) "
         f"({', '.join(f'{j.name}: {len(j.tiles)} tile(s)/frame' for j in plan.jobs)}) ...")
    merged = _compute(client, tasks, progress)
    timings["segment_s"] = time.perf_counter() - t1

    # Pass 2: final ids = frame offset (prefix sum of counts) + rank of the object's anchor.
    t2 = time.perf_counter()
    tasks, per_pop = [], {}
    for job in plan.jobs:
        a, b = spans[job.name]
        anchors = [m[0] for m in merged[a:b]]
        infos = [m[1] for m in merged[a:b]]
        counts = np.asarray([len(x) for x in anchors], dtype=np.int64)
        offsets = frame_offsets(counts)
        total = int(counts.sum())
        dtype = label_dtype_for(total)
        final = store.create_labels(
            job.name, (n_t, n_y, n_x), dtype,
            source_image=relative_source(store.label_path(job.name), movie.attrs["source"]["path"])
            if not plan.in_place else "../../",
            scale=movie.attrs["scale"], unit_to_um=movie.attrs["source"].get("unit_to_um"),
        )
        scratch = str(store.scratch_path(job.name))
        cy, cx = label_chunks((n_y, n_x))[1:]
        for t in range(n_t):
            for y0 in range(0, n_y, cy):
                for x0 in range(0, n_x, cx):
                    win = (y0, min(n_y, y0 + cy), x0, min(n_x, x0 + cx))
                    tasks.append(dask.delayed(_number_task, pure=False)(
                        scratch, final, t, win, anchors[t], int(offsets[t]), dtype.str))
        tile_s = sum(i["tile_s"] for i in infos)
        merge_s = sum(i["merge_s"] for i in infos)
        per_pop[job.name] = {
            "n_objects": total, "objects_per_frame": counts.tolist(), "dtype": dtype.name,
            "tile": list(job.tiles.tile), "halo": job.tiles.halo, "tiles_per_frame": len(job.tiles),
            "whole_frame_reason": job.segmenter.whole_frame_reason,
            "merged_regions": int(sum(i["regions"] for i in infos)),
            "copied_clusters": int(sum(i.get("copied", 0) for i in infos)),
            "whole_frame_fallbacks": 0 if job.tiles.untiled else int(sum(i["whole_frame"] for i in infos)),
            "tile_task_s": tile_s, "merge_task_s": merge_s,
            "stitch_share": merge_s / (tile_s + merge_s) if tile_s + merge_s > 0 else 0.0,
        }
    _compute(client, tasks, progress)
    timings["number_s"] = time.perf_counter() - t2

    for name, info in per_pop.items():
        store.mark_population(name, {"complete": True, **info})
    store.drop_scratch()
    timings["total_s"] = time.perf_counter() - t0
    record.update(
        output=str(plan.output),
        complete=True,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        timings=timings,
        n_workers=len(client.scheduler_info().get("workers", {})),
    )
    for name, info in per_pop.items():
        record["populations"][name].update(info)
    store.write_record(record)
    return record

