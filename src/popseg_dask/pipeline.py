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

Submission is progressive: each frame (or a few small untiled frames) is one small graph, and at
most four per worker thread are in flight, so a movie of 10^5 frames never becomes one giant graph.
A frame counts as done once its merge task has recorded it in the output's ledger
(:mod:`popseg_dask.io.ledger`); a re-run of the same config skips recorded frames.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dask
import numpy as np
import xarray as xr

from .cluster import open_client
from .config import RunConfig
from .errors import PopsegError
from .io.labels import LabelStore, label_chunks, relative_source
from .io.ledger import Ledger, fingerprint
from .io.movie import open_movie
from .segmenters import Segmenter, TileGrid, build_segmenter
from .stitch import frame_offsets, label_dtype_for
from .tasks import (FrameSlicer, FrameSource, _frame_stats_task, _whole_frames_task, _merge_task, _number_task, _prov_dtype, _reduce_stats_task,
                    _tile_stats_task, _tile_task, segment_frame)
from .tiling import TilePlan, plan_tiles

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
    if isinstance(config.input, list):
        raise PopsegError("'input' lists several movies: that is a screen; run it with `popseg run` "
                          "(or popseg_dask.screen.run_screen)")
    input_path = config.resolve(config.input)
    movie = open_movie(input_path, channels=config.channels, dims=config.dims, pixel_size_um=config.pixel_size_um)
    names = [str(c) for c in movie.c.values]
    jobs = []
    for pop, spec in config.populations.items():
        seg = build_segmenter(pop, spec, names, base_dir=config.base_dir, pixel_size_um=movie.attrs["pixel_size_um"])
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
    if spec.halo is not None and hasattr(seg, "with_context"):
        seg.with_context(spec.halo)  # a network's margin is an estimate: the user's halo replaces it
    elif spec.halo is not None and spec.halo < seg.halo:
        log.warning("population %s: halo %d is below the segmenter's margin %d; more objects will be "
                    "re-segmented in merged regions (results stay exact)", pop, spec.halo, seg.halo)
    tile = spec.tile
    if seg.whole_frame_reason and tile != "none":
        log.warning("population %s: frames are segmented whole: %s", pop, seg.whole_frame_reason)
        tile = "none"
    return plan_tiles(frame_shape, tile, halo, memory_bytes=spec.tile_memory_mb * 2**20,
                      clamp_halo=spec.halo is None, align=getattr(seg, "align", 1))


# --------------------------------------------------------------------------- run

