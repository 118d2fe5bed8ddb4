"""Deep-learning segmenters: popseg against the bare framework loop and against cellpose's own
distributed segmentation.

``models``: StarDist and Cellpose models (trained here by ``popseg train`` on a synthetic movie,
cached in ``benchmarks/.models``) run (a) by a bare loop over frames in one process, the
framework's own call on each normalised frame (the least any tool must do), with the same number
of threads as (b) ``popseg run`` with 1 and 2 workers. Printed as frames/s and the ratio popseg /
bare loop (goal: >= 0.9). Model loading is excluded on both sides (warm-up run).

``cellpose-distributed``: the same Cellpose model through popseg (tiled) and through
``cellpose.contrib.distributed_segmentation.distributed_eval`` on the same cluster; see
:func:`cellpose_distributed`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
import zarr
from common import (
    MODELS_DIR,
    clusters,
    demo_movie,
    medians,
    merged,
    popseg_run,
    print_rows,
)


def trained_models(python: str) -> dict[str, Path]:
    """A tiny StarDist and a Cellpose model trained by ``popseg train`` (once; kept in .models)."""
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
    run = lambda *a: subprocess.run([*popseg, *a], check=True, cwd=MODELS_DIR)
    run("run", "threshold.yaml", "--quiet", "--overwrite")
    for pop, kind, extra in (("targets", "stardist", ["--size", "tiny", "--epochs", "20", "--steps", "20"]),
                             ("effectors", "cellpose", ["--epochs", "100", "--patch", "128"])):
        run("export-training", "threshold.zarr", "--population", pop, "--out", f"ds-{pop}", "--overwrite")
        run("train", kind, f"ds-{pop}", "--out", str(want[kind]), "--overwrite", *extra)
    return want


# the bare model loop; argv: kind model_dir movie channel out [cpu|gpu]
BARE_LOOP = r"""
import json, sys, time
import numpy as np, zarr
from popseg_dask.normalize import ChannelScaling, apply_scaling, scaling_from_pixels
from popseg_dask.stitch import canonical_relabel
kind, model_dir, movie, channel, out = sys.argv[1:6]
gpu = sys.argv[6:7] == ["gpu"]
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
    model = models.CellposeModel(gpu=gpu, pretrained_model=model_dir + "/" + model_dir.rstrip("/").split("/")[-1])
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


def bare_loop(python: str, kind: str, model: Path, movie: Path, channel: int, out: Path, threads: int | None = None,
              device: str | None = None) -> float:
    """Seconds of :data:`BARE_LOOP` over the movie in a process of its own: ``threads`` caps the
    frameworks' threads (None: their defaults); ``device`` "cpu" hides the GPUs, "gpu" uses one."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    prefix = ""
    if threads is not None:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1"})
        prefix = f"import torch; torch.set_num_threads({threads})\n" if kind == "cellpose" else ""
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    args = [kind, str(model), str(movie), str(channel), str(out)] + ([device] if device else [])
    res = subprocess.run([python, "-c", prefix + BARE_LOOP, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["seconds"]


def models(a) -> dict:
    from popseg_dask.metrics import f1_score

    frames, size, repeats = a.frames or 8, a.size or 512, a.repeats or 2
    python = sys.executable
    models = trained_models(python)
    out: dict = {"movie": {"frames": frames, "size": size}, "repeats": repeats, "kinds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=5)
        with clusters(1, 2) as clients:
            for kind, channel, truth in (("stardist", 0, "targets"), ("cellpose", 1, "effectors")):
                cfg = {"input": "movie.ome.zarr", "output": f"{kind}.zarr",
                       "populations": {kind: {"segmenter": kind, "model": str(models[kind]), "tile": "none"}}}
                (tmp / f"{kind}.yaml").write_text(yaml.safe_dump(cfg))
                for c in clients.values():
                    popseg_run(tmp / f"{kind}.yaml", c)  # warm-up: each worker loads the model once
                times: dict[str, list[float]] = {k: [] for k in ("bare loop, 1 thread", "popseg 1 worker",
                                                                 "bare loop, 2 threads", "popseg 2 workers")}
                for _ in range(repeats):
                    times["bare loop, 1 thread"].append(
                        bare_loop(python, kind, models[kind], tmp / "movie.ome.zarr", channel, tmp / "bare", 1))
                    times["popseg 1 worker"].append(popseg_run(tmp / f"{kind}.yaml", clients[1])[0])
                    times["bare loop, 2 threads"].append(
                        bare_loop(python, kind, models[kind], tmp / "movie.ome.zarr", channel, tmp / "bare", 2))
                    times["popseg 2 workers"].append(popseg_run(tmp / f"{kind}.yaml", clients[2])[0])
                med = medians(times)
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
    return out


def show_models(res: dict) -> None:
    mv = res["movie"]
    print(f"models: {mv['frames']} frames of {mv['size']}x{mv['size']}, untiled; median of {res['repeats']}")
    for kind, r in res["kinds"].items():
        print(f"  {kind}: " + ", ".join(f"{k} {v:.2f} frames/s" for k, v in r["frames_per_s"].items()))
        print_rows(r["ratios"], "{:5.2f}", indent="    ")
        print(f"    F1 vs truth: popseg {r['f1_vs_truth']['popseg']:.3f}, bare loop {r['f1_vs_truth']['bare loop']:.3f}")


CP_VENV = MODELS_DIR.parent / ".venv-cellpose"

# cellpose 3.1's distributed_segmentation is written for zarr 2 (zarr.open(path, 'w', ...)), and
# popseg uses zarr 3: the peer runs in its own venv, as its users would have it, on its own
# LocalCluster of the same shape as popseg's (2 worker processes x 1 thread, dask's defaults).
_CPD_LOOP = r"""
import contextlib, io, json, os, sys, time
import numpy as np, zarr
from distributed import Client, LocalCluster
from cellpose.contrib.distributed_segmentation import distributed_eval
folder, n, tile, weights, diameter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
eval_kwargs = {"diameter": diameter, "channels": None, "normalize": False, "do_3D": False, "z_axis": 0}
class Cluster:  # distributed_eval uses only the .client of the cluster it is given
    pass
