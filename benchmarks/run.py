"""popseg's benchmark suite: each benchmark measures popseg against a baseline or a peer run side
by side in the same run (interleaved repeats, medians), prints a table, and writes
``benchmarks/results/NAME.json`` with the machine, the versions, every repeat and the ratios.

Usage::

    python benchmarks/run.py                     # core (also `make bench`)
    python benchmarks/run.py NAME [NAME ...] [--frames N] [--size PX] [--repeats R] [--tiles T ...]
    python benchmarks/run.py all                 # the whole suite, about 40 min on 2 cores
    python benchmarks/plots.py                   # PNG plots from the JSON, into benchmarks/plots/

Benchmarks (defaults in brackets; --frames/--size/--repeats override them):

  core                  popseg with 1 worker, 2 workers and 1 worker x 2 threads vs a plain serial
                        loop (read, segment, renumber, write) [24 frames of 1024², 3 repeats]
  malloc                popseg's workers vs workers with dask's default MALLOC_TRIM_THRESHOLD_
                        [24 frames of 1024², 3 repeats]
  perframe              the per-frame changes kept from profiling, each A/B in one process:
                        fill and distance transform vs scipy's, scratch LZ4 vs zstd [6 frames of 2048²]
  tiles                 tile sweep on 2 workers: time, stitching share, largest merge, memory,
                        equality to untiled [50 frames of 2048², --tiles 256 512 1024;
                        --movie dense: a real dense field, >= 2 000 touching nuclei per frame;
                        --staged: also each tile size with a frame's tiles in tasks of their own]
  tileoverhead          a frame's task untiled vs tiled (--tiles 512 1024), in one process, frame by
                        frame interleaved: what tiling itself costs [dense 2048², 7 repeats]
  memory                peak worker memory at 50, 100, 250 and --frames frames [500 of 512²]
  celldetective         vs Celldetective 1.6.5's own threshold loop, in its own venv
                        (--celldetective-python, or created in benchmarks/.venv-celldetective)
                        [6 frames of 2048², 2 repeats]
  command               the whole `popseg run` command (start-up included, 2 workers) vs
                        Celldetective's loop in 2 processes; one population filtered by std;
                        time from the command to the first task; --before SRC also runs an
                        earlier checkout's src/ interleaved [24 frames of 2048², 2 repeats]
  daskimage             vs dask-image's ndmeasure.label on the same mask [6 frames of 2048²]
  models                StarDist and Cellpose through popseg vs the bare framework loop
                        [8 frames of 512², 2 repeats]
  gpu                   StarDist and Cellpose on their device: streamed batches vs one window at a
                        time vs the bare loop; frames/s, GPU busy (NVML) [GPU: 64 frames of 1024²;
                        CPU or --device cpu: 8 of 512²; 2 repeats]
  cellpose-distributed  vs cellpose's distributed_eval, same model, tiles of --tiles[0]
                        [4 frames of 1024², tiles of 512]
  screen                10^5 frames of 32² in one run: throughput and client memory
  storage               input and output on S3 (moto's server, own process, loopback) vs local disk,
                        2 workers [24 frames of 1024², 2 repeats]
  stores                zarr's FsspecStore (s3fs) vs ObjectStore (obstore) on that server, frames
                        written and read one at a time [48 frames of 1024², 3 repeats]
  objects               stored objects per frame and population: labels, ledger, scratch
                        [1000 frames of 32²; --frames 100000 for a screen]
  cache                 a post-processing change re-run from cached network outputs vs a full
                        recompute, StarDist and Cellpose [4 frames of 1024², 2 repeats]
  one-of-two            a re-run after changing one of two populations vs --overwrite
                        [16 frames of 512², 3 repeats]
  tune                  popseg tune over 20 StarDist settings vs 20 separate runs [4 frames of 512²]
  napari                the napari tuner: a setting edited -> preview updated, vs the same preview
                        computed directly; --screenshots writes docs/napari-*.png [2 frames of 2048²,
                        10 edits; needs a display: xvfb-run -a python benchmarks/run.py napari]
  region                the tuner's preview of a frame too big to preview whole: the whole frame vs
                        a 1024² visible region after an edit and after a pan [one 8192² frame,
                        3 repeats]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import bench_core
import bench_gpu
import bench_incremental
import bench_models
import bench_napari
import bench_peers
import bench_storage
import bench_tiles
from common import machine

# name -> (measure, print); "all" runs them in this order
SUITE = {
    "core": (bench_core.core, bench_core.show_core),
    "malloc": (bench_core.malloc, bench_core.show_malloc),
    "perframe": (bench_core.perframe, bench_core.show_perframe),
    "tiles": (bench_tiles.tiles, bench_tiles.show_tiles),
    "tileoverhead": (bench_tiles.tile_overhead, bench_tiles.show_tile_overhead),
    "memory": (bench_core.memory, bench_core.show_memory),
    "celldetective": (bench_peers.celldetective, bench_peers.show_celldetective),
    "command": (bench_peers.command, bench_peers.show_command),
    "daskimage": (bench_peers.daskimage, bench_peers.show_daskimage),
    "models": (bench_models.models, bench_models.show_models),
    "gpu": (bench_gpu.gpu, bench_gpu.show_gpu),
    "cellpose-distributed": (bench_models.cellpose_distributed, bench_models.show_cellpose_distributed),
    "screen": (bench_core.screen, bench_core.show_screen),
    "storage": (bench_storage.storage, bench_storage.show_storage),
    "objects": (bench_storage.objects, bench_storage.show_objects),
    "stores": (bench_storage.stores, bench_storage.show_stores),
    "cache": (bench_incremental.cache, bench_incremental.show_cache),
    "one-of-two": (bench_incremental.one_of_two, bench_incremental.show_one_of_two),
    "tune": (bench_incremental.tune_vs_runs, bench_incremental.show_tune_vs_runs),
    "napari": (bench_napari.napari_preview, bench_napari.show_napari_preview),
    "region": (bench_napari.region_preview, bench_napari.show_region_preview),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=["core"], metavar="NAME", help="benchmarks to run, or all")
    p.add_argument("--frames", type=int)
    p.add_argument("--size", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--tiles", type=int, nargs="+", default=None)
    p.add_argument("--staged", action="store_true",
                   help="tiles: also each tile size with a frame's tiles in tasks of their own (A/B)")
    p.add_argument("--movie", choices=["demo", "dense", "dense-drawn"], default="demo",
                   help="tiles: the demo's sparse co-culture, or a dense field of nuclei (popseg_dask.dense)")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto", help="gpu: run on the CPU even where a GPU is")
    p.add_argument("--screenshots", action="store_true", help="napari: write the README's screenshots to docs/")
    p.add_argument("--before", metavar="SRC", help="command: also run the popseg of an earlier checkout's src/ "
                   "(on PYTHONPATH), interleaved, as the baseline of a change")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="folder for the JSON")
    p.add_argument("--celldetective-python", help="python of a venv with celldetective==1.6.5 "
                   "(default: benchmarks/.venv-celldetective, created on first use)")
    a = p.parse_args(argv)
    names = list(SUITE) if a.names == ["all"] else a.names
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; available: {', '.join(SUITE)} or all")
    a.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        measure, show = SUITE[name]
        res = {"benchmark": name, "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None
                                                                                  else argv),
               **measure(a), "machine": machine()}
        show(res)
        path = a.out / f"{name}.json"
        path.write_text(json.dumps(res, indent=2))
        print(f"written {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
