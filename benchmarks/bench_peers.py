"""popseg against peers: Celldetective's own threshold loop, and dask-image's connected components.

``celldetective``: the threshold pipeline against Celldetective 1.6.5's own
``segment_frame_from_thresholds`` loop (run in its own venv, called as a subprocess), same
configs, same 2048² frames: speed-up and whether the masks are identical.

``daskimage``: the nuclei population as popseg segments it (threshold, watershed, queries) vs
dask-image's ``ndmeasure.label`` on the same smoothed, thresholded mask: seconds side by side and
how many objects the connected components merge (against popseg's labels and the ground truth).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr
from popseg_dask.synthetic import DEMO_CONFIG

from common import (
    HERE,
    cluster,
    clusters,
    demo_movie,
    medians,
    merged,
    popseg_run,
    print_rows,
)

CD_VENV = HERE / ".venv-celldetective"
# The demo's effectors found by their texture instead of their brightness: Celldetective's
# local standard deviation (its users' filter for bright-field and phase contrast), then a blur;
# threshold 30 gives F1 1.0 on the demo's effectors with fill_holes and the area query.
STD_EFFECTORS = {**DEMO_CONFIG["populations"]["effectors"], "filters": [["std", 4], ["gauss", 2]],
                 "thresholds": [30, float("inf")]}

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


def _same_configs(channels: list[str], populations: dict) -> tuple[dict, dict]:
    """Celldetective's keyword arguments per population and popseg's run config, the same pipeline."""
    cd_cfg, pops = {}, {}
    for pop, spec in populations.items():
        cd_cfg[pop] = {"target_channel": channels.index(spec["channel"]), "thresholds": spec["thresholds"],
                       "filters": spec["filters"], "marker_min_distance": spec["marker_min_distance"],
                       "marker_footprint_size": spec["marker_footprint_size"],
                       "feature_queries": spec["feature_queries"], "do_watershed": spec["do_watershed"],
                       "fill_holes": spec["fill_holes"]}
        # Celldetective's global watershed tie-break, for identical masks (see README, Compatibility)
        pops[pop] = {**spec, "watershed_ties": "celldetective"}
    return cd_cfg, {**DEMO_CONFIG, "populations": pops}


def _identical_masks(output: Path, cd_outputs: list[Path], populations: dict) -> dict[str, bool]:
    """Per population: Celldetective's masks (its frames in order over ``cd_outputs``) equal
    popseg's, compared after renumbering both in raster order."""
    from popseg_dask.stitch import canonical_relabel

    identical = {}
    for pop in populations:
        ours = zarr.open_array(str(output / "labels" / pop / "0"), mode="r")[...]
        theirs = []
        for path in cd_outputs:
            with np.load(path) as cd:
                theirs.extend(cd[pop])
        identical[pop] = len(theirs) == len(ours) and all(
            np.array_equal(canonical_relabel(c)[0], canonical_relabel(o)[0]) for c, o in zip(theirs, ours))
    return identical


def celldetective(a) -> dict:
    """popseg's threshold pipeline vs Celldetective's own segment_frame_from_thresholds, same configs."""
    import subprocess

    frames, size, repeats = a.frames or 6, a.size or 2048, a.repeats or 2
    py = _celldetective_python(a.celldetective_python)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=2)
        np.save(tmp / "frames.npy", np.moveaxis(m.image, 1, -1))
        cd_cfg, cfg = _same_configs(list(m.channels), DEMO_CONFIG["populations"])
        (tmp / "cd.json").write_text(json.dumps(cd_cfg))
        pops = cfg["populations"]
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        env = _child_env()
        times: dict[str, list[float]] = {"celldetective (its loop, 1 core)": [], "popseg 1 worker": [],
                                         "popseg 2 workers": []}
        with clusters(1, 2) as clients:
            for c in clients.values():
                popseg_run(tmp / "run.yaml", c)  # warm-up
            for _ in range(repeats):
                res = subprocess.run([py, "-c", _CD_LOOP, str(tmp / "frames.npy"), str(tmp / "cd.json"),
                                      str(tmp / "cd.npz")], capture_output=True, text=True, env=env, check=True)
                times["celldetective (its loop, 1 core)"].append(json.loads(res.stdout.strip().splitlines()[-1])["seconds"])
                times["popseg 1 worker"].append(popseg_run(tmp / "run.yaml", clients[1])[0])
                times["popseg 2 workers"].append(popseg_run(tmp / "run.yaml", clients[2])[0])
        identical = _identical_masks(tmp / "movie.popseg.zarr", [tmp / "cd.npz"], pops)
    med = medians(times)
    cd_s = med["celldetective (its loop, 1 core)"]
    return {"movie": {"frames": frames, "size": size}, "repeats": repeats,
            "seconds": times, "median_s": med, "identical_masks": identical,
            "ratios": {"speed-up popseg 2 workers vs celldetective": cd_s / med["popseg 2 workers"],
                       "speed-up popseg 1 worker vs celldetective (same core)": cd_s / med["popseg 1 worker"]}}


