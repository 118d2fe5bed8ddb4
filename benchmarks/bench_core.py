"""The threshold pipeline against the least any tool must do, and how it scales.

``core``: a plain serial loop in one process (read frame, segment, renumber, write) against
``popseg run`` with 1 worker, 2 workers, and 1 worker of 2 threads (threads vs processes).
``malloc``: popseg's workers with dask's default ``MALLOC_TRIM_THRESHOLD_`` against popseg's
(its own glibc thresholds, ``popseg_dask.cluster.WORKER_MALLOC``), side by side with the serial loop.
``memory``: peak worker memory against movie length.
``screen``: 10^5 tiny frames through one run: throughput and the client's memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
import zarr
from common import (
    cluster,
    demo_movie,
    many_frames_movie,
    medians,
    popseg_run,
    print_rows,
    start_rss_sampler,
    worker_peak_rss_mb,
)


def serial_baseline(movie_path: Path, cfg: dict, out: Path) -> float:
    """Seconds for the plain loop: read a frame, segment, renumber, write uint32 labels."""
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


def _loop_at_barrier(barrier, results, movie_path: Path, cfg: dict, out: Path) -> None:
    barrier.wait()
    results.put(serial_baseline(movie_path, cfg, out))


def two_loops_at_once(movie_path: Path, cfg: dict, tmp: Path) -> float:
    """Seconds of the slower of two serial loops started together in two processes.

    Two independent loops share nothing, so ``alone / this`` is the parallel efficiency the
    machine itself allows (memory bandwidth, caches, a noisy neighbour): the ceiling for any
    scheduler on it.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_loop_at_barrier, args=(barrier, results, movie_path, cfg, tmp / f"pair{i}"))
             for i in range(2)]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def _cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def _same_as_serial(tmp: Path, cfg: dict) -> None:
    # the serial loop and popseg must agree, or the comparison means nothing
    for pop in cfg["populations"]:
        a = zarr.open_array(str(tmp / "serial" / pop), mode="r")[...]
        b = zarr.open_array(str(tmp / "movie.popseg.zarr" / "labels" / pop / "0"), mode="r")[...]
        assert np.array_equal(a, b), f"popseg and the serial loop disagree on {pop}"


def client_share(cfg_path: Path, variants: dict) -> tuple[dict, dict, dict]:
    """CPU seconds of the client + embedded scheduler (+ nannies) in one run of each variant,
    their share of the run's CPU, and the last run's record; each cluster alone in this
    process, so that no other cluster's idle loop is charged to it."""
    def worker_cpu() -> float:  # nested: pickled by value, workers cannot import this module
        import psutil

        t = psutil.Process().cpu_times()
        return t.user + t.system

    client_cpu, share = {}, {}
    for name, (n, th) in variants.items():
        with cluster(n, th) as client:
            popseg_run(cfg_path, client)  # warm-up
            c0, w0 = _cpu_seconds(), sum(client.run(worker_cpu).values())
            _, rec = popseg_run(cfg_path, client)
            client_cpu[name] = _cpu_seconds() - c0
            workers_s = sum(client.run(worker_cpu).values()) - w0
            share[name] = client_cpu[name] / (client_cpu[name] + workers_s)
    return client_cpu, share, rec


