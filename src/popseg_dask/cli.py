"""The ``popseg`` command line.

User mistakes (:class:`~popseg_dask.errors.PopsegError`) print one line,
``popseg: error: ...``, and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import PopsegError

__all__ = ["main"]


def _cmd_run(args) -> int:
    from .config import load_config
    from .pipeline import run

    config = load_config(args.config)
    record = run(
        config, scheduler=args.scheduler, n_workers=args.workers, in_place=args.in_place,
        overwrite=args.overwrite, progress=not args.quiet, echo=print,
    )
    _print_summary(record, args.config)
    return 0


def _print_summary(record: dict, where) -> None:
    t = record["timings"]
    print(f"done in {t['total_s']:.1f} s (segment {t['segment_s']:.1f} s, numbering {t['number_s']:.1f} s) "
          f"on {record['n_workers']} worker(s)")
    for name, pop in record["populations"].items():
        print(f"  {name}: {pop['n_objects']} objects in {len(pop['objects_per_frame'])} frames")


def _cmd_demo(args) -> int:
    from .config import load_config
    from .metrics import f1_score
    from .pipeline import run
    from .synthetic import write_demo

    import zarr

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise PopsegError(f"demo folder {out} is not empty; pass --overwrite or choose another --out")
        import shutil

        for name in ("movie.ome.zarr", "movie.popseg.zarr", "demo.yaml"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    t0 = time.perf_counter()
    movie_path, cfg_path, movie = write_demo(out, n_frames=args.frames, size=args.size, seed=args.seed,
                                             n_targets=args.targets, n_effectors=args.effectors)
    print(f"synthetic movie: {movie_path} ({movie.image.shape[0]} frames, {movie.image.shape[2]}x"
          f"{movie.image.shape[3]}, channels {list(movie.channels)}), config: {cfg_path}")
    config = load_config(cfg_path)
    record = run(config, n_workers=args.workers, overwrite=True, progress=not args.quiet, echo=print)
    wall = time.perf_counter() - t0
    output = config.resolve(config.output)
    print(f"\nresults (F1 at IoU 0.5 against the ground truth), demo wall time {wall:.1f} s:")
    worst = 1.0
    for name, pop in record["populations"].items():
        pred = zarr.open_array(str(output / "labels" / name / "0"), mode="r")[...]
        f1 = f1_score(pred, movie.truth[name], iou=0.5)
        worst = min(worst, f1)
        true_n = sum(len(set(movie.truth[name][t].ravel()) - {0}) for t in range(len(pred)))
        print(f"  {name:10s} {pop['n_objects']:5d} objects (truth {true_n}), F1 = {f1:.3f}")
    print(f"\nlabels: {output}/labels/<population>   (inspect with: popseg inspect {output})")
    return 0 if worst >= args.min_f1 else 1


def _cmd_inspect(args) -> int:
    from .io.movie import describe

    info = describe(args.path, channels=args.channels.split(",") if args.channels else None, dims=args.dims)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for k in ("path", "format", "dims", "shape", "channels", "chunks", "dtype", "pixel_size_um"):
        if k in info:
            print(f"{k:14s} {info[k]}")
    if "run" in info:
        run = info["run"]
        state = "complete" if run.get("complete") else "INCOMPLETE (interrupted or still running)"
        print(f"{'popseg run':14s} {state}, input {run.get('input')}, finished {run.get('finished') or '-'}")
    labels = info.get("labels")
    if labels:
        print("labels:")
        for name, lab in labels.items():
            state = "complete" if lab.get("complete") else "incomplete" if lab.get("complete") is False else "-"
            n = lab.get("n_objects")
            print(f"  {name:20s} shape {lab['shape']} {lab['dtype']} chunks {lab['chunks']} "
                  f"{state}{f', {n} objects' if n is not None else ''}")
    elif "labels" in info:
        print("labels:        none")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="popseg", description="Population-specific segmentation of microscopy movies on Dask.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="segment every population of a movie")
    r.add_argument("config", help="YAML configuration")
    r.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    r.add_argument("--workers", type=int, help="workers of the embedded LocalCluster (default: one per core)")
    r.add_argument("--in-place", action="store_true", help="write labels inside the input OME-Zarr")
    r.add_argument("--overwrite", action="store_true", help="replace existing output")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    d = sub.add_parser("demo", help="segment a synthetic two-population movie and score it")
    d.add_argument("--out", default="demo-output", help="folder for the movie, config and labels")
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--size", type=int, default=512)
    d.add_argument("--targets", type=int, default=60)
    d.add_argument("--effectors", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int)
    d.add_argument("--min-f1", type=float, default=0.9, help="exit 1 if a population scores below this")
    d.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("inspect", help="dims, channels, chunks, dtype and labels of a movie or output")
    i.add_argument("path")
    i.add_argument("--channels", help="comma-separated channel names, for files without names")
    i.add_argument("--dims", help="axis letters of a plain Zarr array or TIFF, e.g. tcyx")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``popseg`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PopsegError as err:
        if args.debug:
            raise
        print(f"popseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("popseg: interrupted; nothing is marked complete (re-run to start again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
