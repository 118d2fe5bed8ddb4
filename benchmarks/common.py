"""What every benchmark shares: the movie, the clusters, the clocks and the machine record."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
MODELS_DIR = HERE / ".models"


def demo_movie(folder: Path, frames: int, size: int, seed: int, name: str = "movie.ome.zarr"):
    """The synthetic two-population movie at the demo's object density, written as OME-Zarr.

    Returns the :class:`popseg_dask.synthetic.SyntheticMovie` (image and ground truth).
    """
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import make_movie

    density = size * size / (384 * 384)
    m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=seed)
    write_ome_zarr_image(folder / name, m.image, m.channels, pixel_size_um=m.pixel_size_um)
    return m


def many_frames_movie(folder: Path, frames: int, size: int = 32) -> Path:
    """``frames`` small frames, one chunk each as microscopy movies are stored (one bright disc on
    noise), and the config of one untiled threshold population over them; returns the config's path."""
    import yaml
    import zarr

    from popseg_dask.synthetic import DEMO_CONFIG

    arr = zarr.create_array(str(folder / "many.zarr"), shape=(frames, 1, size, size), chunks=(1, 1, size, size),
                            dtype=np.uint16)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2) * 800
    for s in range(0, frames, 1000):
        e = min(frames, s + 1000)
        arr[s:e, 0] = (rng.normal(100, 10, (e - s, size, size)) + blob).astype(np.uint16)
    pop = {**DEMO_CONFIG["populations"]["targets"], "channel": "nuclei", "tile": "none"}
    cfg = {"input": "many.zarr", "dims": "tcyx", "channels": ["nuclei"], "output": "many.out.zarr",
           "populations": {"cells": pop}}
    path = folder / "many.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def cluster(n_workers: int, threads_per_worker: int = 1) -> Iterator:
    """A client on popseg's own embedded LocalCluster, exactly as ``popseg run`` starts it."""
    from popseg_dask.cluster import open_client

    with open_client(n_workers=n_workers, threads_per_worker=threads_per_worker, dashboard=False,
                     gpu_workers=0) as client:
        yield client


@contextlib.contextmanager
def clusters(*n_workers: int) -> Iterator[dict]:
    """Several clusters at once (variants are interleaved, so all stay up): ``{n: client}``."""
    with contextlib.ExitStack() as stack:
        yield {n: stack.enter_context(cluster(n)) for n in n_workers}


def popseg_run(cfg_path: Path, client, *, direct: bool = True) -> tuple[float, dict]:
    """Seconds and run record of one ``popseg run`` of ``cfg_path`` on ``client`` (output
    overwritten); ``direct=False``: untiled populations numbered staged, as before direct numbering."""
    import dataclasses

    from popseg_dask import load_config, run
    from popseg_dask.pipeline import execute, plan_run

    t0 = time.perf_counter()
    if direct:
        rec = run(load_config(cfg_path), client=client, overwrite=True)
    else:
        plan = dataclasses.replace(plan_run(load_config(cfg_path)), direct=False)
        rec = execute(client, plan, overwrite=True, t0=t0)
    return time.perf_counter() - t0, rec


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def print_rows(rows: dict, fmt: str, indent: str = "  ") -> None:
    """One line per entry of ``rows``, keys padded to the longest, values as ``fmt`` ("{:6.2f}")."""
    width = max(map(len, rows), default=0)
    for k, v in rows.items():
        print(f"{indent}{k:{width}s} {fmt.format(v)}")


def start_rss_sampler(dask_worker):
    """Sample the worker's resident memory every 20 ms (ru_maxrss would include the parent's)."""
    import threading

    import psutil

    proc = psutil.Process()
    dask_worker._popseg_peak_rss = proc.memory_info().rss

    def loop():
        while True:
            dask_worker._popseg_peak_rss = max(dask_worker._popseg_peak_rss, proc.memory_info().rss)
            time.sleep(0.02)

    threading.Thread(target=loop, daemon=True).start()


def worker_peak_rss_mb(client) -> float:
    """Highest peak resident memory of any worker since :func:`start_rss_sampler`, in MB."""
    return max(client.run(lambda dask_worker: dask_worker._popseg_peak_rss).values()) / 2**20


def merged(coarse: np.ndarray, fine: np.ndarray) -> tuple[int, int]:
    """Labels of ``coarse`` that hold two or more objects of ``fine``, and how many objects they swallow."""
    m = (coarse > 0) & (fine > 0)
    pairs = np.unique(np.stack([coarse[m], fine[m]]), axis=1)
    _, counts = np.unique(pairs[0], return_counts=True)
    return int((counts > 1).sum()), int(counts[counts > 1].sum())


def machine() -> dict:
    """Where and with what a result was measured."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("popseg-dask", "dask", "distributed", "numpy", "scipy", "scikit-image", "zarr", "torch",
                "tensorflow-cpu", "stardist", "cellpose"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    # outside a git checkout these come back empty, which is what the record should say
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "machine": platform.machine(), "cpu": cpu, "cpus": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "commit": commit + ("+changes" if dirty else ""), "versions": versions}