def core(a) -> dict:
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 24, a.size or 1024, a.repeats or 3
    cfg = dict(DEMO_CONFIG)
    variants = {"popseg 1 worker": (1, 1), "popseg 2 workers": (2, 1), "popseg 1 worker x 2 threads": (1, 2)}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=1)
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        clients, startup = {}, {}
        for name, (n, th) in variants.items():
            t0 = time.perf_counter()
            clients[name] = stack.enter_context(cluster(n, th))
            startup[name] = time.perf_counter() - t0
            popseg_run(tmp / "run.yaml", clients[name])  # warm-up: workers import the stack once
        pair = "2 serial loops at once (each the whole movie)"
        staged = "popseg 1 worker, staged numbering"
        times: dict[str, list[float]] = {"serial loop": [], pair: [], **{k: [] for k in variants}, staged: []}
        for _ in range(repeats):
            # interleaved so that machine noise hits every variant alike
            times["serial loop"].append(serial_baseline(tmp / "movie.ome.zarr", cfg, tmp / "serial"))
            times[pair].append(two_loops_at_once(tmp / "movie.ome.zarr", cfg, tmp))
            for name, client in clients.items():
                times[name].append(popseg_run(tmp / "run.yaml", client)[0])
            # A/B of direct numbering: the same worker, untiled frames through a scratch array
            times[staged].append(popseg_run(tmp / "run.yaml", clients["popseg 1 worker"], direct=False)[0])
        _same_as_serial(tmp, cfg)
        stack.close()
        client_cpu, share, rec = client_share(tmp / "run.yaml", variants)
    med = medians(times)
    return {
        "movie": {"frames": frames, "size": size, "channels": 2, "populations": 2,
                  "objects": {p: rec["populations"][p]["n_objects"] for p in cfg["populations"]}},
        "repeats": repeats, "seconds": times, "cluster_startup_s": startup, "median_s": med,
        "client_and_scheduler_cpu_s": client_cpu,
        # goal: <= 3 % of a run's CPU (client + embedded scheduler over client + workers)
        "client_and_scheduler_cpu_share": share,
        "frames_per_s": {k: (4 if k == pair else 2) * frames / v for k, v in med.items()},
        "ratios": {
            "popseg 1 worker / serial loop (time)": med["popseg 1 worker"] / med["serial loop"],
            "staged / direct numbering, 1 worker (time)": med[staged] / med["popseg 1 worker"],
            "speed-up 2 workers vs serial loop": med["serial loop"] / med["popseg 2 workers"],
            "parallel efficiency 1 -> 2 workers": med["popseg 1 worker"] / (2 * med["popseg 2 workers"]),
            "machine's ceiling: efficiency of 2 independent serial loops": med["serial loop"] / med[pair],
            "2 workers x 1 thread vs 1 worker x 2 threads (speed)":
                med["popseg 1 worker x 2 threads"] / med["popseg 2 workers"],
        },
    }


def show_core(res: dict) -> None:
    mv = res["movie"]
    print(f"core: {mv['frames']} frames of {mv['size']}², 2 populations, {mv['objects']} objects; "
          f"median of {res['repeats']}")
    fps = res["frames_per_s"]
    print_rows({k: (v, fps[k]) for k, v in res["median_s"].items()}, "{0[0]:8.2f} s {0[1]:8.2f} frames/s")
    print_rows(res["ratios"], "{:6.2f}")
    print("  CPU seconds of the client + embedded scheduler per run: "
          + ", ".join(f"{k} {v:.2f}" for k, v in res["client_and_scheduler_cpu_s"].items()))
    if "client_and_scheduler_cpu_share" in res:
        print("  their share of the run's CPU (client + scheduler + workers): "
              + ", ".join(f"{k} {100 * v:.1f} %" for k, v in res["client_and_scheduler_cpu_share"].items()))
    print("  LocalCluster start-up (once per session, not in the figures): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in res["cluster_startup_s"].items()))


def malloc(a) -> dict:
    """popseg's worker environment against dask's default one, same movie, same run."""
    from distributed import Client, LocalCluster

    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 24, a.size or 1024, a.repeats or 3
    cfg = dict(DEMO_CONFIG)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=1)
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        ours = stack.enter_context(cluster(1))
        # a LocalCluster as dask makes it: its nannies set MALLOC_TRIM_THRESHOLD_=65536
        lc = stack.enter_context(LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                              dashboard_address=None))
        dask_default = stack.enter_context(Client(lc))
        clients = {"popseg 1 worker, dask's MALLOC_TRIM_THRESHOLD_": dask_default,
                   "popseg 1 worker, popseg's malloc thresholds": ours}
        env = {k: next(iter(c.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()))
               for k, c in clients.items()}
        for c in clients.values():
            c.run(start_rss_sampler)
            popseg_run(tmp / "run.yaml", c)
        times: dict[str, list[float]] = {"serial loop": [], **{k: [] for k in clients}}
        for _ in range(repeats):
            times["serial loop"].append(serial_baseline(tmp / "movie.ome.zarr", cfg, tmp / "serial"))
            for k, c in clients.items():
                times[k].append(popseg_run(tmp / "run.yaml", c)[0])
        peak = {k: worker_peak_rss_mb(c) for k, c in clients.items()}
        _same_as_serial(tmp, cfg)
    med = medians(times)
    slow, fast = clients
    return {"movie": {"frames": frames, "size": size}, "repeats": repeats, "worker_env": env, "seconds": times,
            "median_s": med, "peak_rss_mb_per_worker": peak,
            "ratios": {"dask default / popseg (time)": med[slow] / med[fast],
                       "dask default / serial loop (time)": med[slow] / med["serial loop"],
                       "popseg / serial loop (time)": med[fast] / med["serial loop"]}}


