"""Object storage: a run with input and output on a real S3 server on loopback vs on local disk,
and how many objects a run stores per frame.

``storage``: the same movie, config and 2 workers, input and output both on local disk or both
on S3 (moto's ``ThreadedMotoServer``, a real S3 endpoint over HTTP in this process), interleaved
repeats; labels checked bitwise equal. ``objects``: a run of many small frames, counting the
objects it stores per frame and population: labels (what stays), ledger and scratch (what the run
keeps while it runs, counted when the run finishes, just before it removes them).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr
from common import cluster, demo_movie, medians, print_rows


def _s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench-secret"}


def storage(a) -> dict:
    from popseg_dask.config import parse_config
    from popseg_dask.io.labels import open_label_array
    from popseg_dask.pipeline import run
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 24, a.size or 1024, a.repeats or 2
    server, s3 = _s3_server()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            demo_movie(tmp, frames, size, seed=4)
            local = {**copy.deepcopy(DEMO_CONFIG), "output": "local.zarr"}
            remote = {**copy.deepcopy(DEMO_CONFIG), "input": "s3://bench/movie.ome.zarr",
                      "output": "s3://bench/out.zarr", "storage": s3}
            fs = parse_config(remote, tmp).location(remote["input"]).fs()
            fs.mkdir("bench")
            fs.put(str(tmp / "movie.ome.zarr"), "bench/movie.ome.zarr", recursive=True)
            times: dict[str, list[float]] = {"local disk": [], "S3 on loopback": []}
            with cluster(2) as client:
                run(parse_config(local, tmp), client=client, overwrite=True)  # warm-up: imports, caches
                for _ in range(repeats):
                    for name, cfg in (("local disk", local), ("S3 on loopback", remote)):
                        t0 = time.perf_counter()
                        run(parse_config(cfg, tmp), client=client, overwrite=True)
                        times[name].append(time.perf_counter() - t0)
            same = all(np.array_equal(open_label_array(tmp / "local.zarr", p)[...],
                                      open_label_array(parse_config(remote, tmp).location(remote["output"]), p)[...])
                       for p in DEMO_CONFIG["populations"])
    finally:
        server.stop()
    med = medians(times)
    return {"frames": frames, "size": size, "repeats": repeats, "times_s": times, "median_s": med,
            "throughput_ratio_s3_vs_local": med["local disk"] / med["S3 on loopback"], "labels_identical": same}


def show_storage(res: dict) -> None:
    print(f"storage: {res['frames']} frames of {res['size']}², 2 workers, input and output on local disk vs "
          f"on S3 (moto on loopback), {res['repeats']} repeats, medians:")
    print_rows(res["median_s"], "{:.1f} s")
    print(f"  throughput S3 / local disk: {res['throughput_ratio_s3_vs_local']:.2f}; "
          f"labels identical: {res['labels_identical']}")


def objects(a) -> dict:
    """Stored objects per frame and population of a run of many small frames (one population)."""
    import threading

    import psutil

    from popseg_dask import load_config, run
    from popseg_dask.io.ledger import Ledger
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size = a.frames or 1000, a.size or 32
    counted: dict[str, int] = {}
    clear = Ledger.clear

    def counting_clear(self):
        # measurement only: count what the run kept while it ran, just before it is removed
        root = Path(self.root.url)
        if root.is_dir():
            counted["ledger"] = sum(1 for p in root.rglob("*") if p.is_file() and "scratch" not in p.parts)
            counted["scratch"] = sum(1 for p in (root / "scratch").rglob("*") if p.is_file())
        clear(self)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arr = zarr.create_array(str(tmp / "many.zarr"), shape=(frames, 1, size, size), chunks=(1, 1, size, size),
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
        (tmp / "many.yaml").write_text(yaml.safe_dump(cfg))
        Ledger.clear = counting_clear
        proc, samples, stop = psutil.Process(), [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(proc.memory_info().rss / 2**20)
                stop.wait(0.5)

        try:
            with cluster(2) as client:
                rss0 = proc.memory_info().rss / 2**20
                th = threading.Thread(target=sample, daemon=True)
                th.start()
                t0 = time.perf_counter()
                run(load_config(tmp / "many.yaml"), client=client)
                wall = time.perf_counter() - t0
                stop.set()
                th.join()
        finally:
            Ledger.clear = clear
        labels = sum(1 for p in (tmp / "many.out.zarr" / "labels" / "cells" / "0").rglob("*") if p.is_file())
    per = {"labels (kept)": labels / frames, "ledger (while running)": counted.get("ledger", 0) / frames,
           "scratch (while running)": counted.get("scratch", 0) / frames}
    return {"frames": frames, "size": size, "wall_s": wall, "objects_total": {"labels": labels, **counted},
            "objects_per_frame": per, "client_rss_mb": {"before": rss0, "peak": max(samples or [rss0])}}


def show_objects(res: dict) -> None:
    m = res["client_rss_mb"]
    print(f"objects: {res['frames']} frames of {res['size']}², 1 population, 2 workers ({res['wall_s']:.0f} s; "
          f"client+scheduler RSS {m['before']:.0f} -> peak {m['peak']:.0f} MB); stored objects per frame "
          "(labels: chunk and shard files, metadata included):")
    print_rows(res["objects_per_frame"], "{:.3f}")