FIRST_TASK_PRELOAD = HERE / "first_task_preload.py"


def _child_env() -> dict:
    """The environment of the timed processes: one BLAS thread each, Qt off screen, and Python
    free to write bytecode. A pip-installed package has its bytecode compiled; where the machine
    sets ``PYTHONDONTWRITEBYTECODE`` (the VM these figures come from does), every process would
    otherwise compile popseg's modules from source, ≈ 0.1 s of the command's start-up that no
    installed copy pays. The warm-up run writes the bytecode of the checkout(s) timed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"}


def _cd_two_processes(py: str, halves: list[Path], cd_json: Path, env: dict) -> tuple[float, float]:
    """Celldetective's loop in two processes started together, each on half of the frames:
    (seconds of the slower loop, wall seconds from start to both exited, imports included)."""
    import subprocess

    t0 = time.perf_counter()
    procs = [subprocess.Popen([py, "-c", _CD_LOOP, str(h), str(cd_json), str(h.with_suffix(".npz"))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for h in halves]
    loops = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"celldetective's loop failed: {err[-2000:]}")
        loops.append(json.loads(out.strip().splitlines()[-1])["seconds"])
    return max(loops), time.perf_counter() - t0


def _popseg_command(cfg_path: Path, workers: int, env: dict) -> tuple[float, float]:
    """``popseg run`` as a user types it: (wall seconds, seconds from the command to the
    scheduler sending the first task), the second written by :data:`FIRST_TASK_PRELOAD`."""
    import subprocess

    stamp = cfg_path.parent / "first_task.json"
    stamp.unlink(missing_ok=True)
    popseg = str(Path(sys.executable).parent / "popseg")
    env = {**env, "DASK_DISTRIBUTED__SCHEDULER__PRELOAD": json.dumps([str(FIRST_TASK_PRELOAD)]),
           "POPSEG_BENCH_FIRST_TASK": str(stamp)}
    t0 = time.time()
    subprocess.run([popseg, "run", str(cfg_path), "--workers", str(workers), "--overwrite", "--quiet"],
                   env=env, check=True, capture_output=True)
    wall = time.time() - t0
    return wall, json.loads(stamp.read_text())["sent"] - t0


def command(a) -> dict:
    """Issue 14, goal 2: the whole ``popseg run`` command (start-up included, 2 workers) against
    Celldetective's own loop in 2 processes on the same 2 cores; one population uses ``std``."""
    frames, size, repeats = a.frames or 24, a.size or 2048, a.repeats or 2
    py = _celldetective_python(a.celldetective_python)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=2)
        stack = np.moveaxis(m.image, 1, -1)
        halves = [tmp / "frames0.npy", tmp / "frames1.npy"]
        np.save(halves[0], stack[: frames // 2])
        np.save(halves[1], stack[frames // 2:])
        populations = {"targets": DEMO_CONFIG["populations"]["targets"], "effectors": STD_EFFECTORS}
        cd_cfg, cfg = _same_configs(list(m.channels), populations)
        (tmp / "cd.json").write_text(json.dumps(cd_cfg))
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        env = _child_env()
        cd_key, cd_wall_key = "celldetective, 2 processes (slower loop)", "celldetective, 2 processes (wall, imports included)"
        ours_key, before_key = "popseg run (the command), 2 workers", "popseg run, the code of --before"
        times: dict[str, list[float]] = {cd_key: [], cd_wall_key: [], ours_key: []}
        first: dict[str, list[float]] = {ours_key: []}
        # --before SRC: an earlier checkout's src/ run the same way, interleaved (the A/B of a change)
        envs = {ours_key: env} if not a.before else {ours_key: env, before_key: {
            **env, "PYTHONPATH": os.pathsep.join([str(Path(a.before).resolve()), env.get("PYTHONPATH", "")])}}
        for key in envs:
            times.setdefault(key, []), first.setdefault(key, [])
            _popseg_command(tmp / "run.yaml", 2, envs[key])  # warm-up: the OS's file cache, as for the loops
        for _ in range(repeats):
            loop, wall = _cd_two_processes(py, halves, tmp / "cd.json", env)
            times[cd_key].append(loop)
            times[cd_wall_key].append(wall)
            for key, e in envs.items():
                wall, to_first = _popseg_command(tmp / "run.yaml", 2, e)
                times[key].append(wall)
                first[key].append(to_first)
        identical = _identical_masks(tmp / "movie.popseg.zarr", [h.with_suffix(".npz") for h in halves],
                                     cfg["populations"])
    med = medians(times)
    ours = med[ours_key]
    ratios = {"speed-up of the command vs celldetective's loops": med[cd_key] / ours,
              "speed-up vs celldetective's processes, imports included": med[cd_wall_key] / ours}
    if before_key in med:
        ratios["speed-up of --before's command vs celldetective's loops"] = med[cd_key] / med[before_key]
        ratios["this code vs --before (time)"] = ours / med[before_key]
    return {"movie": {"frames": frames, "size": size}, "repeats": repeats, "populations": cfg["populations"],
            "before": a.before, "seconds": times, "median_s": med, "identical_masks": identical,
            "command_to_first_task_s": first, "ratios": ratios}


def show_command(res: dict) -> None:
    print(f"command: {res['movie']['frames']} frames of {res['movie']['size']}², 2 populations (one with std); "
          f"median of {res['repeats']}; identical masks: {res['identical_masks']}")
    print_rows(res["median_s"], "{:8.2f} s")
    firsts = res["command_to_first_task_s"]
    for key, values in (firsts.items() if isinstance(firsts, dict) else [("popseg", firsts)]):
        print(f"  command to first task ({key}): {', '.join(f'{s:.2f}' for s in values)} s")
    print_rows(res["ratios"], "{:5.2f}")


def daskimage(a) -> dict:
    """Instance labels from popseg vs connected components from dask-image's ndmeasure.label on the
    same thresholded mask: throughput side by side, and how many objects the components merge."""
    import dask.array as da
    from dask_image import ndfilters, ndmeasure

    frames, size = a.frames or 6, a.size or 2048
    spec = DEMO_CONFIG["populations"]["targets"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        m = demo_movie(tmp, frames, size, seed=4)
        cfg = {**DEMO_CONFIG, "populations": {"targets": spec}}
        (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
        with cluster(2) as client:
            popseg_run(tmp / "run.yaml", client)  # warm-up
            ours_s = popseg_run(tmp / "run.yaml", client)[0]
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
        merges_ours = [merged(lab[t], ours[t]) for t in range(frames)]
        merges_truth = [merged(lab[t], truth[t]) for t in range(frames)]
        ours_vs_truth = [merged(ours[t], truth[t]) for t in range(frames)]
        return {
            "movie": {"frames": frames, "size": size},
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


def show_celldetective(res: dict) -> None:
    print(f"celldetective: {res['movie']['frames']} frames of {res['movie']['size']}², 2 populations; "
          f"median of {res['repeats']}; identical masks: {res['identical_masks']}")
    print_rows(res["median_s"], "{:8.2f} s")
    print_rows(res["ratios"], "{:5.2f}")


def show_daskimage(res: dict) -> None:
    print(f"daskimage: {res['movie']['frames']} frames of {res['movie']['size']}²")
    for k, v in res.items():
        if k not in ("movie", "machine"):
            print(f"  {k}: {v}")
