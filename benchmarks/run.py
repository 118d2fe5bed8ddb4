"""Benchmarks of the core pipeline, each against a baseline measured in the same run.

``core``: a synthetic two-population movie segmented (a) by a plain serial loop in this
process — read frame, segment, renumber, write, the least any tool must do — and (b) by
``popseg run`` on an embedded LocalCluster with 1 and with 2 workers. Printed as ratios:
overhead of popseg on 1 worker vs the serial loop, speed-up and parallel efficiency 1 → 2.

``tiles``: the same kind of movie at a larger frame size, segmented untiled and with tiles of
several sizes on 2 workers: wall time relative to untiled, the share of task time spent
stitching (merge tasks), peak memory per worker (a fresh cluster per variant), and a check that
every tiled output is bitwise equal to the untiled one.

``models``: StarDist and Cellpose models (trained here by ``popseg train`` on a synthetic movie,
cached in ``benchmarks/.models``) run (a) by a bare loop over frames in one process — the
framework's own call on each normalised frame, the least any tool must do — with the same
number of threads as (b) ``popseg run`` with 1 and 2 workers. Printed as frames/s and the ratio
popseg / bare loop (goal: >= 0.9). Model loading is excluded on both sides (warm-up run).

Usage::

    python benchmarks/run.py core [--frames 24] [--size 1024] [--repeats 3]
    python benchmarks/run.py tiles [--frames 50] [--size 2048] [--tiles 256 512 1024] [--repeats 1]
    python benchmarks/run.py models [--frames 16] [--size 512] [--repeats 3]
    python benchmarks/run.py screen [--frames 100000] [--size 32]
    python benchmarks/run.py celldetective [--frames 6] [--size 2048] [--celldetective-python PY]
    python benchmarks/run.py daskimage [--frames 6] [--size 2048]
    python benchmarks/run.py memory [--frames 500] [--size 512]      # 50 vs --frames frames

``celldetective``: the threshold pipeline against Celldetective 1.6.5's own
``segment_frame_from_thresholds`` loop (run in its own venv, called as a subprocess), same configs,
same 2048² frames: speed-up and whether the masks are identical.

``daskimage``: the nuclei population as popseg segments it (threshold, watershed, queries) vs
dask-image's ``ndmeasure.label`` on the same smoothed, thresholded mask: seconds side by side and
how many objects the connected components merge (against popseg's labels and the ground truth).

``screen``: one run over a very long movie of tiny frames (10^5 by default): throughput (frames/s,
tasks/s) and the resident memory of the client process, which also hosts the embedded scheduler,
sampled through the run — it must stay flat, since frames are submitted in a bounded window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


def _start_rss_sampler(dask_worker):
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


def _worker_peak_rss(client) -> dict:
    return client.run(lambda dask_worker: dask_worker._popseg_peak_rss)


def bench_tiles(frames: int, size: int, tiles: list[int], repeats: int) -> dict:
    from distributed import Client, LocalCluster

    from popseg_dask import load_config, run
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    density = size * size / (384 * 384)
    variants = ["none"] + [int(t) for t in tiles]
    rows: dict[str, dict] = {str(v): {"wall_s": [], "peak_rss_mb": [], "stitch_share": [], "merged_regions": 0}
                             for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=2)
        write_ome_zarr_image(tmp / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
        del m
        ref = None
        for r in range(repeats):
            for v in variants:
                cfg = dict(DEMO_CONFIG)
                cfg["output"] = f"out-{v}.zarr"
                cfg["populations"] = {k: {**p, "tile": "none" if v == "none" else [v, v]}
                                      for k, p in DEMO_CONFIG["populations"].items()}
                (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                        Client(cl) as client:
                    client.run(_start_rss_sampler)
                    t0 = time.perf_counter()
                    rec = run(load_config(tmp / "run.yaml"), client=client, overwrite=True)
                    wall = time.perf_counter() - t0
                    rss = _worker_peak_rss(client)
                row = rows[str(v)]
                row["wall_s"].append(wall)
                row["peak_rss_mb"].append(max(rss.values()) / 2**20)
                pops = rec["populations"].values()
                tile_s = sum(p["tile_task_s"] for p in pops)
                merge_s = sum(p["merge_task_s"] for p in pops)
                row["stitch_share"].append(merge_s / (tile_s + merge_s))
                row["numbering_share_of_wall"] = rec["timings"]["number_s"] / wall
                row["merged_regions"] = sum(p["merged_regions"] for p in pops)
                row["objects"] = {k: p["n_objects"] for k, p in rec["populations"].items()}
                labels = {k: zarr.open_array(str(tmp / cfg["output"] / "labels" / k / "0"), mode="r")[...]
                          for k in cfg["populations"]}
                if v == "none":
                    ref = labels
                else:
                    row["equal_to_untiled"] = all(np.array_equal(labels[k], ref[k]) for k in labels)
                shutil.rmtree(tmp / cfg["output"])
    base = statistics.median(rows["none"]["wall_s"])
    for v, row in rows.items():
        row["median_wall_s"] = statistics.median(row["wall_s"])
        row["wall_vs_untiled"] = row["median_wall_s"] / base
        row["median_peak_rss_mb"] = statistics.median(row["peak_rss_mb"])
        row["median_stitch_share"] = statistics.median(row["stitch_share"])
    return {"benchmark": "tiles", "movie": {"frames": frames, "size": size, "channels": 2, "populations": 2},
            "repeats": repeats, "variants": rows}


def _print_tiles(res: dict) -> None:
    mv = res["movie"]
    print(f"tiles: {mv['frames']} frames of {mv['size']}x{mv['size']}, 2 populations, 2 workers; "
          f"median of {res['repeats']}")
    print(f"{'tile':>6s} {'wall s':>8s} {'vs untiled':>10s} {'stitch %':>9s} {'peak MB/worker':>15s} "
          f"{'merged':>7s} {'== untiled':>10s}")
    for v, row in res["variants"].items():
        print(f"{v:>6s} {row['median_wall_s']:8.1f} {row['wall_vs_untiled']:10.2f} "
              f"{100 * row['median_stitch_share']:9.2f} {row['median_peak_rss_mb']:15.0f} "
              f"{row['merged_regions']:7d} {str(row.get('equal_to_untiled', '-')):>10s}")


MODELS_DIR = Path(__file__).parent / ".models"


def _trained_models(python: str) -> dict[str, Path]:
    """A tiny StarDist and a Cellpose model trained by ``popseg train`` (once; kept in .models)."""
    import subprocess

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    want = {"stardist": MODELS_DIR / "sd", "cellpose": MODELS_DIR / "cp"}
    if all(p.exists() for p in want.values()):
        return want
    MODELS_DIR.mkdir(exist_ok=True)
    m = make_movie(n_frames=8, size=256, n_targets=30, n_effectors=8, seed=0)
    src = MODELS_DIR / "train-movie.ome.zarr"
    shutil.rmtree(src, ignore_errors=True)
    write_ome_zarr_image(src, m.image, m.channels, pixel_size_um=m.pixel_size_um)
    (MODELS_DIR / "threshold.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": src.name,
                                                               "output": "threshold.zarr"}))
    popseg = [python, "-m", "popseg_dask.cli"]
    run = lambda *a: subprocess.run([*popseg, *a], check=True, cwd=MODELS_DIR)  # noqa: E731
    run("run", "threshold.yaml", "--quiet", "--overwrite")
    for pop, kind, extra in (("targets", "stardist", ["--size", "tiny", "--epochs", "20", "--steps", "20"]),
                             ("effectors", "cellpose", ["--epochs", "100", "--patch", "128"])):
        run("export-training", "threshold.zarr", "--population", pop, "--out", f"ds-{pop}", "--overwrite")
        run("train", kind, f"ds-{pop}", "--out", str(want[kind]), "--overwrite", *extra)
    return want


_BARE = r"""
import json, sys, time
import numpy as np, zarr
from popseg_dask.normalize import ChannelScaling, apply_scaling, scaling_from_pixels
from popseg_dask.stitch import canonical_relabel
kind, model_dir, movie, channel, out = sys.argv[1:6]
arr = zarr.open_array(movie + "/0", mode="r")
s = [ChannelScaling()]
if kind == "stardist":
    from stardist.models import StarDist2D
    from pathlib import Path
    p = Path(model_dir)
    model = StarDist2D(None, name=p.name, basedir=str(p.parent))
    def seg(x):
        return model.predict_instances(x[0][..., None], axes="YXC", normalizer=None, verbose=False,
                                       show_tile_progress=False)[0]
