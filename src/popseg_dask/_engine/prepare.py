"""Opening an output for a run: fresh, resumed, or incremental (only what changed is computed).

:func:`reuse` decides, per population, what a run does with an existing output
(:mod:`.lineage`: kept, resumed, recomputed, new, removed); :func:`prepare_output` applies it with
the lease held: it deletes what is recomputed or pruned (and nothing else), checks that resumed
frames were computed from the input as it is now, and writes the run record, ``complete: false``.
"""

from __future__ import annotations

import dataclasses
import platform
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import PopsegError
from ..io.cache import ModelOutputCache
from ..io.identity import changed_frames, frame_tokens
from ..io.labels import LabelStore
from ..io.lease import Lease
from ..io.ledger import Ledger, fingerprint
from ..io.record import RunRecord
from ..stitch import FrameInfo
from .lineage import Decision, decide, labels_from, network_from, package_version, population_fingerprint
from .plan import RunPlan

__all__ = ["RunState", "prepare_output", "reuse", "same_input"]

Echo = Callable[[str], None]


@dataclass
class RunState:
    """What the steps of one run share: its output store, ledger and record, and what its tasks
    reported (frame facts, frames computed per population). ``plan.jobs``: the populations this
    run computes (kept ones are not among them)."""

    plan: RunPlan
    store: LabelStore
    ledger: Ledger
    record: RunRecord
    resumed: set[str] = field(default_factory=set)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    seen: dict[tuple[str, int], FrameInfo] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    lease: Lease | None = None
    tokens: list[str] | None = None
    # directly numbered frames of an earlier run of this output (resuming), by population: read once
    known: dict[str, dict[int, FrameInfo]] = field(default_factory=dict)


def _package_versions() -> tuple[tuple[str, str], ...]:
    # package_version reads metadata from disk once per process, not once per run (it was 6 % of
    # the client's time in a run of 48 frames)
    pkgs = ("popseg-dask", "dask", "distributed", "zarr", "numpy", "scikit-image", "scipy", "xarray")
    return tuple((pkg, v) for pkg in pkgs if (v := package_version(pkg)) is not None)


def input_tokens(plan: RunPlan) -> list | None:
    """The input's per-frame tokens (:mod:`popseg_dask.io.identity`)."""
    return frame_tokens(plan.movie.attrs["source"], plan.n_frames, plan.input.storage_options)


def reuse(plan: RunPlan, tokens: list | None, *, overwrite: bool, prune: bool = False
          ) -> tuple[list[Decision], dict[str, dict], RunRecord | None]:
    """What a run of ``plan`` does with each population of its output, each configured
    population's ``labels_from``, and the output's stored run record (None: none there). Reads
    the output only (a dry run calls it without the lease)."""
    current = {j.name: labels_from(plan, j, tokens) for j in plan.jobs}
    store = LabelStore(plan.output, plan.ngff_version)
    stored = store.read_record()
    if overwrite and not plan.in_place:
        return [Decision(n, "new") for n in current], current, stored
    if stored is None:
        return [Decision(n, "new" if store.population_record(n) is None else "recomputed", ("labels of no run",))
                for n in current], current, stored
    if stored.get("input") not in (None, plan.input.url):
        raise PopsegError(f"output {plan.output} holds labels of another input ({stored['input']}); pass "
                          "--overwrite to replace them (they would be lost) or set another 'output'")
    fmt = store.stored_format()
    if fmt is not None and not plan.in_place and fmt != store.zarr_format:
        raise PopsegError(f"output {plan.output} is Zarr v{fmt} and this run writes v{store.zarr_format} "
                          f"(ngff {plan.ngff_version}); pass --overwrite to replace it or set another 'output'")
    decisions = decide(current, stored, {n: store.population_record(n) for n in current}, prune=prune)
    if overwrite:  # in place: every configured population is replaced, nothing else is touched
        decisions = [Decision(d.population, "recomputed", ("--overwrite",)) if d.population in current else d
                     for d in decisions]
    return decisions, current, stored


def prepare_output(plan: RunPlan, overwrite: bool, prune: bool = False, echo: Echo = lambda m: None
                   ) -> RunState | RunRecord:
    """Create (or reopen) the output, apply :func:`reuse`'s decisions, write the record ``complete: false``.

    Returns the run's state (its plan holds only the populations to compute), or the stored
    record when nothing is to be computed or deleted.
    """
    store = LabelStore(plan.output, plan.ngff_version)
    tokens = input_tokens(plan)
    status = store.prepare(overwrite=overwrite, in_place=plan.in_place)
    decisions, current, stored = reuse(plan, tokens, overwrite=overwrite or status == "fresh", prune=prune)
    if status == "existing":
        for d in decisions:
            echo(d.line())
    _refuse_in_place(plan, store, decisions, overwrite)
    previous = stored if status == "existing" else None
    if previous and previous.get("complete") and not any(d.computes or d.action == "pruned" for d in decisions):
        return previous
    ledger = Ledger(plan.layout.ledger)
    if status == "fresh":
        ledger.clear()  # leftovers of an earlier run in the same place
    _drop(plan, store, ledger, decisions, echo)
    _open_caches(plan, decisions, current, echo)
    resumed = {d.population for d in decisions if d.action == "resumed"}
    known = {j.name: ledger.numbered_infos(j.name, plan.n_frames) for j in plan.jobs
             if j.numbering == "direct" and j.name in resumed}
    before = ledger.load_input()
    for job in plan.jobs:
        if job.name in resumed:  # its recorded frames, in the channels it reads, must be unchanged
            same_input(plan, before, tokens, job=job, only=done_frames(ledger, job, plan.n_frames, known))
    ledger.save_input(tokens)
    computes = {d.population for d in decisions if d.computes}
    record = _new_record(plan, previous, decisions, current, status == "existing" and bool(resumed))
    store.write_record(record)
    plan = dataclasses.replace(plan, jobs=[j for j in plan.jobs if j.name in computes])
    return RunState(plan, store, ledger, record, resumed=resumed, tokens=tokens, known=known)


