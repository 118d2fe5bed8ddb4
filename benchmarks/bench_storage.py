"""Object storage: a run with input and output on a real S3 server on loopback vs on local disk,
and how many objects a run stores per frame.

``storage``: the same movie, config and 2 workers, input and output both on local disk or both
on S3 (moto's server, a real S3 endpoint over HTTP, in a process of its own), interleaved repeats;
labels checked bitwise equal. ``stores``: zarr's two store layers for object storage, fsspec's
``FsspecStore`` (s3fs) and ``ObjectStore`` (obstore), on the same server, frame by frame as
popseg's tasks read and write. ``objects``: a run of many small frames, counting the
objects it stores per frame and population: labels (what stays), ledger and scratch (what the run
keeps while it runs, counted when the run finishes, just before it removes them).
"""

from __future__ import annotations

import contextlib
import copy
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from common import cluster, demo_movie, many_frames_movie, medians, print_rows


@contextlib.contextmanager
def s3_server():
    """moto's S3 server in a process of its own (``python -m moto.server``) on loopback: the run's
    client and workers do not share its interpreter; yields the ``storage:`` section and the
    server's process (for its CPU time)."""
    import psutil

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the moto S3 server did not start")
                time.sleep(0.2)
        yield {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench-secret"}, \
            psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage(a) -> dict:
    from popseg_dask.config import parse_config
    from popseg_dask.io.labels import open_label_array
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 24, a.size or 1024, a.repeats or 2
    with s3_server() as (s3, server), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=4)
        local = {**copy.deepcopy(DEMO_CONFIG), "output": "local.zarr"}
        remote = {**copy.deepcopy(DEMO_CONFIG), "input": "s3://bench/movie.ome.zarr",
                  "output": "s3://bench/out.zarr", "storage": s3}
        fs = parse_config(remote, tmp).location(remote["input"]).fs()
        fs.mkdir("bench")
        fs.put(str(tmp / "movie.ome.zarr"), "bench/movie.ome.zarr", recursive=True)
        by_workers = {}
        for n in (1, 2):
            times, server_cpu = storage_pairs(n, repeats, local, remote, tmp, server)
            by_workers[n] = {"times_s": times, "median_s": medians(times), "server_cpu_s": server_cpu}
        same = all(np.array_equal(open_label_array(tmp / "local.zarr", p)[...],
                                  open_label_array(parse_config(remote, tmp).location(remote["output"]), p)[...])
                   for p in DEMO_CONFIG["populations"])
    med = by_workers[2]["median_s"]
    ratios = {n: r["median_s"]["local disk"] / r["median_s"]["S3 on loopback"] for n, r in by_workers.items()}
    return {"frames": frames, "size": size, "repeats": repeats, "times_s": by_workers[2]["times_s"],
            "median_s": med, "server_cpu_s": by_workers[2]["server_cpu_s"],
            "by_workers": {str(n): r for n, r in by_workers.items()},
            "server": "python -m moto.server (own process)", "throughput_ratio_s3_vs_local": ratios[2],
            "throughput_ratio_by_workers": {str(n): r for n, r in ratios.items()}, "labels_identical": same}


def storage_pairs(n: int, repeats: int, local: dict, remote: dict, tmp: Path, server):
    """Interleaved local/S3 runs on ``n`` workers; with 1 worker the server has a core of its own."""
    from popseg_dask.config import parse_config
    from popseg_dask.pipeline import run

    times: dict[str, list[float]] = {"local disk": [], "S3 on loopback": []}
    server_cpu: list[float] = []
    with cluster(n) as client:
        run(parse_config(local, tmp), client=client, overwrite=True)  # warm-up: imports, caches
        for _ in range(repeats):
            for name, cfg in (("local disk", local), ("S3 on loopback", remote)):
                cpu0 = sum(server.cpu_times()[:2])
                t0 = time.perf_counter()
                run(parse_config(cfg, tmp), client=client, overwrite=True)
                times[name].append(time.perf_counter() - t0)
                if cfg is remote:
                    server_cpu.append(sum(server.cpu_times()[:2]) - cpu0)
    return times, server_cpu


