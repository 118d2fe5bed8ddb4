"""A run, step by step: plan -> prepare the output -> segment pass -> number pass -> finish.

1. **segment pass**: every frame of every population not yet in the ledger is segmented (tiles,
   merges: :mod:`popseg_dask.stitch`); its provisional ids go to a scratch array and its anchors
   to the ledger. At most ``plan.window`` small graphs are in flight (:mod:`.submit`).
   Frames that fit one task (untiled, or tiled and small enough) are numbered in the same pass,
   without a scratch array (:mod:`.direct`).
2. **number pass**: frame t's ids become ``1 + rank of the anchor + the prefix sum of the counts
   of frames < t``, written to the population's NGFF label image (staged populations).
3. **finish**: population records, scratch and ledger removed, and the run record with
   ``complete: true`` written last.

Ids are therefore unique across the movie, ordered by (frame, first pixel), and the output is
bitwise identical whatever the tile size, the number of workers or the order tasks ran in. A
re-run computes only the populations whose labels can change (:mod:`.lineage`, :mod:`.prepare`)
and, of an interrupted run's populations, only the frames not recorded yet.
"""

from __future__ import annotations

import time
from typing import Callable

import dask
import numpy as np

from ..cluster import PendingClient, open_client, serves_dashboard
from ..config import RunConfig
from ..io.labels import LabelGrid, LabelStore, create_scratch, relative_source
from ..io.lease import Lease
from ..io.record import PopulationRecord, RunRecord
from ..stitch import FrameInfo, frame_offsets, label_dtype_for
from .direct import DirectChain
from .graph import FrameSlicer, PassArrays, number_graph, segment_graph
from .worker import ArrayRef
from .plan import DIRECT_DTYPE, ClusterFacts, RunPlan, plan_run, shard_units
from .prepare import RunState, done_frames, input_tokens, prepare_output, reuse, same_input
from .submit import Progress, run_progressively

__all__ = ["run", "execute", "dry_run_record"]

Echo = Callable[[str], None]


