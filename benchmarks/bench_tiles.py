"""Tile sweep: the same movie untiled and with tiles of several sizes on 2 workers.

Wall time relative to untiled, the share of task time spent stitching (merge tasks), peak
memory per worker (a fresh cluster per variant), and a check that every tiled output is
bitwise equal to the untiled one.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr
from common import cluster, demo_movie, start_rss_sampler, worker_peak_rss_mb


def tiles(a) -> dict:
    from popseg_dask import load_config, run
    from popseg_dask.synthetic import DEMO_CONFIG

    frames, size, repeats = a.frames or 50, a.size or 2048, a.repeats or 1
    variants = ["none"] + [int(t) for t in a.tiles or (256, 512, 1024)]
    rows: dict[str, dict] = {str(v): {"wall_s": [], "peak_rss_mb": [], "stitch_share": [], "merged_regions": 0}
                             for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=2)
        ref = None
        for r in range(repeats):
            for v in variants:
                cfg = dict(DEMO_CONFIG)
                cfg["output"] = f"out-{v}.zarr"
                cfg["populations"] = {k: {**p, "tile": "none" if v == "none" else [v, v]}
                                      for k, p in DEMO_CONFIG["populations"].items()}
                (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
                with cluster(2) as client:
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
    return {"movie": {"frames": frames, "size": size, "channels": 2, "populations": 2},
            "repeats": repeats, "variants": rows}


def show_tiles(res: dict) -> None:
    mv = res["movie"]
    print(f"tiles: {mv['frames']} frames of {mv['size']}x{mv['size']}, 2 populations, 2 workers; "
          f"median of {res['repeats']}")
    print(f"{'tile':>6s} {'wall s':>8s} {'vs untiled':>10s} {'stitch %':>9s} {'peak MB/worker':>15s} "
          f"{'merged':>7s} {'== untiled':>10s}")
    for v, row in res["variants"].items():
        print(f"{v:>6s} {row['median_wall_s']:8.1f} {row['wall_vs_untiled']:10.2f} "
              f"{100 * row['median_stitch_share']:9.2f} {row['median_peak_rss_mb']:15.0f} "
              f"{row['merged_regions']:7d} {row.get('equal_to_untiled', '-')!s:>10s}")