def show_storage(res: dict) -> None:
    runs = res.get("by_workers") or {"2": res}
    for n, r in runs.items():
        print(f"storage: {res['frames']} frames of {res['size']}², {n} worker(s), input and output on local disk "
              f"vs on S3 (moto, own process, loopback), {res['repeats']} repeats, medians:")
        print_rows(r["median_s"], "{:.1f} s")
        if r.get("server_cpu_s"):
            print(f"  the S3 server's own CPU per S3 run (on the same 2 cores): "
                  f"{float(np.median(r['server_cpu_s'])):.1f} s")
        print(f"  throughput S3 / local disk: {r['median_s']['local disk'] / r['median_s']['S3 on loopback']:.2f}")
    print(f"  labels identical: {res['labels_identical']}")


def stores(a) -> dict:
    """zarr's ``FsspecStore`` (s3fs) vs ``ObjectStore`` (obstore) on one S3 server: label frames
    written, then read, one at a time as popseg's tasks do; wall and client CPU, interleaved."""
    from obstore.store import S3Store
    from zarr.storage import FsspecStore, ObjectStore

    frames, size, repeats = a.frames or 48, a.size or 1024, a.repeats or 3
    rng = np.random.default_rng(0)
    block = 16  # blocky ids: compress like label images, not like noise
    data = rng.integers(0, 400, (frames, size // block, size // block), dtype=np.uint32)
    data = data.repeat(block, 1).repeat(block, 2)
    with s3_server() as (s3, _):
        def fsspec_store(prefix):
            opts = {"key": s3["key"], "secret": s3["secret"], "endpoint_url": s3["endpoint_url"]}
            return FsspecStore.from_url(f"s3://bench/{prefix}", storage_options=opts)

        def obstore_store(prefix):
            return ObjectStore(S3Store("bench", prefix=prefix, endpoint=s3["endpoint_url"], access_key_id=s3["key"],
                                       secret_access_key=s3["secret"], region="us-east-1",
                                       client_options={"allow_http": True}))

        import s3fs

        s3fs.S3FileSystem(key=s3["key"], secret=s3["secret"], endpoint_url=s3["endpoint_url"]).mkdir("bench")
        makers = {"fsspec (s3fs)": fsspec_store, "obstore": obstore_store}
        res = {n: {"write_s": [], "read_s": [], "write_cpu_s": [], "read_cpu_s": []} for n in makers}
        for i in range(repeats):
            for name, make in makers.items():
                arr = zarr.create_array(make(f"{name.split()[0]}-{i}.zarr"), shape=data.shape,
                                        chunks=(1, size, size), dtype=data.dtype, fill_value=0)
                w0, c0 = time.perf_counter(), time.process_time()
                for t in range(frames):
                    arr[t] = data[t]
                w1, c1 = time.perf_counter(), time.process_time()
                back = zarr.open_array(make(f"{name.split()[0]}-{i}.zarr"), mode="r")
                ok = all(np.array_equal(back[t], data[t]) for t in range(frames))
                w2, c2 = time.perf_counter(), time.process_time()
                assert ok, name
                for key, v in (("write_s", w1 - w0), ("read_s", w2 - w1), ("write_cpu_s", c1 - c0),
                               ("read_cpu_s", c2 - c1)):
                    res[name][key].append(v)
    med = {n: {k: float(np.median(v)) for k, v in r.items()} for n, r in res.items()}
    f, o = med["fsspec (s3fs)"], med["obstore"]
    return {"frames": frames, "size": size, "repeats": repeats, "raw": res, "median": med,
            "obstore_speedup": {k: f[k] / o[k] for k in f}}


def show_stores(res: dict) -> None:
    print(f"stores: {res['frames']} label frames of {res['size']}² (uint32, zstd), written then read one at a time "
          f"on moto's S3 server, {res['repeats']} repeats, medians (per store: write, read; client CPU):")
    for name, m in res["median"].items():
        print(f"  {name:<14} write {m['write_s']:.2f} s (CPU {m['write_cpu_s']:.2f} s), "
              f"read {m['read_s']:.2f} s (CPU {m['read_cpu_s']:.2f} s)")
    print("  obstore speed-up over fsspec: " + ", ".join(f"{k} {v:.2f}x" for k, v in res["obstore_speedup"].items()))


def objects(a) -> dict:
    """Stored objects per frame and population of a run of many small frames (one population)."""
    import threading

    import psutil

    from popseg_dask import load_config, run
    from popseg_dask.io.ledger import Ledger

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
        many_frames_movie(tmp, frames, size)
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