def run(config: RunConfig, *, scheduler: str | None = None, cluster: str | None = None, security=None,
        n_workers: int | None = None, gpu_workers: int | None = None, in_place: bool = False,
        overwrite: bool = False, prune: bool = False, dry_run: bool = False, drop_cache: bool = False,
        progress: bool = False, client=None, echo: Echo = lambda msg: None) -> RunRecord:
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
        Replace an existing output (or existing labels of these populations in place). Without
        it, a run of an existing output computes only the populations whose labels can change.
    prune : bool
        Delete the labels of populations the config no longer names (default: kept, reported).
    dry_run : bool
        Say what would be kept, recomputed or added (one line per population) and stop.
    drop_cache : bool
        Delete the output's cached network outputs (``cache: model_outputs``) once the run is done.
    progress : bool or callable
        Show a progress bar; a callable ``progress(stage, done, total)`` receives each step instead.
    client : distributed.Client or popseg_dask.cluster.PendingClient, optional
        Use this client (and ignore ``scheduler``/``n_workers``); a pending one is waited for
        once the run is planned.
    echo : callable
        Receives one-line status messages (the CLI prints them).

    Returns
    -------
    RunRecord
        The run record, as stored in the output's root attributes.
    """
    t0 = time.perf_counter()
    plan = plan_run(config, in_place=in_place)
    if dry_run:
        return dry_run_record(plan, overwrite, prune, echo)
    # Connect before touching the output: a cluster that cannot be reached leaves nothing behind.
    if isinstance(client, PendingClient):
        client = client.result()
    if client is not None:
        return execute(client, plan, overwrite=overwrite, prune=prune, drop_cache=drop_cache, progress=progress,
                       echo=echo, t0=t0)
    with open_client(scheduler, cluster=cluster, n_workers=n_workers, gpu_workers=gpu_workers,
                     security=security) as c:
        return execute(c, plan, overwrite=overwrite, prune=prune, drop_cache=drop_cache, progress=progress,
                       echo=echo, t0=t0)


def dry_run_record(plan: RunPlan, overwrite: bool, prune: bool, echo: Echo) -> dict:
    """Say what a run of ``plan`` would keep, recompute or add (one line per population), doing nothing."""
    decisions, _, _ = reuse(plan, input_tokens(plan), overwrite=overwrite, prune=prune)
    for d in decisions:
        echo(d.line())
    return {"dry_run": True, "output": str(plan.output),
            "decisions": {d.population: {"action": d.action, "changed": list(d.changed)} for d in decisions}}


def execute(client, plan: RunPlan, *, overwrite: bool = False, prune: bool = False, drop_cache: bool = False,
            progress: bool = False, echo: Echo = lambda m: None, t0: float | None = None) -> RunRecord:
    """Run a plan on a connected client (see :func:`run`), holding the output's lease throughout."""
    t0 = time.perf_counter() if t0 is None else t0
    plan = plan.for_cluster(ClusterFacts.of(client))
    for job in plan.jobs:
        if job.device == "gpu":
            echo(f"population {job.name}: segment tasks on GPU workers ({plan.facts.gpu_workers} of them)")
    lease = Lease(plan.layout.lease)
    lease.acquire(echo)  # before anything in the output is read for resuming, or deleted
    try:
        state = prepare_output(plan, overwrite, prune, echo)
        if isinstance(state, dict):
            echo(f"nothing to do: {plan.output} already holds these labels, complete (pass --overwrite to redo them)")
            if drop_cache:
                drop_caches(plan, state, echo)
            return {**state, "up_to_date": True}
        state.lease = lease
        announce(client, state.plan, echo)
        timings = {"plan_s": time.perf_counter() - t0}
        t1 = time.perf_counter()
        segment_pass(client, state, progress, echo)
        timings["segment_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        lease.check()
        populations = number_pass(client, state, progress)
        timings["number_s"] = time.perf_counter() - t2
        lease.check()
        caches = {} if drop_cache else cache_sizes(state, echo)
        record = finish(client, state, populations, timings, t0, caches)
        fallback_hints(record, echo)
        if drop_cache:
            drop_caches(plan, record, echo)
        return record
    finally:
        lease.release()


def cache_sizes(state: RunState, echo: Echo) -> dict[str, dict[str, int]]:
    """Say what each computed population's cache of network outputs holds (for its run record)."""
    out = {}
    for job in state.plan.jobs:
        if job.segmenter.cache is None:
            continue
        size, frames = job.segmenter.cache.size()
        per = size / max(frames, 1)
        out[job.name] = {"bytes": size, "frames": frames, "bytes_per_frame": round(per)}
        echo(f"population {job.name}: network outputs cached, {per / 2**20:.2f} MB per frame "
             f"({size / 2**20:.1f} MB; --drop-cache deletes them)")
    return out


def drop_caches(plan: RunPlan, record: RunRecord, echo: Echo) -> None:
    """Delete every population's cached network outputs (``--drop-cache``); the stored record no
    longer mentions them."""
    root = plan.layout.root / "cache"
    if root.exists():
        root.delete()
        echo(f"cached network outputs deleted ({root})")
    pops = [p for p in record.get("populations", {}).values() if "cache" in p]
    for pop in pops:
        pop.pop("cache")
    if pops:
        LabelStore(plan.output, plan.ngff_version).write_record(record)


def fallback_hints(record: RunRecord, echo: Echo) -> None:
    """Say which tiled populations had frames segmented whole, and what keeps them tiled."""
    for name, pop in record["populations"].items():
        n = pop.get("whole_frame_fallbacks", 0)
        if n:
            echo(f"population {name}: {n} frame(s) were segmented whole: objects (or clusters of them) wider than "
                 f"the tiles' padding of {pop['halo']} px; a larger max_object_px (or halo) keeps them tiled")


def announce(client, plan: RunPlan, echo: Echo) -> None:
    if serves_dashboard(client):
        echo(f"dashboard: {client.dashboard_link}")
    n_t, (Y, X) = plan.n_frames, plan.frame_shape
    echo(f"movie: {n_t} frames of {Y}x{X}, channels {list(map(str, plan.movie.c.values))}; "
         f"populations: {', '.join(j.name for j in plan.jobs) or 'none to compute'}; output: {plan.output}")


def _pass_arrays(client, state: RunState, todo: dict[str, list[int]]) -> PassArrays:
    """Scratch arrays (created or reopened) and movie statistics (computed once) of each population."""
    plan = state.plan
    arrays = PassArrays(state.run_id, FrameSlicer(plan.movie.data), plan.movie.attrs["source"]["path"],
                        plan.layout.ledger)
    zf, rid = state.store.zarr_format, state.run_id
    for job in plan.jobs:
        spec = job.scratch
        if job.numbering == "staged":
            arrays.scratch[job.name] = ArrayRef(create_scratch(plan.layout.scratch(job.name), spec.shape,
                                                               spec.chunks, spec.dtype, zf), rid)
        arrays.aux[job.name] = ArrayRef(create_scratch(plan.layout.aux(job.name), spec.shape, spec.chunks, np.int32,
                                                       zf), rid) if spec.aux and job.numbering == "staged" else None
        if job.needs_movie_stats and todo[job.name]:
            data = plan.movie.data[:, job.channel_index]
            refs = {t: data[t] for t in job.segmenter.reference_frames()}
            arrays.stats0[job.name] = client.compute(dask.delayed(job.segmenter.movie_stats, pure=True)(refs),
                                                     optimize_graph=False).result()
    return arrays


def segment_pass(client, state: RunState, progress: bool, echo: Echo) -> None:
    """Segment every frame of every population that the ledger does not hold yet (and number the
    frames of directly numbered populations as it goes), all populations in one stream of work."""
    plan = state.plan
    n_t = plan.n_frames
    todo = {j.name: np.flatnonzero(~done_frames(state.ledger, j, n_t, state.known)).tolist() for j in plan.jobs}
    n_total, n_todo = n_t * len(plan.jobs), sum(len(ts) for ts in todo.values())
    state.computed = {j.name: 0 for j in plan.jobs}
    if n_todo < n_total:
        echo(f"resuming: {n_total - n_todo} of {n_total} frame(s) already segmented; segmenting the other {n_todo}")
    arrays = _pass_arrays(client, state, todo)
    if not n_todo:
        return
    echo(f"segmenting {n_todo} frame(s) of {len(plan.jobs)} population(s) "
         f"({', '.join(f'{j.name}: {len(j.tiles)} tile(s)/frame' for j in plan.jobs)}); "
         f"{plan.window} frames in flight ...")
    chains, units = {}, []
    for job in plan.jobs:
        if job.numbering == "direct":
            chains[job.name], direct = _direct_units(state, job, arrays)
            units += [(job, groups) for groups in direct]
        else:
            units += [(job, todo[job.name][i:i + job.frames_per_task])
                      for i in range(0, len(todo[job.name]), job.frames_per_task)]
    bar = Progress("segmenting", n_todo, progress)

    def build(unit):
        job, part = unit
        return chains[job.name].build(part) if job.name in chains else segment_graph(job, part, arrays)

    def took(unit, results):
        job, part = unit
        if job.name in chains:  # [(t, info)] of whole shard rows, written
            facts = results
        else:
            facts = list(zip(part, (r.info for r in (results if isinstance(results, list) else [results]))))
        for t, info in facts:
            state.seen[job.name, t] = info
        state.computed[job.name] += len(facts)
        bar.step(len(facts))

    def weight(unit):  # segment tasks in the unit
        job, part = unit
        return -(-sum(len(g) for g in part) // job.frames_per_task) if job.name in chains else 1

    try:
        run_progressively(client, units, build, plan.window, took, weight=weight,
                          on_submit=lambda unit, side: side and chains[unit[0].name].submitted(side[0]))
    finally:
        bar.close()


def _final_labels(state: RunState, job, dtype) -> ArrayRef:
    """The population's NGFF label image, created (or reopened, resuming) for this run's writes."""
    plan = state.plan
    return ArrayRef(state.store.create_labels(
        job.name, (plan.n_frames, *plan.frame_shape), dtype,
        source_image="../../" if plan.in_place else relative_source(plan.layout.label_group(job.name), plan.input),
        scale=plan.movie.attrs["scale"], unit_to_um=plan.movie.attrs["source"].get("unit_to_um"),
        keep=job.name in state.resumed), state.run_id)


def _direct_units(state: RunState, job, arrays: PassArrays) -> tuple[DirectChain, list[list[list[int]]]]:
    """The offset chain of a directly numbered population and its units: whole shard rows not yet
    numbered (see :mod:`.direct`)."""
    plan, n_t = state.plan, state.plan.n_frames
    grid = LabelGrid.for_shape(plan.frame_shape, state.store.zarr_format)
    known = state.known.get(job.name, {})
    chain = DirectChain(job, arrays, _final_labels(state, job, DIRECT_DTYPE), grid.windows(plan.frame_shape),
                        {t: i.count for t, i in known.items()}, n_t)
    return chain, shard_units([t for t in range(n_t) if t not in known], grid.frames_per_write,
                              job.frames_per_task, n_t)


def number_pass(client, state: RunState, progress: bool) -> dict[str, PopulationRecord]:
    """Write every population's final ids; returns what each population's record says of them."""
    plan, ledger = state.plan, state.ledger
    n_t, units, out = plan.n_frames, [], {}
    for job in plan.jobs:
        # frames of earlier runs (resuming) come from the ledger; this run's were handed back
        if job.numbering == "direct":
            known = {**state.known.get(job.name, {}), **{t: i for (p, t), i in state.seen.items()
                                                         if p == job.name}}
            infos = [known[t] for t in range(n_t)]
            out[job.name] = population_record(job, infos, np.asarray([i.count for i in infos], np.int64),
                                              DIRECT_DTYPE, state.computed.get(job.name, 0))
            continue
        infos = [state.seen.get((job.name, t)) or ledger.load_frame(job.name, t).info for t in range(n_t)]
        counts = np.asarray([i.count for i in infos], dtype=np.int64)
        dtype = label_dtype_for(int(counts.sum()))
        final = _final_labels(state, job, dtype)
        missing = np.flatnonzero(~ledger.numbered(job.name, n_t)).tolist()
        grid = LabelGrid.for_shape(plan.frame_shape, state.store.zarr_format)
        offsets = frame_offsets(counts)
        units += [(job, groups, final, grid, offsets, counts, dtype)
                  for groups in shard_units(missing, grid.frames_per_write, plan.number_frames_per_task, n_t)]
        out[job.name] = population_record(job, infos, counts, dtype, state.computed.get(job.name, 0))
    bar = Progress("numbering", sum(len(g) for u in units for g in u[1]), progress)
    try:
        run_progressively(client, units, lambda u: number_graph(plan, *u, state.run_id), plan.window,
                          lambda u, r: bar.step(r))
    finally:
        bar.close()
    return out


def population_record(job, infos: list[FrameInfo], counts: np.ndarray, dtype: np.dtype,
                      computed: int) -> PopulationRecord:
    """What a run says of one population: objects, tiles, and how stitching went."""
    tile_s = sum(i.tile_s for i in infos)
    merge_s = sum(i.merge_s for i in infos)
    return {
        "n_objects": int(counts.sum()), "objects_per_frame": counts.tolist(), "dtype": dtype.name,
        "tile": list(job.tiles.tile), "halo": job.tiles.halo, "tiles_per_frame": len(job.tiles),
        "numbering": job.numbering,
        "whole_frame_reason": job.segmenter.whole_frame_reason,
        "merged_regions": int(sum(i.regions for i in infos)),
        "copied_clusters": int(sum(i.copied for i in infos)),
        "whole_frame_fallbacks": 0 if job.tiles.untiled else int(sum(i.whole_frame for i in infos)),
        "largest_merge_px": int(max((i.largest_merge_px for i in infos), default=0)),
        "tile_task_s": tile_s, "merge_task_s": merge_s,
        "stitch_share": merge_s / (tile_s + merge_s) if tile_s + merge_s > 0 else 0.0,
        "frames_computed": computed,
    }


def finish(client, state: RunState, populations: dict[str, PopulationRecord], timings: dict[str, float],
           t0: float, caches: dict[str, dict[str, int]] | None = None) -> RunRecord:
    """Mark each population complete, drop the run's state, write the record ``complete: true``
    (with ``caches``: what :func:`cache_sizes` found)."""
    if state.tokens is not None:  # an input replaced while this run read it: nothing is marked complete
        plan = state.plan
        same_input(plan, state.tokens, input_tokens(plan), during=True)
    for name, info in populations.items():
        started = state.record["populations"][name]
        state.store.mark_population(name, {"complete": True, "labels_from": started["labels_from"],
                                           "fingerprint": started["fingerprint"], **info})
    state.ledger.clear()
    timings["total_s"] = time.perf_counter() - t0
    record = state.record
    record.update(output=str(state.plan.output), complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  timings=timings, n_workers=len(client.scheduler_info().get("workers", {})),
                  frames_computed=sum(p["frames_computed"] for p in populations.values()))
    for name, info in populations.items():
        record["populations"][name].update(info)
    for name, cache in (caches or {}).items():
        record["populations"][name]["cache"] = cache
    state.store.write_record(record)
    return record
