"""``popseg bench``: a short calibration on a few frames of the user's own movie.

For each population it segments a few frames in this process (one thread, as a worker would),
untiled and with a couple of tile sizes, measuring seconds per frame and the peak memory a task
needs; from those and this machine's cores and free memory it recommends a tile size, a number
of workers and threads per worker, and estimates the time of the whole run. Nothing is written.

The recommendations follow from how popseg runs: segmentation is numpy/scipy/framework code that
holds the GIL, so one thread per worker process; as many workers as cores, unless memory allows
fewer (each worker needs the peak of its largest task, plus headroom); the smallest tile that is
not slower than whole frames only when whole frames do not fit in a worker's memory.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import PopsegError

__all__ = ["calibrate"]


class _PeakRSS:
    """Peak resident memory of this process above its level at the start, sampled every 10 ms."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.stop.wait(0.01)

    def __exit__(self, *exc):
        self.stop.set()
        self.th.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def calibrate(config: RunConfig, *, frames: int = 3, tiles: list[int] | None = None) -> dict[str, Any]:
    """Measure each population on a few frames and recommend how to run the movie.

    Parameters
    ----------
    config : RunConfig
    frames : int
        Frames to time, evenly spaced through the movie (the first run of each is a warm-up).
    tiles : list of int, optional
        Tile sizes to try besides whole frames (default: 512 and 1024 where the frame is larger).

    Returns
    -------
    dict
        ``machine`` (cores, free memory), ``populations`` (per variant: seconds per frame, peak
        MB per task), ``recommendation`` (tile per population, workers, threads per worker,
        estimated seconds for the movie's segmentation).
    """
    import psutil

    from .cluster import default_workers, detect_gpus
    from .pipeline import plan_run

    if frames < 1:
        raise PopsegError(f"--frames must be >= 1, got {frames}")
    plan = plan_run(config)
    movie = plan.movie
    n_t, (Y, X) = plan.n_frames, plan.frame_shape
    picks = sorted(set(np.linspace(0, n_t - 1, min(frames, n_t)).round().astype(int).tolist()))
    sizes = tiles if tiles is not None else [s for s in (512, 1024) if s < max(Y, X)]
    cores, free_mb = default_workers(), psutil.virtual_memory().available / 2**20
    gpus = detect_gpus()
    out: dict[str, Any] = {"machine": {"cores": cores, "free_memory_mb": round(free_mb), "gpus": len(gpus)},
                           "movie": {"frames": n_t, "shape": [Y, X], "timed_frames": picks}, "populations": {}}
    for job in plan.jobs:
        out["populations"][job.name] = _measure(job, config.populations[job.name], movie, picks, sizes)
    out["recommendation"] = _recommend(out, cores, free_mb, n_t, len(gpus))
    return out


def _measure(job, spec, movie, picks: list[int], sizes: list[int]) -> dict[str, Any]:
    """Seconds per frame and peak task memory of one population, whole and per tile size, through
    the run's own tile policy (``segment_frame``)."""
    from .pipeline import segment_frame

    seg = job.segmenter.on_device("cpu")
    # a few frames, read in this process (not on a default client whose workers may lack its credentials)
    pix = {t: np.asarray(movie.data[t, job.channel_index].compute(scheduler="threads")) for t in picks}
    refs = seg.reference_frames()
    stats = seg.movie_stats({t: np.asarray(movie.data[t, job.channel_index].compute(scheduler="threads"))
                             for t in refs}) if refs else None

    def one(t, tile):
        return segment_frame(seg, pix[t], tile=tile, halo=spec.halo, stats=stats, tile_memory_mb=spec.tile_memory_mb)

    one(picks[0], None)  # warm-up: imports, model load, caches
    variants = {}
    for tile in [None, *sizes]:
        if seg.whole_frame_reason and tile is not None:
            continue  # the policy would run it whole: nothing new to time
        secs, peak, objects = [], 0.0, 0
        for t in picks:
            with _PeakRSS() as mem:
                t0 = time.perf_counter()
                try:
                    labels, _ = one(t, tile)
                except PopsegError:
                    secs = []
                    break
                secs.append(time.perf_counter() - t0)
            peak = max(peak, mem.mb)
            objects += int(labels.max())
        if secs:
            variants["none" if tile is None else str(tile)] = {
                "s_per_frame": float(np.median(secs)), "peak_task_mb": round(peak + pix[picks[0]].nbytes / 2**20, 1),
                "objects_per_frame": objects / len(secs)}
    return {"segmenter": seg.name, "variants": variants, "gpu_capable": "gpu" in seg.devices}


def _recommend(res: dict, cores: int, free_mb: float, n_t: int, n_gpus: int) -> dict[str, Any]:
    budget = 0.8 * free_mb  # headroom for the scheduler, the OS and spikes
    tiles, per_frame_s, task_mb = {}, 0.0, 0.0
    for name, pop in res["populations"].items():
        v = pop["variants"]
        if not v:
            continue
        fits = {k: r for k, r in v.items() if r["peak_task_mb"] * cores <= budget}
        # whole frames when they fit on every core: tiling only adds halos and merges
        pick = "none" if "none" in fits else (min(fits, key=lambda k: fits[k]["s_per_frame"]) if fits
                                              else min(v, key=lambda k: v[k]["peak_task_mb"]))
        tiles[name] = pick
        per_frame_s += v[pick]["s_per_frame"]
        task_mb = max(task_mb, v[pick]["peak_task_mb"])
    workers = max(1, min(cores, int(budget // max(task_mb, 1.0))))
    est_s = n_t * per_frame_s / workers
    rec = {"tile": tiles, "workers": workers, "threads_per_worker": 1,
           "memory_per_worker_mb": int(max(256, 2 * task_mb)),
           "estimated_s": round(est_s, 3),
           "why": (f"{cores} core(s); the largest task needs about {task_mb:.0f} MB and {budget:.0f} MB is free "
                   "(80 %); one thread per worker because segmentation holds the GIL")}
    if n_gpus and any(p["gpu_capable"] for p in res["populations"].values()):
        rec["gpu_workers"] = n_gpus
        rec["why"] += f"; {n_gpus} GPU(s): one pinned worker each for the model populations"
    return rec