def gpu_workers(client) -> list[str]:
    """Addresses of the cluster's workers that offer a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return sorted(a for a, w in workers.items() if (w.get("resources") or {}).get("GPU", 0) >= 1)


def _place_populations(client, plan: RunPlan, echo: Callable[[str], None]) -> None:
    """Resolve each population's ``device`` against the cluster, before anything is written.

    ``gpu``: its segment tasks ask for ``resources={"GPU": 1}``, so only GPU workers run them
    (statistics, IO and numbering go anywhere); with no GPU worker that would wait forever, so
    it is an error now. ``auto``: GPU when the segmenter can use one and the cluster has one.
    """
    gpus = gpu_workers(client)
    for job in plan.jobs:
        device = plan.config.populations[job.name].device
        can_gpu = "gpu" in getattr(job.segmenter, "devices", ("cpu",))
        if device == "gpu" and not gpus:
            raise PopsegError(
                f"population '{job.name}' asks for device: gpu but no worker of the cluster offers a GPU "
                "resource; start GPU workers with 'dask worker ... --resources GPU=1' (or set device: cpu)")
        chosen = "gpu" if device == "gpu" or (device == "auto" and can_gpu and gpus) else "cpu"
        if hasattr(job.segmenter, "on_device"):
            job.segmenter.on_device(chosen)
        if chosen == "gpu":
            echo(f"population {job.name}: segment tasks on GPU workers ({len(gpus)} of them)")


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    # package metadata is read from disk: once per process, not once per run (6 % of the
    # client's time in a run of 48 frames)
    import importlib.metadata as md

    out = []
    for pkg in ("popseg-dask", "dask", "distributed", "zarr", "numpy", "scikit-image", "scipy", "xarray"):
        try:
            out.append((pkg, md.version(pkg)))
        except md.PackageNotFoundError:
            pass
    return tuple(out)


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), **dict(_package_versions())}



class _Progress:
    """One status line, rewritten in place (the terminal only; nothing when quiet)."""

    def __init__(self, label: str, total: int, show: bool):
        import sys

        self.label, self.total, self.done, self.show = label, total, 0, show and total > 0
        self.t0 = self.last = time.perf_counter()
        self.out = sys.stderr

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.show and (now - self.last > 0.5 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.out.write(f"\r{self.label}: {self.done}/{self.total} frames ({rate:.1f}/s)   ")
            self.out.flush()

    def close(self) -> None:
        if self.show:
            self.out.write("\n")


def _run_progressively(client, units, build: Callable, window: int, on_result: Callable) -> None:
    """Compute ``build(unit)`` for every unit with at most ``window`` of them in flight.

    The client never holds more than ``window`` small graphs, so a screen of 10^5 frames needs no
    giant graph and no giant memory. Graphs are submitted unfused: fusion would drop the worker
    resources they carry. The first failure cancels what is in flight and is raised.
    """
    from distributed import as_completed

    it = iter(units)
    pending: dict[str, Any] = {}
    # this client's loop: as_completed otherwise takes the *default* client's, which in a process
    # that made other clients (tests, notebooks) may be another, closed one — and waits forever
    ac = as_completed(with_results=True, loop=client.loop)

    def submit() -> bool:
        unit = next(it, None)
        if unit is None:
            return False
        fut = client.compute(build(unit), optimize_graph=False)
        pending[fut.key] = (unit, fut)
        ac.add(fut)
        return True

    for _ in range(window):
        if not submit():
            break
    try:
        for fut, result in ac:
            unit, _ = pending.pop(fut.key)
            on_result(unit, result)
            fut.release()
            submit()
    finally:
        if pending:
            client.cancel([f for _, f in pending.values()])


def run(
    config: RunConfig,
    *,
    scheduler: str | None = None,
    cluster: str | None = None,
    security=None,
    n_workers: int | None = None,
    gpu_workers: int | None = None,
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
    cluster : str, optional
        ``local``, ``slurm``, ``slurm-runner`` or an address (see :func:`popseg_dask.cluster.open_client`).
    security : distributed.security.Security, optional
        TLS credentials for a ``tls://`` scheduler.
    n_workers : int, optional
        Workers of the embedded cluster.
    gpu_workers : int, optional
        Extra embedded workers owning one GPU each (default: one per GPU found).
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
    with open_client(scheduler, cluster=cluster, n_workers=n_workers, gpu_workers=gpu_workers,
                     security=security) as c:
        return _run_with(c, plan, overwrite, t0, progress, echo)


def _fingerprint(plan: RunPlan) -> str:
    """What must not change for a run to be resumed: input, config (not its output), tile plans."""
    cfg = plan.config.model_dump(mode="json")
    cfg.pop("output", None)
    return fingerprint({
        "input": str(plan.config.resolve(plan.config.input).resolve()), "config": cfg,
        "shape": [int(v) for v in plan.movie.shape],
        "tiles": {j.name: [list(j.tiles.tile), j.tiles.halo] for j in plan.jobs},
    })


def _window(client, jobs: list[PopulationJob]) -> tuple[int, int]:
    """Tasks in flight (enough to keep every worker thread busy, few enough to bound memory) and
    the cluster's worker threads."""
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
    return max(8, 4 * threads), max(1, threads)