def _refuse_in_place(plan: RunPlan, store: LabelStore, decisions: list[Decision], overwrite: bool) -> None:
    """Labels inside the input image are the user's: replaced only with ``--overwrite``."""
    if not plan.in_place or overwrite:
        return
    for d in decisions:
        if d.computes and d.action != "resumed" and store.population_record(d.population) is not None:
            raise PopsegError(f"labels for population '{d.population}' already exist in {plan.output}; "
                              "pass --overwrite to replace them")


def _drop(plan: RunPlan, store: LabelStore, ledger: Ledger, decisions: list[Decision], echo: Echo) -> None:
    """Delete what is computed afresh or pruned — each population's own label image and records,
    and the tables and report made from the labels — nothing else."""
    dropped = False
    for d in decisions:
        if d.action in ("new", "recomputed", "pruned"):
            if store.population_record(d.population) is not None:
                store.drop_population(d.population)
                dropped = True
            ledger.forget(d.population)
            plan.layout.scratch(d.population).delete()
            plan.layout.aux(d.population).delete()
    derived = [loc for loc in (plan.layout.measurements, plan.layout.report_dir) if loc.exists()]
    if dropped and derived:
        for loc in derived:
            loc.delete()
        echo(f"{', '.join(loc.name for loc in derived)} described the labels replaced: removed "
             "(run popseg measure / report again)")


def _open_caches(plan: RunPlan, decisions: list[Decision], current: dict[str, dict], echo: Echo) -> None:
    """Keep each computed population's cache of the same network outputs, start the others afresh;
    delete a pruned population's."""
    computes = {d.population for d in decisions if d.computes}
    for d in decisions:
        if d.action == "pruned":
            ModelOutputCache(plan.layout.model_cache(d.population)).drop()
    for job in plan.jobs:
        cache = job.segmenter.cache
        if cache is None or job.name not in computes:
            continue
        parts = network_from(current[job.name], job.segmenter.postprocess_keys)
        if cache.open_for(population_fingerprint(parts), parts):
            size, frames = cache.size()
            echo(f"population {job.name}: network outputs from its cache ({frames} frame(s), "
                 f"{size / 2**20:.1f} MB): post-processing only where they are there")
        else:
            echo(f"population {job.name}: its network outputs are cached in {cache.root}")


def _new_record(plan: RunPlan, previous: RunRecord | None, decisions: list[Decision], current: dict[str, dict],
                resuming: bool) -> RunRecord:
    """The run record at the start: this run's populations in progress, kept ones as they were."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    before = (previous or {}).get("populations", {})
    pops = {}
    for d in decisions:
        if d.action == "kept":
            pops[d.population] = {**before.get(d.population, {"complete": True}), "frames_computed": 0}
        elif d.action == "removed":
            pops[d.population] = {**before[d.population], "in_config": False, "frames_computed": 0}
    for job in plan.jobs:
        if job.name in current and any(d.population == job.name and d.computes for d in decisions):
            parts = current[job.name]
            pops[job.name] = {**job.segmenter.describe(), "labels_from": parts,
                              "fingerprint": population_fingerprint(parts)}
    record: RunRecord = {
        "complete": False, "started": now,
        "input": plan.input.url, "config": plan.config.model_dump(mode="json"),
        "fingerprint": fingerprint({n: p.get("fingerprint") for n, p in sorted(pops.items())}),
        "versions": {"python": platform.python_version(), **dict(_package_versions())},
        "populations": pops,
    }
    if resuming:
        record["started"] = (previous or {}).get("started") or now
        record["resumed"] = (previous or {}).get("resumed", []) + [now]
    return record


def done_frames(ledger: Ledger, job, n_t: int, known: dict[str, dict[int, FrameInfo]]) -> np.ndarray:
    """Frames of a population an earlier run of this output finished (segmented or, direct,
    numbered: ``known``, see :attr:`RunState.known`)."""
    if job.numbering == "direct":
        done = np.zeros(n_t, bool)
        done[list(known.get(job.name, {}))] = True
        return done
    return ledger.segmented(job.name, n_t)


def same_input(plan: RunPlan, recorded: list | None, current: list | None, *, during: bool = False,
               job=None, only: np.ndarray | None = None) -> None:
    """Refuse to combine frames computed from different inputs (see :mod:`popseg_dask.io.identity`);
    ``job``/``only``: a population's channels and the frames that matter (those with results)."""
    blocks = None
    if job is not None:
        c_block = max(1, int(plan.movie.attrs["source"].get("c_block") or 1))
        blocks = sorted({c // c_block for c in job.channel_index})
    changed = changed_frames(recorded, current, blocks)
    if changed is not None and only is not None:
        changed = [t for t in changed if only[t]]
    again = "run again with --overwrite to segment it afresh"
    if changed is None:
        raise PopsegError(f"cannot check that the input {plan.input.url} is the one the interrupted run in "
                          f"{plan.output} started from ({plan.input.scheme}:// cannot be listed); {again}")
    if changed:
        shown = ", ".join(map(str, changed[:8])) + (", ..." if len(changed) > 8 else "")
        when = "while this run was running" if during else "since the interrupted run in " + str(plan.output)
        raise PopsegError(f"the input {plan.input.url} changed {when}: {len(changed)} frame(s) differ ({shown}); "
                          f"its frames must not be mixed; {again}")