def restore_plane_axis():
    # cellpose 3.1's eval squeezes the singleton plane axis of a (1, y, x) block, and
    # process_block then fails writing a 2D result into a 3D crop: the least change that lets
    # distributed_eval run on 2D frames is to give that axis back
    import cellpose.contrib.distributed_segmentation as ds
    if getattr(ds.read_preprocess_and_segment, "popseg_bench", False):
        return
    original = ds.read_preprocess_and_segment
    def segment(input_zarr, crop, *args, **kwargs):
        return original(input_zarr, crop, *args, **kwargs).reshape([s.stop - s.start for s in crop])
    segment.popseg_bench = True
    ds.read_preprocess_and_segment = segment
def frame(cluster, t):
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per block
        seg, _ = distributed_eval(input_zarr=zarr.open(f"{folder}/frame{t}.zarr", mode="r"), blocksize=(1, tile, tile),
                                  write_path=f"{folder}/cpd{t}.zarr", model_kwargs={"gpu": False, "pretrained_model": weights},
                                  eval_kwargs=dict(eval_kwargs), cluster=cluster, temporary_directory=folder)
    return seg
if __name__ == "__main__":
    os.chdir(folder)  # it writes worker logs into the working folder
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, Client(lc) as c:
        cluster = Cluster()
        cluster.client = c
        c.run(restore_plane_axis)
        frame(cluster, 0)  # warm-up: the workers import torch and cellpose once
        t0 = time.perf_counter()
        for t in range(n):
            frame(cluster, t)
        print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _cellpose_python() -> str:
    """cellpose 3.1.1.3 with zarr 2 in its own venv (created here once)."""
    py = CP_VENV / "bin" / "python"
    if not py.exists():
        print(f"installing cellpose 3.1.1.3 with zarr 2 into {CP_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CP_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "torch==2.13.0", "cellpose==3.1.1.3", "zarr<3",
                        "dask", "distributed", "dask-image", "dask-jobqueue", "imagecodecs", "tifffile"], check=True)
    return str(py)


def _normalised_frames(movie: Path, channel: int, out: Path, chunk: int) -> list[np.ndarray]:
    """Each frame of one channel, scaled as popseg scales it (whole-frame percentiles from the
    model's config_input.json), saved as its own (1, Y, X) float32 Zarr 2 array, the peer's input."""
    from popseg_dask.normalize import ChannelScaling, apply_scaling, scaling_from_pixels

    arr = zarr.open_array(str(movie / "0"), mode="r")
    s = [ChannelScaling()]
    frames = []
    for t in range(arr.shape[0]):
        x = arr[t, channel][None].astype(np.float32)
        x = apply_scaling(x, scaling_from_pixels(x, s), s)
        z = zarr.create_array(str(out / f"frame{t}.zarr"), shape=x.shape, chunks=(1, chunk, chunk),
                              dtype=np.float32, zarr_format=2, overwrite=True)
        z[...] = x
        frames.append(x[0])
    return frames


