"""Tile sweep: the same movie untiled and with tiles of several sizes on 2 workers.

Wall time relative to untiled, the share of task time spent stitching (merge tasks), peak
memory per worker (a fresh cluster per variant), and a check that every tiled output is
bitwise equal to the untiled one.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import yaml
import zarr
from common import cluster, demo_movie, start_rss_sampler, worker_peak_rss_mb


def _movie(tmp: Path, kind: str, frames: int, size: int) -> dict:
    """Write the benchmark's movie into ``tmp``; return its config."""
    if kind == "demo":
        from popseg_dask.synthetic import DEMO_CONFIG

        demo_movie(tmp, frames, size, seed=2)
        return DEMO_CONFIG
    from popseg_dask.dense import DENSE_CONFIG, dense_movie
    from popseg_dask.io.images import write_ome_zarr_image

    image = dense_movie(frames, size, seed=2, source="drawn" if kind == "dense-drawn" else "dsb2018")
    write_ome_zarr_image(tmp / DENSE_CONFIG["input"], image, ("nuclei",), pixel_size_um=DENSE_CONFIG["pixel_size_um"])
    return DENSE_CONFIG


def tiles(a) -> dict:
    from popseg_dask import load_config, run

    frames, size, repeats = a.frames or 50, a.size or 2048, a.repeats or 1
    kind = getattr(a, "movie", "demo")
    sizes = [int(t) for t in a.tiles or (256, 512, 1024)]
    # --staged: each tile size also with a frame's tiles in tasks of their own (as before frames
    # ran their tiles in one task), interleaved with the rest
    variants = ["none"] + sizes + ([f"{t}-staged" for t in sizes] if getattr(a, "staged", False) else [])
    rows: dict[str, dict] = {str(v): {"wall_s": [], "peak_rss_mb": [], "stitch_share": [], "merged_regions": 0}
                             for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_cfg = _movie(tmp, kind, frames, size)
        ref = None
        for r in range(repeats):
            for v in variants:
                cfg = dict(base_cfg)
                cfg["output"] = f"out-{v}.zarr"
                t = None if v == "none" else int(str(v).split("-")[0])
                cfg["populations"] = {k: {**p, "tile": "none" if t is None else [t, t]}
                                      for k, p in base_cfg["populations"].items()}
                (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
                staged = dask.config.set({"popseg.frame-task-pixels": 0}) if str(v).endswith("-staged") \
                    else contextlib.nullcontext()
                with cluster(2) as client, staged:
                    client.run(start_rss_sampler)
                    t0 = time.perf_counter()
                    rec = run(load_config(tmp / "run.yaml"), client=client, overwrite=True)
                    wall = time.perf_counter() - t0
                    rss = worker_peak_rss_mb(client)
                row = rows[str(v)]
                row["wall_s"].append(wall)
                row["peak_rss_mb"].append(rss)
                pops = rec["populations"].values()
                tile_s = sum(p["tile_task_s"] for p in pops)
                merge_s = sum(p["merge_task_s"] for p in pops)
                row["stitch_share"].append(merge_s / (tile_s + merge_s))
                row["numbering_share_of_wall"] = rec["timings"]["number_s"] / wall
                row["merged_regions"] = sum(p["merged_regions"] for p in pops)
                row["whole_frame_fallbacks"] = sum(p["whole_frame_fallbacks"] for p in pops)
                row["largest_merge_share"] = max(p.get("largest_merge_px", 0) for p in pops) / (size * size)
                row["objects"] = {k: p["n_objects"] for k, p in rec["populations"].items()}
                row["numbering"] = {k: p["numbering"] for k, p in rec["populations"].items()}
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
    return {"movie": {"kind": kind, "frames": frames, "size": size, "populations": len(base_cfg["populations"])},
            "repeats": repeats, "variants": rows}


def show_tiles(res: dict) -> None:
    mv = res["movie"]
    print(f"tiles: {mv.get('kind', 'demo')} movie, {mv['frames']} frames of {mv['size']}x{mv['size']}, "
          f"{mv['populations']} population(s), 2 workers; median of {res['repeats']}")
    print(f"{'tile':>6s} {'wall s':>8s} {'vs untiled':>10s} {'stitch %':>9s} {'peak MB/worker':>15s} "
          f"{'merged':>7s} {'fallbacks':>9s} {'largest merge':>13s} {'== untiled':>10s}")
    for v, row in res["variants"].items():
        print(f"{v:>6s} {row['median_wall_s']:8.1f} {row['wall_vs_untiled']:10.2f} "
              f"{100 * row['median_stitch_share']:9.2f} {row['median_peak_rss_mb']:15.0f} "
              f"{row['merged_regions']:7d} {row.get('whole_frame_fallbacks', 0):9d} "
              f"{100 * row.get('largest_merge_share', 0):12.1f}% {row.get('equal_to_untiled', '-')!s:>10s}")


def tile_overhead(a) -> dict:
    """What tiling costs a frame in one process, with nothing else around it: the task a run gives
    a frame that fits it (``segment_in_memory_task``: facts, tiles, merge, numbering), untiled and
    with each tile size, interleaved frame by frame; medians of wall and CPU seconds per frame."""
    import dask.array as da

    from popseg_dask._engine.direct import segment_in_memory_task
    from popseg_dask._engine.worker import FrameSource
    from popseg_dask.config import parse_config
    from popseg_dask.segmenters import build_segmenter
    from popseg_dask.tiling import tile_policy

    size, repeats = a.size or 2048, a.repeats or 7
    # one population of nuclei: the demo's co-culture has two, so --movie demo means the dense field
    kind = "dense" if getattr(a, "movie", "demo") == "demo" else a.movie
    sizes = [int(t) for t in a.tiles or (512, 1024)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(_movie(Path(tmp), kind, 6, size), tmp)
        image = zarr.open_array(str(Path(tmp) / cfg.input / "0"), mode="r")[...]
        (name, spec), = cfg.populations.items()
        seg = build_segmenter(name, spec, [spec.channel], base_dir=tmp, pixel_size_um=cfg.pixel_size_um)
    plans = {str(v): tile_policy(seg, (size, size), "none" if v == "none" else [v, v], spec.halo, memory_mb=4096,
                                 population=name) for v in ["none", *sizes]}
    frames = da.from_array(image, chunks=(1, 1, 1024, 1024))
    sources = [FrameSource(frames[t]) for t in range(len(image))]
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in plans}
    for r in range(repeats + 1):  # the first round warms caches and imports: dropped
        for v, (s, plan) in plans.items():
            t = r % len(sources)
            c0, t0 = time.process_time(), time.perf_counter()
            segment_in_memory_task(sources[t:t + 1], [t], None, s, next(iter(plan)), plan)
            if r:
                times[v].append((time.perf_counter() - t0, time.process_time() - c0))
    wall = {v: statistics.median(x[0] for x in xs) for v, xs in times.items()}
    return {"movie": {"kind": kind, "size": size}, "repeats": repeats,
            "wall_s": wall, "cpu_s": {v: statistics.median(x[1] for x in xs) for v, xs in times.items()},
            "vs_untiled": {v: w / wall["none"] for v, w in wall.items()}}


def show_tile_overhead(res: dict) -> None:
    print(f"tileoverhead: one {res['movie']['size']}² {res['movie']['kind']} frame per task, in one process; median of {res['repeats']}")
    for v, w in res["wall_s"].items():
        print(f"  {v:>5s}  {w:6.3f} s/frame  cpu {res['cpu_s'][v]:6.3f}  vs untiled {res['vs_untiled'][v]:5.2f}")