else:
    from cellpose import models
    cfg = json.load(open(model_dir + "/config_input.json"))
    model = models.CellposeModel(gpu=False, pretrained_model=model_dir + "/" + model_dir.rstrip("/").split("/")[-1])
    def seg(x):
        return model.eval(x[0], channels=None, normalize=False, diameter=cfg["diameter"])[0]
def loop():
    dst = zarr.create_array(store=out, shape=(arr.shape[0], *arr.shape[2:]), chunks=(1, *arr.shape[2:]),
                            dtype=np.uint32, overwrite=True)
    offset = 0
    for t in range(arr.shape[0]):
        x = arr[t, int(channel)][None].astype(np.float32)
        lab, n = canonical_relabel(seg(apply_scaling(x, scaling_from_pixels(x, s), s)))
        lab[lab > 0] += offset
        dst[t] = lab
        offset += n
seg(np.zeros((1, 64, 64), np.float32))  # warm-up: graph building, first allocations
t0 = time.perf_counter()
loop()
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _bare_loop(python: str, kind: str, model: Path, movie: Path, channel: int, out: Path, threads: int) -> float:
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    prefix = f"import torch; torch.set_num_threads({threads})\n" if kind == "cellpose" else ""
    code = prefix + _BARE
    res = subprocess.run([python, "-c", code, kind, str(model), str(movie), str(channel), str(out)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["seconds"]


def bench_models(frames: int, size: int, repeats: int) -> dict:
    from distributed import Client, LocalCluster

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.metrics import f1_score
    from popseg_dask.synthetic import make_movie

    python = sys.executable
    models = _trained_models(python)
    density = size * size / (256 * 256)
    out: dict = {"benchmark": "models", "movie": {"frames": frames, "size": size}, "repeats": repeats, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(8 * density), seed=5)
        write_ome_zarr_image(tmp / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
        clients = {n: Client(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                          dashboard_address=None)) for n in (1, 2)}
        try:
            for kind, channel, truth in (("stardist", 0, "targets"), ("cellpose", 1, "effectors")):
                cfg = {"input": "movie.ome.zarr", "output": f"{kind}.zarr",
                       "populations": {kind: {"segmenter": kind, "model": str(models[kind]), "tile": "none"}}}
                (tmp / f"{kind}.yaml").write_text(yaml.safe_dump(cfg))
                for c in clients.values():
                    _popseg(tmp / f"{kind}.yaml", c)  # warm-up: each worker loads the model once
                times: dict[str, list[float]] = {k: [] for k in ("bare loop, 1 thread", "popseg 1 worker",
                                                                 "bare loop, 2 threads", "popseg 2 workers")}
                for _ in range(repeats):
                    times["bare loop, 1 thread"].append(
                        _bare_loop(python, kind, models[kind], tmp / "movie.ome.zarr", channel, tmp / "bare", 1))
                    times["popseg 1 worker"].append(_popseg(tmp / f"{kind}.yaml", clients[1])[0])
                    times["bare loop, 2 threads"].append(
                        _bare_loop(python, kind, models[kind], tmp / "movie.ome.zarr", channel, tmp / "bare", 2))
                    times["popseg 2 workers"].append(_popseg(tmp / f"{kind}.yaml", clients[2])[0])
                med = {k: statistics.median(v) for k, v in times.items()}
                ours = zarr.open_array(str(tmp / f"{kind}.zarr" / "labels" / kind / "0"), mode="r")[...]
                bare = zarr.open_array(str(tmp / "bare"), mode="r")[...]
                out["kinds"][kind] = {
                    "seconds": times, "median_s": med,
                    "frames_per_s": {k: frames / v for k, v in med.items()},
                    "ratios": {"popseg 1 worker / bare loop 1 thread (throughput)":
                               med["bare loop, 1 thread"] / med["popseg 1 worker"],
                               "popseg 2 workers / bare loop 2 threads (throughput)":
                               med["bare loop, 2 threads"] / med["popseg 2 workers"]},
                    "f1_vs_truth": {"popseg": float(np.mean([f1_score(ours[t], m.truth[truth][t])
                                                             for t in range(frames)])),
                                    "bare loop": float(np.mean([f1_score(bare[t], m.truth[truth][t])
                                                                for t in range(frames)]))},
                }
        finally:
            for c in clients.values():
                cluster = c.cluster
                c.close()
                cluster.close()
    return out


def _print_models(res: dict) -> None:
    mv = res["movie"]
    print(f"models: {mv['frames']} frames of {mv['size']}x{mv['size']}, untiled; median of {res['repeats']}")
    for kind, r in res["kinds"].items():
        print(f"  {kind}: " + ", ".join(f"{k} {v:.2f} frames/s" for k, v in r["frames_per_s"].items()))
        for k, v in r["ratios"].items():
            print(f"    {k:52s} {v:5.2f}")
        print(f"    F1 vs truth: popseg {r['f1_vs_truth']['popseg']:.3f}, bare loop {r['f1_vs_truth']['bare loop']:.3f}")


def bench_screen(frames: int, size: int) -> dict:
    """Many small frames through one run: client (+ embedded scheduler) memory and throughput."""
    import threading

    import psutil
    from distributed import Client, LocalCluster

    from popseg_dask import load_config, run
    from popseg_dask.synthetic import DEMO_CONFIG

    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        # one chunk per frame, as microscopy movies are stored (10^5 chunk files)
        arr = zarr.create_array(str(tmp / "many.zarr"), shape=(frames, 1, size, size), chunks=(1, 1, size, size),
                                dtype=np.uint16)
        yy, xx = np.mgrid[:size, :size]
        blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2) * 800
        for a in range(0, frames, 1000):
            b = min(frames, a + 1000)
            arr[a:b, 0] = (rng.normal(100, 10, (b - a, size, size)) + blob).astype(np.uint16)
        write_s = time.perf_counter() - t0
        pop = {**DEMO_CONFIG["populations"]["targets"], "channel": "nuclei", "tile": "none"}
        cfg = {"input": "many.zarr", "dims": "tcyx", "channels": ["nuclei"], "output": "many.out.zarr",
               "populations": {"cells": pop}}
        (tmp / "many.yaml").write_text(yaml.safe_dump(cfg))
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.perf_counter(), proc.memory_info().rss / 2**20))
                stop.wait(0.5)

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            rss0 = proc.memory_info().rss / 2**20
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            t1 = time.perf_counter()
            rec = run(load_config(tmp / "many.yaml"), client=client)
            wall = time.perf_counter() - t1
            stop.set()
            th.join()
        rss = [r for _, r in samples]
        n = len(rss)
        tasks = frames * 3  # tile, merge, numbering per frame (no statistics tasks for this config)
        return {
            "benchmark": "screen", "frames": frames, "size": size, "write_s": write_s, "wall_s": wall,
            "timings": rec["timings"], "objects": rec["populations"]["cells"]["n_objects"],
            "frames_per_s": frames / wall, "tasks": tasks, "tasks_per_s": tasks / wall,
            "client_rss_mb": {"before": rss0, "peak": max(rss), "at_10%": rss[n // 10], "at_50%": rss[n // 2],
                              "at_90%": rss[(9 * n) // 10]},
        }


CD_VENV = Path(__file__).parent / ".venv-celldetective"

_CD_LOOP = r"""
import json, os, sys, time
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import numpy as np
from celldetective.segmentation import segment_frame_from_thresholds
frames = np.load(sys.argv[1])                     # (t, y, x, c), as Celldetective holds a stack
cfgs = json.loads(open(sys.argv[2]).read())       # population -> segment_frame_from_thresholds kwargs
segment_frame_from_thresholds(frames[0][:64, :64].copy(), **next(iter(cfgs.values())))  # warm-up
t0 = time.perf_counter()
out = {name: np.stack([segment_frame_from_thresholds(f.copy(), **kw) for f in frames]) for name, kw in cfgs.items()}
seconds = time.perf_counter() - t0
np.savez_compressed(sys.argv[3], **out)
print(json.dumps({"seconds": seconds}))
"""


def _celldetective_python(given: str | None) -> str:
    """Celldetective 1.6.5 in its own venv (created here once; none of its code enters this project)."""
    import subprocess

    if given:
        return given
    py = CD_VENV / "bin" / "python"
    if not py.exists():
        print(f"installing celldetective 1.6.5 into {CD_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CD_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "celldetective==1.6.5"], check=True)
    return str(py)


def bench_celldetective(frames: int, size: int, repeats: int, cd_python: str | None) -> dict:
    """popseg's threshold pipeline vs Celldetective's own segment_frame_from_thresholds, same configs."""
    import subprocess

    from distributed import Client, LocalCluster

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.stitch import canonical_relabel
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    py = _celldetective_python(cd_python)
    density = size * size / (384 * 384)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=2)
        write_ome_zarr_image(tmp / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
        np.save(tmp / "frames.npy", np.moveaxis(m.image, 1, -1))
        names = list(m.channels)
        cd_cfg, pops = {}, {}
        for pop, spec in DEMO_CONFIG["populations"].items():
            cd_cfg[pop] = {"target_channel": names.index(spec["channel"]), "thresholds": spec["thresholds"],
                           "filters": spec["filters"], "marker_min_distance": spec["marker_min_distance"],
                           "marker_footprint_size": spec["marker_footprint_size"],
                           "feature_queries": spec["feature_queries"], "do_watershed": spec["do_watershed"],
                           "fill_holes": spec["fill_holes"]}
            # Celldetective's global watershed tie-break, for identical masks (see README, Compatibility)
            pops[pop] = {**spec, "watershed_ties": "celldetective"}
        (tmp / "cd.json").write_text(json.dumps(cd_cfg))
        cfg = {**DEMO_CONFIG, "populations": pops}
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"}
        clients = {n: Client(LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                          dashboard_address=None)) for n in (1, 2)}
        times: dict[str, list[float]] = {"celldetective (its loop, 1 core)": [], "popseg 1 worker": [],
                                         "popseg 2 workers": []}
        try:
            for c in clients.values():
                _popseg(tmp / "run.yaml", c)  # warm-up
            for _ in range(repeats):
                res = subprocess.run([py, "-c", _CD_LOOP, str(tmp / "frames.npy"), str(tmp / "cd.json"),
                                      str(tmp / "cd.npz")], capture_output=True, text=True, env=env, check=True)
                times["celldetective (its loop, 1 core)"].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
                times["popseg 1 worker"].append(_popseg(tmp / "run.yaml", clients[1])[0])
                times["popseg 2 workers"].append(_popseg(tmp / "run.yaml", clients[2])[0])
        finally:
            for c in clients.values():
                cluster = c.cluster
                c.close()
                cluster.close()
        identical = {}
        with np.load(tmp / "cd.npz") as cd:
            for pop in pops:
                ours = zarr.open_array(str(tmp / "movie.popseg.zarr" / "labels" / pop / "0"), mode="r")[...]
                identical[pop] = all(np.array_equal(canonical_relabel(cd[pop][t])[0], canonical_relabel(ours[t])[0])
                                     for t in range(frames))
    med = {k: statistics.median(v) for k, v in times.items()}
    cd_s = med["celldetective (its loop, 1 core)"]
    return {"benchmark": "celldetective", "movie": {"frames": frames, "size": size}, "repeats": repeats,
            "seconds": times, "median_s": med, "identical_masks": identical,
            "ratios": {"speed-up popseg 2 workers vs celldetective": cd_s / med["popseg 2 workers"],
                       "speed-up popseg 1 worker vs celldetective (same core)": cd_s / med["popseg 1 worker"]}}


def _merged(coarse: np.ndarray, fine: np.ndarray) -> tuple[int, int]:
    """Labels of ``coarse`` that hold two or more objects of ``fine``, and how many objects they swallow."""
    m = (coarse > 0) & (fine > 0)
    pairs = np.unique(np.stack([coarse[m], fine[m]]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    return int((counts > 1).sum()), int(counts[counts > 1].sum())


def bench_daskimage(frames: int, size: int) -> dict:
    """Instance labels from popseg vs connected components from dask-image's ndmeasure.label on the
    same thresholded mask: throughput side by side, and how many objects the components merge."""
    import dask.array as da
    from dask_image import ndfilters, ndmeasure
    from distributed import Client, LocalCluster

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    density = size * size / (384 * 384)
    spec = DEMO_CONFIG["populations"]["targets"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = make_movie(n_frames=frames, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=4)
        write_ome_zarr_image(tmp / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
        cfg = {**DEMO_CONFIG, "populations": {"targets": spec}}
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            _popseg(tmp / "run.yaml", client)  # warm-up
            ours_s = _popseg(tmp / "run.yaml", client)[0]
            nuclei = da.from_zarr(str(tmp / "movie.ome.zarr" / "0"))[:, 0]
            sigma = spec["filters"][0][1]
            t0 = time.perf_counter()
            smooth = ndfilters.gaussian_filter(nuclei.astype(np.float32), sigma=(0, sigma, sigma))
            mask = smooth >= spec["thresholds"][0]
            structure = np.zeros((3, 3, 3), bool)
            structure[1] = True  # components within a frame, never across time
            lab, n = ndmeasure.label(mask, structure=structure)
            lab = lab.compute()
            dask_s = time.perf_counter() - t0
        ours = zarr.open_array(str(tmp / "movie.popseg.zarr" / "labels" / "targets" / "0"), mode="r")[...]
        truth = m.truth["targets"]
        merges_ours = [_merged(lab[t], ours[t]) for t in range(frames)]
        merges_truth = [_merged(lab[t], truth[t]) for t in range(frames)]
        ours_vs_truth = [_merged(ours[t], truth[t]) for t in range(frames)]
        return {
            "benchmark": "daskimage", "movie": {"frames": frames, "size": size},
            "seconds": {"popseg (threshold + watershed + queries), 2 workers": ours_s,
                        "dask-image gaussian + threshold + ndmeasure.label, 2 workers": dask_s},
            "objects": {"popseg": int(sum(len(np.unique(o)) - 1 for o in ours)), "dask-image components": int(n),
                        "truth": int(sum(len(np.unique(t)) - 1 for t in truth))},
            "dask-image components holding >= 2 popseg objects": sum(a for a, _ in merges_ours),
            "popseg objects swallowed by those": sum(b for _, b in merges_ours),
            "dask-image components holding >= 2 true objects": sum(a for a, _ in merges_truth),
            "true objects swallowed by those": sum(b for _, b in merges_truth),
            "popseg objects holding >= 2 true objects": sum(a for a, _ in ours_vs_truth),
            "true objects swallowed by those (popseg)": sum(b for _, b in ours_vs_truth),
        }


def bench_memory(lengths: list[int], size: int) -> dict:
    """Peak worker memory against movie length: each length on a fresh 2-worker cluster."""
    from distributed import Client, LocalCluster

    from popseg_dask import load_config, run
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    density = size * size / (384 * 384)
    out: dict = {"benchmark": "memory", "size": size, "lengths": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # cells drift off a synthetic frame within ~100 frames: longer movies repeat a 50-frame one
        m = make_movie(n_frames=50, size=size, n_targets=int(30 * density), n_effectors=int(10 * density), seed=6)
        for n in lengths:
            image = np.concatenate([m.image] * (-(-n // 50)))[:n]
            write_ome_zarr_image(tmp / f"m{n}.ome.zarr", image, m.channels, pixel_size_um=m.pixel_size_um)
            (tmp / f"m{n}.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": f"m{n}.ome.zarr",
                                                           "output": f"m{n}.out.zarr"}))
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                client.run(_start_rss_sampler)
                t0 = time.perf_counter()
                run(load_config(tmp / f"m{n}.yaml"), client=client)
                wall = time.perf_counter() - t0
                rss = _worker_peak_rss(client)
            out["lengths"][str(n)] = {"wall_s": wall, "peak_rss_mb_per_worker": max(rss.values()) / 2**20}
    peaks = [v["peak_rss_mb_per_worker"] for v in out["lengths"].values()]
    out["longest_vs_shortest_peak"] = peaks[-1] / peaks[0]
    return out


def _machine() -> dict:
    import dask

    return {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "dask": dask.__version__, "date": time.strftime("%Y-%m-%d")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="benchmarks to run: core, tiles, models (default: core)")
    p.add_argument("--frames", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    p.add_argument("--celldetective-python", help="python of a venv with celldetective==1.6.5 "
                   "(default: benchmarks/.venv-celldetective, created on first use)")
    a = p.parse_args(argv)
    names = a.names or ["core"]
    unknown = set(names) - {"core", "tiles", "models", "screen", "celldetective", "daskimage", "memory"}
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; available: core, tiles, models, screen, celldetective, "
                "daskimage, memory")
    a.out.mkdir(parents=True, exist_ok=True)
    if "memory" in names:
        res = bench_memory([50, a.frames or 500], a.size or 512)
        res["machine"] = _machine()
        for n, v in res["lengths"].items():
            print(f"memory: {n} frames of {res['size']}²: peak {v['peak_rss_mb_per_worker']:.0f} MB per worker, "
                  f"{v['wall_s']:.1f} s")
        print(f"longest / shortest peak: {res['longest_vs_shortest_peak']:.3f}")
        (a.out / "memory.json").write_text(json.dumps(res, indent=2))
        names = [n for n in names if n != "memory"]
        if not names:
            return 0
    if "daskimage" in names:
        res = bench_daskimage(a.frames or 6, a.size or 2048)
        res["machine"] = _machine()
        print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
        (a.out / "daskimage.json").write_text(json.dumps(res, indent=2))
        print(f"written {a.out / 'daskimage.json'}")
        names = [n for n in names if n != "daskimage"]
        if not names:
            return 0
    if "celldetective" in names:
        res = bench_celldetective(a.frames or 6, a.size or 2048, a.repeats or 2, a.celldetective_python)
        res["machine"] = _machine()
        print(f"celldetective: {res['movie']['frames']} frames of {res['movie']['size']}², 2 populations; "
              f"median of {res['repeats']}; identical masks: {res['identical_masks']}")
        for k, v in res["median_s"].items():
            print(f"  {k:34s} {v:8.2f} s")
        for k, v in res["ratios"].items():
            print(f"  {k:52s} {v:5.2f}")
        (a.out / "celldetective.json").write_text(json.dumps(res, indent=2))
        print(f"written {a.out / 'celldetective.json'}")
        names = [n for n in names if n != "celldetective"]
        if not names:
            return 0
    if "screen" in names:
        res = bench_screen(a.frames or 100_000, a.size or 32)
        res["machine"] = _machine()
        m = res["client_rss_mb"]
        print(f"screen: {res['frames']} frames of {res['size']}x{res['size']}, 1 population, 2 workers: "
              f"{res['wall_s']:.0f} s, {res['frames_per_s']:.0f} frames/s, {res['tasks_per_s']:.0f} tasks/s; "
              f"client+scheduler RSS MB: before {m['before']:.0f}, at 10% {m['at_10%']:.0f}, 50% {m['at_50%']:.0f}, "
              f"90% {m['at_90%']:.0f}, peak {m['peak']:.0f}")
        (a.out / "screen.json").write_text(json.dumps(res, indent=2))
        print(f"written {a.out / 'screen.json'}")
        names = [n for n in names if n != "screen"]
        if not names:
            return 0
    if "models" in names:
        res = bench_models(a.frames or 16, a.size or 512, a.repeats or 3)
        res["machine"] = _machine()
        _print_models(res)
        (a.out / "models.json").write_text(json.dumps(res, indent=2))
        print(f"written {a.out / 'models.json'}")
        names = [n for n in names if n != "models"]
        if not names:
            return 0
    if "tiles" in names:
        res = bench_tiles(a.frames or 50, a.size or 2048, a.tiles, a.repeats or 1)
        res["machine"] = _machine()
        _print_tiles(res)
        (a.out / "tiles.json").write_text(json.dumps(res, indent=2))
        print(f"written {a.out / 'tiles.json'}")
        if names == ["tiles"]:
            return 0
    a.frames, a.size, a.repeats = a.frames or 24, a.size or 1024, a.repeats or 3
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
    (a.out / "core.json").write_text(json.dumps(res, indent=2))
    print(f"written {a.out / 'core.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