def cellpose_distributed(a) -> dict:
    """popseg's Cellpose segmenter against cellpose's own ``distributed_eval``, same model, same movie.

    Both on 2 worker processes of 1 thread. distributed_eval is made for 3D volumes: a 2D movie
    goes to it one frame at a time, as a (1, Y, X) array in blocks of ``(1, tile, tile)``, which
    is how a user would call it (a (t, y, x) array would put its overlap on the time axis and
    merge objects across frames). Its input is the frame already scaled as popseg scales it
    (whole-frame percentiles), with ``normalize=False``, so that both see the same pixels; that
    scaling is outside its clock.
    popseg runs three ways: the same tiles with its default halo (the network's receptive field
    plus one object), the same tiles with distributed_eval's context (halo = its overlap), and
    untiled, which is what ``tile: auto`` picks for these frames.
    Over-merges and over-splits are counted against each tool's own untiled result:
    ``CellposeModel.eval`` on the whole frame for distributed_eval, popseg with ``tile: none``
    for popseg (a network's tiled output is not bitwise its untiled one; see README, Tiles).
    """
    from cellpose import models as cp_models

    from popseg_dask.metrics import f1_score

    frames, size, repeats, tile = a.frames or 4, a.size or 1024, a.repeats or 1, (a.tiles or [512])[0]
    py = _cellpose_python()
    model_dir = trained_models(sys.executable)["cellpose"]
    weights = str(model_dir / model_dir.name)
    # distributed_eval's overlap is 2 x diameter and must be a whole number of pixels
    diameter = round(json.loads((model_dir / "config_input.json").read_text())["diameter"])
    out: dict = {"movie": {"frames": frames, "size": size}, "tile": tile, "repeats": repeats, "diameter": diameter}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp, clusters(2) as clients:
        tmp = Path(tmp)
        client = clients[2]
        m = demo_movie(tmp, frames, size, seed=7)
        inputs = _normalised_frames(tmp / "movie.ome.zarr", 1, tmp, tile)
        pop = {"segmenter": "cellpose", "model": str(model_dir), "diameter": diameter}
        overlap = 2 * diameter
        variants = {  # name -> (tile, halo); halo None: popseg's default (receptive field + one object)
            f"popseg, tiles of {tile}, default halo": ([tile, tile], None),
            f"popseg, tiles of {tile}, halo {overlap} (distributed_eval's overlap)": ([tile, tile], overlap),
            "popseg, untiled (its default for these frames)": ("none", None),
        }
        for i, (name, (t, halo)) in enumerate(variants.items()):
            spec = {**pop, "tile": t, **({"halo": halo} if halo else {})}
            cfg = {"input": "movie.ome.zarr", "output": f"v{i}.zarr", "populations": {"effectors": spec}}
            (tmp / f"v{i}.yaml").write_text(yaml.safe_dump(cfg))
        popseg_run(tmp / "v0.yaml", client)  # warm-up: each worker loads the model once
        times: dict[str, list[float]] = {"cellpose distributed_eval": [], **{k: [] for k in variants}}
        for _ in range(repeats):
            res = subprocess.run([py, "-c", _CPD_LOOP, str(tmp), str(frames), str(tile), weights, str(diameter)],
                                 capture_output=True, text=True, env=env, check=False)
            if res.returncode:
                raise RuntimeError(f"distributed_eval failed:\n{res.stderr[-3000:]}")
            times["cellpose distributed_eval"].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
            for i, name in enumerate(variants):
                times[name].append(popseg_run(tmp / f"v{i}.yaml", client)[0])
        labels = {"distributed_eval": np.stack([zarr.open_array(str(tmp / f"cpd{t}.zarr"), mode="r")[0]
                                                for t in range(frames)])}
        model = cp_models.CellposeModel(gpu=False, pretrained_model=weights)
        labels["CellposeModel.eval, whole frames"] = np.stack(
            [model.eval(x, channels=None, normalize=False, diameter=diameter)[0] for x in inputs])
        for i, name in enumerate(variants):
            labels[name] = zarr.open_array(str(tmp / f"v{i}.zarr" / "labels" / "effectors" / "0"), mode="r")[...]
        truth = m.truth["effectors"]

    def count(lab):
        return int(sum(len(np.unique(f)) - 1 for f in lab))

    def against_untiled(tiled, whole):
        merges = [merged(tiled[t], whole[t]) for t in range(frames)]
        splits = [merged(whole[t], tiled[t]) for t in range(frames)]
        return {"over-merges (labels holding >= 2 untiled objects)": sum(x for x, _ in merges),
                "untiled objects swallowed by them": sum(y for _, y in merges),
                "over-splits (untiled objects cut into >= 2 labels)": sum(x for x, _ in splits),
                "F1 vs untiled at IoU 0.9": f1_score(tiled, whole, iou=0.9)}

    med = medians(times)
    names = list(variants)
    peer_s = med["cellpose distributed_eval"]
    out.update({
        "seconds": times, "median_s": med,
        "objects": {"truth": count(truth), **{k: count(v) for k, v in labels.items()}},
        "vs_own_untiled": {"distributed_eval": against_untiled(labels["distributed_eval"],
                                                               labels["CellposeModel.eval, whole frames"]),
                           **{k: against_untiled(labels[k], labels[names[-1]]) for k in names[:-1]}},
        "f1_vs_truth": {k: f1_score(v, truth) for k, v in labels.items()},
        "ratios": {f"speed-up {k} vs distributed_eval": peer_s / med[k] for k in names},
    })
    return out


def show_cellpose_distributed(res: dict) -> None:
    mv = res["movie"]
    print(f"cellpose-distributed: {mv['frames']} frames of {mv['size']}², tiles of {res['tile']}, 2 workers; "
          f"median of {res['repeats']}")
    print_rows(res["median_s"], "{:8.2f} s")
    print_rows(res["ratios"], "{:6.2f}")
    print(f"  objects: {res['objects']}")
    for k, v in res["vs_own_untiled"].items():
        print(f"  {k} against its own untiled result: " + ", ".join(f"{a} {b:.3g}" for a, b in v.items()))
    print("  F1 vs truth: " + ", ".join(f"{k} {v:.3f}" for k, v in res["f1_vs_truth"].items()))
