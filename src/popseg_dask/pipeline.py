"""Build and run the Dask work of a run: segment every population, number ids globally, write.

Two passes per population, both one task per frame:

1. **segment**: read the frame's channels, segment, renumber the objects 1..n in raster
   order of their first pixel (:func:`~popseg_dask.stitch.canonical_relabel`), write
   them to a scratch array and return n;
2. **number**: once every count is known, frame t's ids are shifted by the prefix sum of
   the counts of frames < t and written to the population's NGFF label image.

Ids are therefore unique across the movie, ordered by (frame, first pixel), and the
output is bitwise identical whatever the number of workers or the order tasks ran in.
Every chunk of every array has exactly one writer (chunks never span frames). The run
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

from .cluster import open_client
from .config import RunConfig
from .errors import PopsegError
from .io.labels import LabelStore, relative_source
from .io.movie import open_movie
from .segmenters import Segmenter, build_segmenter
from .stitch import apply_offset, canonical_relabel, frame_offsets, label_dtype_for

__all__ = ["PopulationJob", "RunPlan", "plan_run", "run", "default_output"]

log = logging.getLogger(__name__)

_STRIP = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif")


@dataclass
class PopulationJob:
    """One population: its segmenter and the movie channels it reads."""

    name: str
    segmenter: Segmenter
    channel_index: list[int]


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
        jobs.append(PopulationJob(pop, seg, [names.index(c) for c in seg.channels]))
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


# --------------------------------------------------------------------------- tasks
# Module-level functions: they are what workers run, and they pickle by reference.

def _segment_frame(block: np.ndarray, stats: Any, segmenter: Segmenter, scratch: str, t: int) -> int:
    import zarr

    labels = segmenter(np.asarray(block)[0], stats)
    if labels.shape != block.shape[-2:]:
        raise RuntimeError(f"segmenter {segmenter.name} returned shape {labels.shape} for a block of {block.shape}")
    local, n = canonical_relabel(labels)
    zarr.open_array(scratch, mode="r+")[t] = local
    return n


def _number_frame(scratch: str, final: str, t: int, offset: int, dtype: str) -> int:
    import zarr

    local = zarr.open_array(scratch, mode="r")[t]
    zarr.open_array(final, mode="r+")[t] = apply_offset(local, offset, np.dtype(dtype))
    return t


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

    # Pass 1: segment every frame of every population.
    t1 = time.perf_counter()
    tasks, spans = [], {}
    for job in plan.jobs:
        scratch = store.create_scratch(job.name, (n_t, n_y, n_x))
        data = movie.data[:, job.channel_index].rechunk({0: 1, 1: -1, 2: -1, 3: -1})
        stats = None
        if job.segmenter.reference_frames():
            refs = {t: data[t] for t in job.segmenter.reference_frames()}
            stats = dask.delayed(job.segmenter.movie_stats, pure=True)(refs)
        seg = dask.delayed(job.segmenter, pure=True, traverse=False)
        blocks = data.to_delayed().ravel()
        start = len(tasks)
        with dask.annotate(resources=job.segmenter.resources) if job.segmenter.resources else contextlib.nullcontext():
            for t in range(n_t):
                tasks.append(dask.delayed(_segment_frame, pure=False)(blocks[t], stats, seg, scratch, t))
        spans[job.name] = (start, len(tasks))
    echo(f"segmenting {len(tasks)} frames ...")
    counts_all = _compute(client, tasks, progress)
    timings["segment_s"] = time.perf_counter() - t1

    # Pass 2: global ids = per-frame offsets (prefix sum) + local ids.
    t2 = time.perf_counter()
    tasks, per_pop = [], {}
    for job in plan.jobs:
        a, b = spans[job.name]
        counts = np.asarray(counts_all[a:b], dtype=np.int64)
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
        for t in range(n_t):
            tasks.append(dask.delayed(_number_frame, pure=False)(scratch, final, t, int(offsets[t]), dtype.str))
        per_pop[job.name] = {"n_objects": total, "objects_per_frame": counts.tolist(), "dtype": dtype.name}
    _compute(client, tasks, progress)
    timings["number_s"] = time.perf_counter() - t2

    for name, info in per_pop.items():
        store.mark_population(name, {"complete": True, **info})
    store.drop_scratch()
    timings["total_s"] = time.perf_counter() - t0
    record.update(
        complete=True,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        timings=timings,
        n_workers=len(client.scheduler_info().get("workers", {})),
    )
    for name, info in per_pop.items():
        record["populations"][name].update(info)
    store.write_record(record)
    return record

