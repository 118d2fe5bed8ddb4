"""Incremental re-runs: what a changed setting costs.

``cache``: a StarDist and a Cellpose population (models of ``bench_models.trained_models``) with
``cache: model_outputs``. After one run fills the cache, each repeat changes a post-processing
threshold (a value not used before, so that every run really recomputes) and times (a) the re-run
from the cache against (b) the same config run with ``--overwrite`` and no cache, side by side on
one cluster. Both must give the same labels. Printed: seconds, ratio (b)/(a), cache size per frame.

``one-of-two``: the demo's two threshold populations; each repeat changes the targets' threshold
and times the incremental re-run (effectors kept) against ``--overwrite`` (both recomputed).
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from common import cluster, demo_movie, medians, print_rows

_POST = {"stardist": ("prob_thresh", [0.45, 0.55, 0.65, 0.75, 0.35]),
         "cellpose": ("cellprob_threshold", [0.5, 1.0, -0.5, 1.5, -1.0])}


def _run(cfg: dict, root: Path, client, **kw) -> tuple[float, dict]:
    from popseg_dask.config import parse_config
    from popseg_dask.pipeline import run

    t0 = time.perf_counter()
    rec = run(parse_config(cfg, root), client=client, **kw)
    return time.perf_counter() - t0, rec


def _labels(out: Path, pop: str) -> np.ndarray:
    return zarr.open_array(str(out / "labels" / pop / "0"), mode="r")[...]


def cache(a) -> dict:
    from bench_models import trained_models

    frames, size, repeats = a.frames or 4, a.size or 1024, a.repeats or 2
    models = trained_models(sys.executable)
    out: dict = {"movie": {"frames": frames, "size": size}, "repeats": repeats, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp, cluster(2) as client:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=5)
        for kind in ("stardist", "cellpose"):
            key, values = _POST[kind]
            pop = {"segmenter": kind, "model": str(models[kind]), "tile": "none"}
            cached = {"input": "movie.ome.zarr", "output": f"{kind}-cached.zarr",
                      "populations": {kind: {**pop, "cache": "model_outputs"}}}
            plain = {**cached, "output": f"{kind}-full.zarr", "populations": {kind: dict(pop)}}
            _, rec = _run(cached, tmp, client)  # fills the cache; the workers load the model
            size_pf = rec["populations"][kind]["cache"]["bytes_per_frame"]
            times: dict[str, list[float]] = {"from the cache": [], "full recompute (--overwrite)": []}
            same = True
            for i in range(repeats):
                for cfg in (cached, plain):
                    cfg["populations"][kind][key] = values[i]
                times["from the cache"].append(_run(cached, tmp, client)[0])
                times["full recompute (--overwrite)"].append(_run(plain, tmp, client, overwrite=True)[0])
                same &= bool(np.array_equal(_labels(tmp / cached["output"], kind),
                                            _labels(tmp / plain["output"], kind)))
            med = medians(times)
            out["kinds"][kind] = {"changed": key, "seconds": times, "median_s": med, "labels_equal": same,
                                  "cache_mb_per_frame": size_pf / 2**20,
                                  "speed-up": med["full recompute (--overwrite)"] / med["from the cache"]}
    return out


def show_cache(res: dict) -> None:
    mv = res["movie"]
    print(f"cache: {mv['frames']} frames of {mv['size']}x{mv['size']}, untiled, 2 workers; median of {res['repeats']}")
    for kind, r in res["kinds"].items():
        print(f" {kind} (changing {r['changed']}): cache {r['cache_mb_per_frame']:.2f} MB/frame, "
              f"labels equal: {r['labels_equal']}")
        print_rows(r["median_s"], "{:.2f} s")
        print(f"  speed-up: {r['speed-up']:.2f}x")


def one_of_two(a) -> dict:
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 16, a.size or 512, a.repeats or 3
    out: dict = {"movie": {"frames": frames, "size": size}, "repeats": repeats}
    with tempfile.TemporaryDirectory() as tmp, cluster(2) as client:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=5)
        cfg = copy.deepcopy(DEMO_CONFIG)
        inc = {**cfg, "output": "incremental.zarr"}
        full = {**copy.deepcopy(cfg), "output": "full.zarr"}
        _run(inc, tmp, client)
        _run(full, tmp, client)
        times: dict[str, list[float]] = {"incremental (one recomputed)": [], "--overwrite (both)": []}
        for i in range(repeats):
            for c in (inc, full):
                c["populations"]["targets"]["thresholds"] = [560 + 20 * i, float("inf")]
            times["incremental (one recomputed)"].append(_run(inc, tmp, client)[0])
            times["--overwrite (both)"].append(_run(full, tmp, client, overwrite=True)[0])
        same = all(np.array_equal(_labels(tmp / "incremental.zarr", p), _labels(tmp / "full.zarr", p))
                   for p in ("targets", "effectors"))
        med = medians(times)
        out.update(seconds=times, median_s=med, labels_equal=same,
                   ratio=med["--overwrite (both)"] / med["incremental (one recomputed)"])
    return out


def show_one_of_two(res: dict) -> None:
    mv = res["movie"]
    print(f"one-of-two: {mv['frames']} frames of {mv['size']}x{mv['size']}, 2 threshold populations, 2 workers; "
          f"median of {res['repeats']}; labels equal: {res['labels_equal']}")
    print_rows(res["median_s"], "{:.2f} s")
    print(f"  --overwrite / incremental: {res['ratio']:.2f}x")


def tune_vs_runs(a) -> dict:
    """``tune`` over 20 StarDist settings vs 20 separate runs of the same frames (scored the same way)."""
    from bench_models import trained_models

    from popseg_dask.config import parse_config
    from popseg_dask.metrics import match_counts
    from popseg_dask.tune import IOUS, expand_space, tune

    frames, size = a.frames or 4, a.size or 512
    models = trained_models(sys.executable)
    space = {"prob_thresh": [0.3, 0.4, 0.5, 0.6, 0.7], "nms_thresh": [0.2, 0.3, 0.4, 0.5]}
    grid = expand_space(space)
    with tempfile.TemporaryDirectory() as tmp, cluster(2) as client:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=5)
        truth = m.truth["targets"]
        pop = {"segmenter": "stardist", "model": str(models["stardist"]), "tile": "none"}
        cfg = {"input": "movie.ome.zarr", "output": "runs.zarr", "populations": {"sd": pop}}
        _run(cfg, tmp, client, overwrite=True)  # warm-up: the workers load the model
        t0 = time.perf_counter()
        res = tune(parse_config(cfg, tmp), "sd", truth, list(range(frames)), grid, client=client)
        tune_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        agree = True
        for row, setting in zip(res.rows, grid):
            c = {**cfg, "populations": {"sd": {**pop, **setting}}}
            _run(c, tmp, client, overwrite=True)
            labels = _labels(tmp / "runs.zarr", "sd")
            for iou in IOUS:
                tp, n_pred, n_true = np.sum([match_counts(labels[t], truth[t], iou) for t in range(frames)], axis=0)
                agree &= abs(2 * tp / (n_pred + n_true) - row[f"f1@{iou}"]) < 1e-9
        runs_s = time.perf_counter() - t0
    return {"movie": {"frames": frames, "size": size}, "settings": len(grid), "tune_s": tune_s, "runs_s": runs_s,
            "ratio": runs_s / tune_s, "same_scores": bool(agree), "best": res.best()}


def show_tune_vs_runs(res: dict) -> None:
    mv = res["movie"]
    print(f"tune: {res['settings']} StarDist settings on {mv['frames']} frames of {mv['size']}x{mv['size']}, 2 workers; "
          f"scores equal to the runs': {res['same_scores']}")
    print(f"  popseg tune {res['tune_s']:.1f} s, {res['settings']} separate runs {res['runs_s']:.1f} s: "
          f"{res['ratio']:.1f}x")
