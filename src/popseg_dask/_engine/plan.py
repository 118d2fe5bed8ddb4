"""Config -> a complete plan of a run, decided before any task is submitted.

:func:`plan_run` validates everything that can be checked without a cluster (the movie, every
population's keys, channels, reference frames, tile plans, the output location);
:meth:`RunPlan.for_cluster` then decides what depends on the cluster — which device each
population runs on, frames per task, frames in flight — as a pure function of
:class:`ClusterFacts`, so the whole plan is testable without a client.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import xarray as xr

from ..config import RunConfig
from ..errors import PopsegError
from ..io.cache import ModelOutputCache
from ..io.labels import LabelGrid
from ..io.layout import OutputLayout, default_output
from ..io.movie import open_movie
from ..location import Location
from ..segmenters import Segmenter, build_segmenter
from ..stitch import provisional_dtype
from ..tiling import TilePlan, tile_policy

__all__ = ["ClusterFacts", "DIRECT_DTYPE", "PopulationJob", "RunPlan", "ScratchSpec", "aligned", "default_output",
           "direct_fits", "frame_task_pixels", "frames_per_task", "plan_run", "shard_units"]

log = logging.getLogger(__name__)

# Pixels per task when frames are batched. Segmenting: the scheduler's cost per task bounds the
# throughput of a screen of tiny frames, and the client and scheduler share the workers' cores
# (2^20 -> 2^22 cut their CPU time per 48-frame run of 1024² frames from 0.73 to 0.42 s;
# benchmarks/RESULTS.md). Numbering is cheaper per pixel, so its tasks take more.
SEGMENT_PIXELS = 1 << 22
NUMBER_PIXELS = 1 << 26
# a segmenter that streams its windows (a network) holds a task's labels until they are written:
# 2^26 pixels are 256 MB of them (16 frames of 2048²)
STREAM_PIXELS = 1 << 26
MAX_FRAMES_PER_TASK = 64
DIRECT_DTYPE = np.dtype(np.uint32)
# A tiled frame up to this size runs all its tiles in one task, in memory (facts, tiles, merge,
# numbering: :func:`popseg_dask._engine.frame.stitch_frame`), when the movie has frames enough to
# keep every lane busy. Its task holds about five frame planes of 4 bytes per pixel (256 MiB at
# 2^24) beside one window's intermediates. Spread over tasks of their own instead, a dense 2048²
# frame's tiles cost 2.1 s of task time against 1.4 s in one task (the fact rounds re-derive
# the window's mask on other workers; scratch writes, re-reads and the number pass):
# benchmarks/RESULTS.md, "Tiled frames in one task". The dask config key
# ``popseg.frame-task-pixels`` overrides it (0: a frame's tiles always in tasks of their own).
STITCH_IN_TASK_PIXELS = 1 << 24


def frames_per_task(n_frames: int, frame_pixels: int, threads: int, pixel_budget: int) -> int:
    """Frames batched into one task: up to 64 or ``pixel_budget`` pixels, and never fewer than
    four tasks per worker thread, so that short movies still use every worker."""
    return max(1, min(MAX_FRAMES_PER_TASK, pixel_budget // max(1, frame_pixels), n_frames // (4 * threads)))


def shard_units(frames: list[int], frames_per_shard: int, frames_per_task: int, n_frames: int
                ) -> list[list[list[int]]]:
    """Number-pass work: each unit a list of groups, each group one whole shard row (all frames of
    the shards it touches, clipped to the movie), every shard row in exactly one unit.

    ``frames``: frames still to number; a shard row with any of them is written again whole
    (numbering is deterministic, so rewriting a frame already numbered changes nothing).
    """
    rows = sorted({t // frames_per_shard for t in frames})
    groups = [list(range(r * frames_per_shard, min(n_frames, (r + 1) * frames_per_shard))) for r in rows]
    per = max(1, frames_per_task // frames_per_shard)
    return [groups[i:i + per] for i in range(0, len(groups), per)]


@dataclass(frozen=True)
class ClusterFacts:
    """What a plan needs to know of the cluster: its worker threads and GPU workers."""

    threads: int = 1
    gpu_workers: int = 0

    @classmethod
    def of(cls, client) -> "ClusterFacts":
        """The facts of a connected cluster."""
        workers = client.scheduler_info().get("workers", {})
        gpus = sum(1 for w in workers.values() if (w.get("resources") or {}).get("GPU", 0) >= 1)
        return cls(max(1, sum(w.get("nthreads", 1) for w in workers.values())), gpus)


@dataclass(frozen=True)
class ScratchSpec:
    """A scratch array of provisional ids (and, when the segmenter stores per-pixel facts of its
    tile statistics, their int32 companion), chunked by the tile cores."""

    shape: tuple[int, int, int]
    chunks: tuple[int, int]
    dtype: np.dtype
    aux: bool


@dataclass(frozen=True)
class PopulationJob:
    """One population: its segmenter (placed on its device), channels, tiles, batching."""

    name: str
    segmenter: Segmenter
    channel_index: list[int]
    tiles: TilePlan
    scratch: ScratchSpec
    device: str = "cpu"
    frames_per_task: int = 1
    numbering: str = "staged"  # or "direct": frames in one task each, no scratch array (see .direct)

    @property
    def needs_movie_stats(self) -> bool:
        return bool(self.segmenter.reference_frames())

    def resource_annotation(self):
        """A context in which the tasks built ask for the segmenter's worker resources (a GPU)."""
        res = self.segmenter.resources
        return dask.annotate(resources=res) if res else contextlib.nullcontext()


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before any pixel is read."""

    config: RunConfig
    movie: xr.DataArray
    jobs: list[PopulationJob]
    output: Location
    in_place: bool
    ngff_version: str = "0.5"
    window: int = 8            # graphs in flight
    number_frames_per_task: int = 1
    facts: ClusterFacts | None = field(default=None)
    direct: bool = True        # number directly where it fits (False: A/B, tests)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.movie.sizes["y"]), int(self.movie.sizes["x"])

    @property
    def n_frames(self) -> int:
        return int(self.movie.sizes["t"])

    @property
    def input(self) -> Location:
        return self.config.location(self.config.input)

    def for_cluster(self, facts: ClusterFacts) -> "RunPlan":
        """This plan on a cluster: devices, frames per task and frames in flight decided.

        ``device: gpu`` needs a GPU worker (its segment tasks ask for ``resources={"GPU": 1}``,
        which would otherwise wait forever); ``auto`` takes one when the segmenter can use it.
        """
        depth = LabelGrid.for_shape(self.frame_shape, 2 if self.ngff_version == "0.4" else 3).frames_per_write
        in_task = frame_task_pixels()
        jobs = [_placed(job, self.config.populations[job.name].device, facts, self.n_frames, depth if self.direct else 0,
                        in_task) for job in self.jobs]
        Y, X = self.frame_shape
        return dataclasses.replace(
            self, jobs=jobs, facts=facts, window=max(8, 4 * facts.threads),
            number_frames_per_task=frames_per_task(self.n_frames, Y * X, facts.threads, NUMBER_PIXELS))


def frame_task_pixels() -> int:
    """Pixels up to which a tiled frame runs all its tiles in one task (see :data:`STITCH_IN_TASK_PIXELS`)."""
    value = dask.config.get("popseg.frame-task-pixels", STITCH_IN_TASK_PIXELS)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PopsegError(f"dask config popseg.frame-task-pixels is {value!r}; set a number of pixels "
                          "(0: a frame's tiles always in tasks of their own)") from None


def _placed(job: PopulationJob, device: str, facts: ClusterFacts, n_frames: int, depth: int,
            in_task_px: int = STITCH_IN_TASK_PIXELS) -> PopulationJob:
    """The job on its device, with its frames per task and numbering (``depth``: the output's
    frames per shard, 0: no direct numbering; ``in_task_px``: see :func:`frame_task_pixels`)."""
    seg = job.segmenter
    if device == "gpu" and not facts.gpu_workers:
        raise PopsegError(
            f"population '{job.name}' asks for device: gpu but no worker of the cluster offers a GPU "
            "resource; start GPU workers with 'dask worker ... --resources GPU=1' (or set device: cpu)")
    chosen = "gpu" if device == "gpu" or (device == "auto" and "gpu" in seg.devices and facts.gpu_workers) else "cpu"
    seg = seg.on_device(chosen)
    Y, X = job.tiles.frame_shape
    per_task, lanes = 1, max(1, facts.gpu_workers if chosen == "gpu" else facts.threads)
    if job.tiles.untiled:
        per_task = frames_per_task(n_frames, Y * X, facts.threads, SEGMENT_PIXELS)
        if seg.window_stream > 1:  # its stages overlap across the frames of one task, so take more
            # of them, still two tasks per lane (GPU workers run one GPU task at a time)
            per_task = max(per_task, min(seg.window_stream, MAX_FRAMES_PER_TASK, STREAM_PIXELS // (Y * X),
                                         n_frames // (2 * lanes)))
    in_task = job.tiles.untiled or (Y * X <= in_task_px and n_frames >= 2 * lanes)
    direct = depth > 0 and in_task and direct_fits(n_frames, (Y, X))
    if direct:  # a shard row's frames come from whole segment tasks
        per_task = aligned(per_task, depth)
    return dataclasses.replace(job, segmenter=seg, device=chosen, frames_per_task=per_task,
                               numbering="direct" if direct else "staged")


def aligned(per_task: int, depth: int) -> int:
    """``per_task`` made a divisor of the shard depth ``depth`` (below it) or a multiple (above)."""
    if per_task >= depth:
        return per_task // depth * depth
    return max(d for d in range(1, per_task + 1) if depth % d == 0)


def direct_fits(n_frames: int, frame_shape: tuple[int, int]) -> bool:
    """Whether uint32 holds every id of any segmentation of the movie (at most one object per
    pixel): direct numbering fixes the dtype before any count is known."""
    return n_frames * frame_shape[0] * frame_shape[1] <= np.iinfo(DIRECT_DTYPE).max


def plan_run(config: RunConfig, *, in_place: bool = False) -> RunPlan:
    """Open the movie lazily, build every population's segmenter and tiles, choose the output.

    Parameters
    ----------
    config : RunConfig
    in_place : bool
        Write the labels inside the input OME-Zarr image.

    Returns
    -------
    RunPlan
        Not yet placed on a cluster (see :meth:`RunPlan.for_cluster`).

    Raises
    ------
    PopsegError
        For any config/input mismatch (unknown channel, bad output location, ...).
    """
    if isinstance(config.input, list):
        raise PopsegError("'input' lists several movies: that is a screen; run it with `popseg run` "
                          "(or popseg_dask.screen.run_screen)")
    source = config.location(config.input)
    movie = open_movie(source, channels=config.channels, dims=config.dims, pixel_size_um=config.pixel_size_um)
    jobs = [_job(config, pop, movie) for pop in config.populations]
    output, version = _output(config, source, movie.attrs["source"], in_place)
    jobs = [_with_cache(job, config, OutputLayout(output)) for job in jobs]
    return RunPlan(config, movie, jobs, output, in_place, version)


def _with_cache(job: PopulationJob, config: RunConfig, layout: OutputLayout) -> PopulationJob:
    """The job, its segmenter given its output cache when the population asks for one."""
    if config.populations[job.name].cache == "none":
        return job
    seg = job.segmenter
    if not seg.postprocess_keys:
        raise PopsegError(f"population '{job.name}': cache: model_outputs needs a segmenter with network outputs "
                          f"(stardist, cellpose); {seg.name} has none to keep; remove 'cache:'")
    seg = copy.copy(seg)
    seg.cache = ModelOutputCache(layout.model_cache(job.name))
    return dataclasses.replace(job, segmenter=seg)


def _job(config: RunConfig, pop: str, movie: xr.DataArray) -> PopulationJob:
    spec = config.populations[pop]
    names = [str(c) for c in movie.c.values]
    seg = build_segmenter(pop, spec, names, base_dir=config.base_dir, pixel_size_um=movie.attrs["pixel_size_um"])
    for t in seg.reference_frames():
        if not 0 <= t < movie.sizes["t"]:
            raise PopsegError(
                f"population '{pop}': reference frame {t} is outside the movie (frames 0..{movie.sizes['t'] - 1})")
    shape = (int(movie.sizes["y"]), int(movie.sizes["x"]))
    seg, tiles = tile_policy(seg, shape, spec.tile, spec.halo, memory_mb=spec.tile_memory_mb, population=pop)
    scratch = ScratchSpec((int(movie.sizes["t"]), *shape), tuple(tiles.tile), provisional_dtype(shape),
                          aux=seg.needs_tile_stats and not tiles.untiled)
    return PopulationJob(pop, seg, [names.index(c) for c in seg.channels], tiles, scratch)


def _output(config: RunConfig, source: Location, facts: dict[str, Any], in_place: bool) -> tuple[Location, str]:
    """Where the labels go and which NGFF version they are written in."""
    if in_place:
        if facts["format"] != "ome-zarr":
            raise PopsegError("--in-place needs an OME-Zarr input (labels are written inside the image group)")
        if source.read_only:
            raise PopsegError(f"--in-place cannot write into {source.url} ({source.scheme}:// is read-only); "
                              "set 'output' to a local path, s3:// or gs://")
        return source, "0.4" if facts.get("zarr_format") == 2 else "0.5"
    output = config.location(config.output) if config.output else default_output(source)
    if output.read_only:
        where = "the default output beside the input" if not config.output else f"output {output.url}"
        raise PopsegError(f"{where} is on {output.scheme}://, which is read-only; set 'output' to a local path, "
                          "s3:// or gs://")
    if source.contains(output):
        raise PopsegError(f"output {output} is inside the input {source}; choose another 'output' or pass --in-place")
    if output.contains(source):
        raise PopsegError(f"output {output} contains the input {source}; choose another 'output'")
    return output, "0.5"