def show_malloc(res: dict) -> None:
    mv = res["movie"]
    print(f"malloc: {mv['frames']} frames of {mv['size']}², 2 populations, 1 worker; median of {res['repeats']}")
    peaks = res["peak_rss_mb_per_worker"]
    print_rows({k: f"{v:8.2f} s" + (f"   peak {peaks[k]:.0f} MB" if k in peaks else "")
                for k, v in res["median_s"].items()}, "{}")
    print_rows(res["ratios"], "{:6.2f}")


def memory(a) -> dict:
    """Peak worker memory against movie length: each length on a fresh 2-worker cluster."""
    from popseg_dask import load_config, run
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG

    longest, size = a.frames or 500, a.size or 512
    lengths = [n for n in (50, 100, 250) if n < longest] + [longest]
    out: dict = {"size": size, "lengths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # cells drift off a synthetic frame within ~100 frames: longer movies repeat a 50-frame one
        m = demo_movie(tmp, 50, size, seed=6)
        for n in lengths:
            image = np.concatenate([m.image] * (-(-n // 50)))[:n]
            write_ome_zarr_image(tmp / f"m{n}.ome.zarr", image, m.channels, pixel_size_um=m.pixel_size_um)
            (tmp / f"m{n}.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": f"m{n}.ome.zarr",
                                                           "output": f"m{n}.out.zarr"}))
            with cluster(2) as client:
                client.run(start_rss_sampler)
                t0 = time.perf_counter()
                run(load_config(tmp / f"m{n}.yaml"), client=client)
                wall = time.perf_counter() - t0
                out["lengths"][str(n)] = {"wall_s": wall, "peak_rss_mb_per_worker": worker_peak_rss_mb(client)}
    peaks = [v["peak_rss_mb_per_worker"] for v in out["lengths"].values()]
    out["longest_vs_shortest_peak"] = peaks[-1] / peaks[0]
    return out


def show_memory(res: dict) -> None:
    for n, v in res["lengths"].items():
        print(f"memory: {n} frames of {res['size']}²: peak {v['peak_rss_mb_per_worker']:.0f} MB per worker, "
              f"{v['wall_s']:.1f} s")
    print(f"  longest / shortest peak: {res['longest_vs_shortest_peak']:.3f}")


def screen(a) -> dict:
    """Many small frames through one run: client (+ embedded scheduler) memory and throughput."""
    import psutil

    from popseg_dask import load_config, run

    frames, size = a.frames or 100_000, a.size or 32
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        many_frames_movie(tmp, frames, size)  # one chunk per frame (10^5 chunk files)
        write_s = time.perf_counter() - t0
        samples: list[float] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(proc.memory_info().rss / 2**20)
                stop.wait(0.5)

        with cluster(2) as client:
            rss0 = proc.memory_info().rss / 2**20
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t1 = time.perf_counter()
            rec = run(load_config(tmp / "many.yaml"), client=client)
            wall = time.perf_counter() - t1
            stop.set()
            th.join()
    n = len(samples)
    tasks = frames * 3  # tile, merge, numbering per frame (no statistics tasks for this config)
    return {"frames": frames, "size": size, "write_s": write_s, "wall_s": wall, "timings": rec["timings"],
            "objects": rec["populations"]["cells"]["n_objects"], "frames_per_s": frames / wall, "tasks": tasks,
            "tasks_per_s": tasks / wall,
            "client_rss_mb": {"before": rss0, "peak": max(samples), "at_10%": samples[n // 10],
                              "at_50%": samples[n // 2], "at_90%": samples[(9 * n) // 10]},
            "client_rss_mb_every_0.5s": samples}


def show_screen(res: dict) -> None:
    m = res["client_rss_mb"]
    print(f"screen: {res['frames']} frames of {res['size']}², 1 population, 2 workers: {res['wall_s']:.0f} s, "
          f"{res['frames_per_s']:.0f} frames/s, {res['tasks_per_s']:.0f} tasks/s; client+scheduler RSS MB: "
          f"before {m['before']:.0f}, at 10% {m['at_10%']:.0f}, 50% {m['at_50%']:.0f}, 90% {m['at_90%']:.0f}, "
          f"peak {m['peak']:.0f}")


def perframe(a) -> dict:
    """The per-frame changes kept from profiling, each A/B in this process on the same frames.

    ``segmentation``: the threshold segmentation of each frame with scipy's ``binary_fill_holes``
    and ``distance_transform_edt`` swapped back in, then with the labelling fill, then with the
    ``edt`` package's distance transform too (labels checked equal). ``scratch codec`` (a change tried and
    dropped: it did not help on real provisional ids): writing and reading
    each frame's provisional ids (both populations) in a scratch array with zarr's default
    zstd against LZ4 level 1.
    """
    import shutil

    from scipy import ndimage as ndi

    import popseg_dask.segmenters.threshold as th
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 6, a.size or 2048, a.repeats or 3
    out: dict = {"movie": {"frames": frames, "size": size}, "repeats": repeats}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=2)
        names = list(m.channels)
        segs = {pop: th.ThresholdSegmenter.from_config({k: v for k, v in spec.items() if k != "segmenter"}, names)
                for pop, spec in DEMO_CONFIG["populations"].items()}

        def segment_all():
            t0 = time.perf_counter()
            labels = [seg(m.image[t][[names.index(c) for c in seg.channels]])
                      for seg in segs.values() for t in range(frames)]
            return time.perf_counter() - t0, labels

        # each change on top of the previous one; every variant must give the same labels
        variants = {"scipy fill_holes + scipy EDT (before)": (ndi.binary_fill_holes, ndi.distance_transform_edt),
                    "labelling fill + scipy EDT": (th.fill_holes, ndi.distance_transform_edt),
                    "labelling fill + edt package (now)": (th.fill_holes, th.distance_to_background)}
        fill = {k: [] for k in variants}
        ours = th.fill_holes, th.distance_to_background
        ref = None
        for _ in range(repeats):
            for name, (fh, dist) in variants.items():
                th.fill_holes, th.distance_to_background = fh, dist
                try:
                    s, after = segment_all()
                finally:
                    th.fill_holes, th.distance_to_background = ours
                fill[name].append(s)
                ref = ref or after
                assert all(np.array_equal(x, y) for x, y in zip(ref, after)), f"{name} changes the labels"
        # what scratch holds: provisional ids (each object's first pixel index + 1), not small labels
        from popseg_dask.stitch import compact_ids, provisional_ids

        labels = []
        for lab in after:
            local, n = compact_ids(lab)
            labels.append(provisional_ids(local, np.ones(n + 1, bool), (0, 0), size, np.dtype(np.uint32))[0])
        labels = np.stack(labels)
        lz4 = zarr.codecs.BloscCodec(cname="lz4", clevel=1)
        codec = {"zstd (zarr default, kept)": [], "lz4 level 1 (tried, not kept)": []}
        sizes = {}
        for _ in range(repeats):
            for name, compressors in (("zstd (zarr default, kept)", "auto"), ("lz4 level 1 (tried, not kept)", lz4)):
                path = tmp / "scratch.zarr"
                arr = zarr.create_array(str(path), shape=labels.shape, chunks=(1, size, size), dtype=np.uint32,
                                        fill_value=0, compressors=compressors, overwrite=True)
                t0 = time.perf_counter()
                for t in range(len(labels)):
                    arr[t] = labels[t]
                for t in range(len(labels)):
                    assert np.array_equal(arr[t], labels[t])
                codec[name].append(time.perf_counter() - t0)
                sizes[name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
                shutil.rmtree(path)
    for key, times in (("segmentation", fill), ("scratch_codec", codec)):
        med = medians(times)
        old, new = next(iter(med)), list(med)[-1]
        out[key] = {"seconds": times, "median_s": med, "speed-up": med[old] / med[new],
                    "per_frame_ms": {k: 1000 * v / (2 * frames) for k, v in med.items()}}
    out["scratch_codec"]["mb_on_disk"] = sizes
    return out


def show_perframe(res: dict) -> None:
    mv = res["movie"]
    print(f"perframe: {mv['frames']} frames of {mv['size']}², 2 populations; median of {res['repeats']}; "
          "per frame and population:")
    for key in ("segmentation", "scratch_codec"):
        r = res[key]
        print(f"  {key}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["per_frame_ms"].items())
              + f"; speed-up {r['speed-up']:.2f}")
    print("  scratch MB on disk: " + ", ".join(f"{k} {v:.1f}" for k, v in res["scratch_codec"]["mb_on_disk"].items()))
