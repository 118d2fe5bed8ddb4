"""Benchmarks of the core pipeline, each against a baseline measured in the same run.

``core``: a synthetic two-population movie segmented (a) by a plain serial loop in this
process — read frame, segment, renumber, write, the least any tool must do — and (b) by
``popseg run`` on an embedded LocalCluster with 1 and with 2 workers. Printed as ratios:
overhead of popseg on 1 worker vs the serial loop, speed-up and parallel efficiency 1 → 2.

Usage::

    python benchmarks/run.py [core] [--frames 24] [--size 1024] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr


def _serial_baseline(movie_path: Path, cfg: dict, out: Path) -> float:
    from popseg_dask.io.movie import open_movie
    from popseg_dask.segmenters.threshold import ThresholdSegmenter
    from popseg_dask.stitch import canonical_relabel

    t0 = time.perf_counter()
    movie = open_movie(movie_path)
    names = [str(c) for c in movie.c.values]
    arr = zarr.open_array(str(movie_path / "0"), mode="r")
    for pop, spec in cfg["populations"].items():
        seg = ThresholdSegmenter.from_config({k: v for k, v in spec.items() if k != "segmenter"}, names)
        idx = [names.index(c) for c in seg.channels]
        dst = zarr.create_array(store=str(out / pop), shape=(arr.shape[0], *arr.shape[2:]),
                                chunks=(1, *arr.shape[2:]), dtype=np.uint32, overwrite=True)
        offset = 0
        for t in range(arr.shape[0]):
            lab, n = canonical_relabel(seg(arr[t][idx]))
            lab[lab > 0] += offset
            dst[t] = lab
            offset += n
    return time.perf_counter() - t0


def _popseg(cfg_path: Path, client) -> tuple[float, dict]:
    from popseg_dask import load_config, run

    t0 = time.perf_counter()
    rec = run(load_config(cfg_path), client=client, overwrite=True)
    return time.perf_counter() - t0, rec


def bench_core(frames: int, size: int, repeats: int) -> dict:
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    density = size * size / (384 * 384)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=1)
        write_ome_zarr_image(tmp / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
        cfg = dict(DEMO_CONFIG)
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        from distributed import Client, LocalCluster

        times: dict[str, list[float]] = {"serial loop": [], "popseg 1 worker": [], "popseg 2 workers": []}
        startup: dict[str, float] = {}
        clients = {}
        for n in (1, 2):
            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            clients[n] = Client(cluster)
            startup[f"{n} worker(s)"] = time.perf_counter() - t0
            _popseg(tmp / "run.yaml", clients[n])  # warm-up: workers import the stack once
        try:
            for r in range(repeats):
                # interleaved so that machine noise hits every variant alike
                times["serial loop"].append(_serial_baseline(tmp / "movie.ome.zarr", cfg, tmp / "serial"))
                t1, rec1 = _popseg(tmp / "run.yaml", clients[1])
                times["popseg 1 worker"].append(t1)
                t2, rec2 = _popseg(tmp / "run.yaml", clients[2])
                times["popseg 2 workers"].append(t2)
        finally:
            for c in clients.values():
                cluster = c.cluster
                c.close()
                cluster.close()
        # the serial loop and popseg must agree, or the comparison means nothing
        for pop in cfg["populations"]:
            a = zarr.open_array(str(tmp / "serial" / pop), mode="r")[...]
            b = zarr.open_array(str(tmp / "movie.popseg.zarr" / "labels" / pop / "0"), mode="r")[...]
            assert np.array_equal(a, b), f"popseg and the serial loop disagree on {pop}"
        med = {k: statistics.median(v) for k, v in times.items()}
        n_objects = {p: rec2["populations"][p]["n_objects"] for p in cfg["populations"]}
    return {
        "benchmark": "core",
        "movie": {"frames": frames, "size": size, "channels": 2, "populations": 2, "objects": n_objects},
        "repeats": repeats,
        "seconds": times,
        "cluster_startup_s": startup,
        "median_s": med,
        "frames_per_s": {k: 2 * frames / v for k, v in med.items()},
        "ratios": {
            "popseg 1 worker / serial loop (time)": med["popseg 1 worker"] / med["serial loop"],
            "speed-up 2 workers vs serial loop": med["serial loop"] / med["popseg 2 workers"],
            "parallel efficiency 1 -> 2 workers": med["popseg 1 worker"] / (2 * med["popseg 2 workers"]),
        },
    }


def _machine() -> dict:
    import dask

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "dask": dask.__version__, "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="benchmarks to run: core (default: all)")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "core.json")
    a = p.parse_args(argv)
    unknown = set(a.names) - {"core"}
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; available: core")
    res = bench_core(a.frames, a.size, a.repeats)
    res["machine"] = _machine()
    print(f"core: {a.frames} frames of {a.size}x{a.size}, 2 populations, {res['movie']['objects']} objects; "
          f"median of {a.repeats}")
    print(f"{'variant':22s} {'median s':>9s} {'frames/s':>9s}")
    for k, v in res["median_s"].items():
        print(f"{k:22s} {v:9.2f} {res['frames_per_s'][k]:9.2f}")
    for k, v in res["ratios"].items():
        print(f"{k:40s} {v:6.2f}")
    print("LocalCluster start-up (paid once per session, not in the figures above): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in res["cluster_startup_s"].items()))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=2))
    print(f"written {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