def _run_with(client, plan: RunPlan, overwrite: bool, t0: float, progress: bool,
              echo: Callable[[str], None]) -> dict[str, Any]:
    config = plan.config
    _place_populations(client, plan, echo)
    store = LabelStore(plan.output, plan.ngff_version)
    fp = _fingerprint(plan)
    state = store.prepare(overwrite=overwrite, in_place=plan.in_place, populations=[j.name for j in plan.jobs],
                          fingerprint=fp)
    if state == "complete":
        echo(f"nothing to do: {plan.output} already holds this run, complete (pass --overwrite to redo it)")
        return {**store.read_record(), "up_to_date": True}
    ledger = Ledger(store.state_path())
    previous = store.read_record() if state != "fresh" else None
    record: dict[str, Any] = {
        "complete": False,
        "started": (previous or {}).get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": str(config.resolve(config.input).resolve()),
        "config": config.model_dump(mode="json"),
        "fingerprint": fp,
        "versions": _versions(),
        "populations": {j.name: j.segmenter.describe() for j in plan.jobs},
    }
    if state == "resume":
        record["resumed"] = (previous or {}).get("resumed", []) + [time.strftime("%Y-%m-%dT%H:%M:%S%z")]
    store.write_record(record)
    ledger.start(fp)
    movie = plan.movie
    n_t, n_y, n_x = movie.sizes["t"], movie.sizes["y"], movie.sizes["x"]
    if getattr(client, "dashboard_link", None):
        echo(f"dashboard: {client.dashboard_link}")
    echo(f"movie: {n_t} frames of {n_y}x{n_x}, channels {list(map(str, movie.c.values))}; "
         f"populations: {', '.join(j.name for j in plan.jobs)}; output: {plan.output}")
    timings: dict[str, float] = {"plan_s": time.perf_counter() - t0}
    window, threads = _window(client, plan.jobs)

    # Pass 1: frame statistics, tiles, merges — every frame of every population not yet recorded.
    t1 = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    todo, units, built = {}, [], {}
    for job in plan.jobs:
        seg, tiles = job.segmenter, job.tiles
        done = ledger.segmented(job.name, n_t)
        todo[job.name] = [t for t in range(n_t) if not done[t]]
        scratch = store.create_scratch(job.name, (n_t, n_y, n_x), tiles.tile, _prov_dtype(n_y, n_x))
        aux = store.create_scratch(job.name + ".aux", (n_t, n_y, n_x), tiles.tile, np.int32) \
            if seg.needs_tile_stats and not tiles.untiled else None
        stats0 = None
        if seg.reference_frames() and todo[job.name]:
            data = movie.data[:, job.channel_index]
            refs = {t: data[t] for t in seg.reference_frames()}
            stats0 = client.compute(dask.delayed(seg.movie_stats, pure=True)(refs), optimize_graph=False).result()
        built[job.name] = (scratch, aux, stats0)
        # Untiled frames go several to a task (up to 64, or 2^22 pixels): the scheduler's cost per
        # task bounds the throughput of a screen of tiny frames, and the client and scheduler share
        # the workers' cores (2^20 -> 2^22 pixels cut their CPU time per 48-frame run of 1024²
        # frames from 0.73 to 0.42 s; benchmarks/RESULTS.md). Never fewer than 4 tasks per worker
        # thread, so short movies still use every worker.
        per_task = max(1, min(64, (1 << 22) // max(1, n_y * n_x), n_t // (4 * threads))) if tiles.untiled else 1
        ts = todo[job.name]
        units += [(job, ts[i:i + per_task]) for i in range(0, len(ts), per_task)]
    n_total, n_todo = n_t * len(plan.jobs), sum(len(ts) for _, ts in units)
    if n_todo < n_total:
        echo(f"resuming: {n_total - n_todo} of {n_total} frame(s) already segmented; segmenting the other {n_todo}")
    stats_by_pop = {j.name: {"regions": 0, "copied": 0, "whole_frame": 0, "tile_s": 0.0, "merge_s": 0.0,
                             "frames_computed": 0} for j in plan.jobs}

    slicer = FrameSlicer(movie.data) if units else None

    def build(unit):
        # Every key is named here: hashing the arguments (dask's default) pickles the segmenter and
        # the frame's graph once per frame, which dominated the client's time on long movies.
        job, ts = unit
        seg, tiles = job.segmenter, job.tiles
        scratch, aux, stats0 = built[job.name]
        # a key of its own per unit: a key shared by graphs submitted at different times can be
        # released by one while another still waits on it
        seg_d = dask.delayed(seg, name=f"segmenter-{job.name}-t{ts[0]}-{run_id}", traverse=False)
        label = movie.attrs['source']['path']
        if tiles.untiled:  # whole frames, one or several per task: statistics computed inside
            (tile,) = tiles
            srcs = [FrameSource(slicer.frame(t, job.channel_index), f"frame {t} of {label}") for t in ts]
            with (dask.annotate(resources=seg.resources) if seg.resources else contextlib.nullcontext()):
                return dask.delayed(_whole_frames_task)(
                    srcs, ts, stats0, seg_d, tile, scratch, aux, tiles, (str(ledger.root), job.name),
                    dask_key_name=f"whole-{job.name}-t{ts[0]}-{run_id}")
        (t,) = ts
        grid = TileGrid((n_y, n_x), tiles.tile)
        tag = f"{job.name}-t{t}-{run_id}"
        src = dask.delayed(FrameSource(slicer.frame(t, job.channel_index),
                                       f"frame {t} of {movie.attrs['source']['path']}"),
                           name=f"frame-{tag}", traverse=False)
        stats = dask.delayed(_frame_stats_task)(src, stats0, seg_d, dask_key_name=f"stats-{tag}") \
            if seg.needs_frame_stats else stats0
        if seg.needs_tile_stats and not tiles.untiled:  # a whole frame computes its own
            parts = [dask.delayed(_tile_stats_task)(src, stats, seg_d, tile, aux, t,
                                                    dask_key_name=f"tilestats-{tag}-{tile.index[0]}.{tile.index[1]}")
                     for tile in tiles]
            stats = dask.delayed(_reduce_stats_task)(parts, stats, seg_d, grid, dask_key_name=f"reduce-{tag}")
        with (dask.annotate(resources=seg.resources) if seg.resources else contextlib.nullcontext()):
            # readable keys (dashboard, task stream); the run id keeps runs on one cluster apart
            results = [dask.delayed(_tile_task)(
                src, stats, seg_d, tile, scratch, t, aux, tiles,
                dask_key_name=f"tile-{job.name}-t{t}-{tile.index[0]}.{tile.index[1]}-{run_id}")
                for tile in tiles]
            return dask.delayed(_merge_task)(
                src, stats, seg_d, results, scratch, t, tiles.tile, aux, (str(ledger.root), job.name),
                dask_key_name=f"merge-{job.name}-t{t}-{run_id}")

    bar = _Progress("segmenting", n_todo, progress)

    seen: dict[tuple[str, int], dict] = {}  # frame facts as tasks return them (the ledger has the same)

    def took(unit, result):
        job, ts = unit
        agg = stats_by_pop[job.name]
        for t, (_, info) in zip(ts, result if isinstance(result, list) else [result]):
            seen[job.name, t] = info
            agg["regions"] += info["regions"]
            agg["copied"] += info.get("copied", 0)
            agg["whole_frame"] += int(info["whole_frame"])
            agg["tile_s"] += info["tile_s"]
            agg["merge_s"] += info["merge_s"]
            agg["frames_computed"] += 1
        bar.step(len(ts))

    if n_todo:
        echo(f"segmenting {n_todo} frame(s) of {len(plan.jobs)} population(s) "
             f"({', '.join(f'{j.name}: {len(j.tiles)} tile(s)/frame' for j in plan.jobs)}); "
             f"{window} frames in flight ...")
    try:
        _run_progressively(client, units, build, window, took)
    finally:
        bar.close()
    timings["segment_s"] = time.perf_counter() - t1

    # Pass 2: final ids = frame offset (prefix sum of counts) + rank of the object's anchor.
    t2 = time.perf_counter()
    per_pop, number_units, finals, counts_of = {}, [], {}, {}
    for job in plan.jobs:
        # frames of earlier runs (resuming) come from the ledger; this run's were handed back
        infos = [seen.get((job.name, t)) or ledger.load_frame(job.name, t)[1] for t in range(n_t)]
        counts = np.asarray([i["count"] for i in infos], dtype=np.int64)
        counts_of[job.name] = counts
        offsets = frame_offsets(counts)
        total = int(counts.sum())
        dtype = label_dtype_for(total)
        finals[job.name] = (store.create_labels(
            job.name, (n_t, n_y, n_x), dtype,
            source_image=relative_source(store.label_path(job.name), movie.attrs["source"]["path"])
            if not plan.in_place else "../../",
            scale=movie.attrs["scale"], unit_to_um=movie.attrs["source"].get("unit_to_um"),
            keep=state != "fresh"), offsets, dtype)
        numbered = ledger.numbered(job.name, n_t)
        missing = [t for t in range(n_t) if not numbered[t]]
        # numbering is cheap: batch small frames (up to 64 frames or 2^26 pixels per task), but keep
        # at least 4 tasks per worker thread so that every worker numbers
        per_task = max(1, min(64, (1 << 26) // max(1, n_y * n_x), len(missing) // (4 * threads)))
        number_units += [(job, missing[i:i + per_task]) for i in range(0, len(missing), per_task)]
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
            "frames_computed": stats_by_pop[job.name]["frames_computed"],
        }
    cy, cx = label_chunks((n_y, n_x))[1:]
    windows = [(y0, min(n_y, y0 + cy), x0, min(n_x, x0 + cx)) for y0 in range(0, n_y, cy) for x0 in range(0, n_x, cx)]

    def build_number(unit):
        job, ts = unit
        final, offsets, dtype = finals[job.name]
        return dask.delayed(_number_task)(
            str(store.scratch_path(job.name)), final, ts, windows, str(ledger.root), job.name,
            [int(offsets[t]) for t in ts], dtype.str, [int(counts_of[job.name][t]) for t in ts],
            dask_key_name=f"number-{job.name}-t{ts[0]}-{run_id}")

    bar = _Progress("numbering", sum(len(ts) for _, ts in number_units), progress)
    try:
        _run_progressively(client, number_units, build_number, window, lambda u, r: bar.step(len(u[1])))
    finally:
        bar.close()
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
        frames_computed=sum(p["frames_computed"] for p in per_pop.values()),
    )
    for name, info in per_pop.items():
        record["populations"][name].update(info)
    store.write_record(record)
    return record
