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

    config = load_config(args.config)
    with _cluster_starting(args) as pending:
        from .pipeline import run
        from .screen import find_positions

        screen = find_positions(config)
        if screen is not None:
            return _run_screen(config, screen, args, pending)
        record = run(
            config, scheduler=args.scheduler, cluster=args.cluster, security=_security(args),
            n_workers=args.workers, gpu_workers=args.gpu_workers, in_place=args.in_place, overwrite=args.overwrite,
            prune=args.prune, dry_run=args.dry_run, drop_cache=args.drop_cache, progress=not args.quiet,
            echo=print, client=pending,
        )
    if args.dry_run:
        return 0
    _print_summary(record, args.config)
    output = record["output"]
    if args.measure:
        _measure(output, args, overwrite=True)
    if args.report:
        from .report import write_report

        print(f"report: {write_report(output)}")
    return 0


def _cluster_starting(args):
    """The embedded cluster, started now so that its workers start while the run is planned;
    nothing is started for a dry run or a cluster given by address or by SLURM."""
    import contextlib

    if args.dry_run or args.scheduler or args.cluster not in (None, "local"):
        return contextlib.nullcontext()
    from .cluster import PendingClient

    return PendingClient(n_workers=args.workers, gpu_workers=args.gpu_workers, dashboard=args.dashboard)


def _run_screen(config, screen, args, pending=None) -> int:
    import contextlib

    from .cluster import open_client
    from .screen import run_screen

    starting = contextlib.nullcontext(pending.result()) if pending is not None else open_client(
        args.scheduler, cluster=args.cluster, n_workers=args.workers, gpu_workers=args.gpu_workers,
        security=_security(args))
    with starting as client:
        summary = run_screen(config, screen, client=client, overwrite=args.overwrite, in_place=args.in_place,
                             progress=not args.quiet, prune=args.prune, dry_run=args.dry_run,
                             drop_cache=args.drop_cache, echo=print)
    if args.dry_run:
        return 0
    done = sum(1 for p in summary["positions"].values() if p["status"] == "done")
    print(f"screen done in {summary['seconds']:.1f} s: {done} position(s) segmented, "
          f"{len(summary['positions']) - done} already up to date; summary: {screen.root / 'screen.json'}")
    for name, p in summary["positions"].items():
        if args.measure or args.report:
            output = p["output"]
            if args.measure:
                _measure(output, args, overwrite=True)
            if args.report:
                from .report import write_report

                print(f"report ({name}): {write_report(output)}")
    return 0


def _security(args):
    from .cluster import make_security

    return make_security(getattr(args, "tls_ca_file", None), getattr(args, "tls_cert", None),
                         getattr(args, "tls_key", None))


def _measure(output: Path, args, overwrite: bool) -> None:
    from .cluster import open_client
    from .measure import measure_output

    with open_client(getattr(args, "scheduler", None), cluster=getattr(args, "cluster", None),
                     n_workers=getattr(args, "workers", None), gpu_workers=0, security=_security(args)) as client:
        res = measure_output(output, client=client, radius_um=args.radius_um, overwrite=overwrite,
                             progress=not getattr(args, "quiet", False))
    rows = ", ".join(f"{k}: {v}" for k, v in res["rows"].items())
    print(f"measurements: {res['path']} ({rows} rows; {res['frames']} frames in {res['seconds']:.1f} s)")


def _cmd_measure(args) -> int:
    _measure(args.output, args, overwrite=args.overwrite)
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    print(f"report: {write_report(args.output, frames=args.frames)}")
    return 0


def _cmd_export(args) -> int:
    from .io.celldetective import export_labels

    done = export_labels(args.output, args.to, well=args.well, position=args.position,
                         populations=args.population or None, overwrite=args.overwrite)
    for p, info in done.items():
        print(f"{p}: {info['frames']} frames -> {info['folder']}")
    return 0


def _cmd_import(args) -> int:
    import yaml

    from .io.celldetective import import_experiment

    cfg = import_experiment(args.experiment)
    print(f"# popseg config imported from the Celldetective experiment {args.experiment}")
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0


def _cmd_view(args) -> int:
    from .view import view

    view(args.output)
    return 0


def _cmd_export_training(args) -> int:
    from .train import export_training

    if args.output is None and args.labels is None:
        raise PopsegError("give a popseg output (and --population), or --labels with --movie and --channels")
    if args.output is not None and not args.population:
        raise PopsegError("--population is required with a popseg output")
    meta = export_training(args.output, args.population, args.out, frames=args.frames, tiles=args.tiles,
                           labels=args.labels, movie=args.movie, corrected=args.corrected,
                           channels=args.channels.split(",") if args.channels else None, overwrite=args.overwrite)
    n_obj = sum(i["objects"] for i in meta["items"])
    print(f"training set: {args.out} ({len(meta['items'])} tiles, {n_obj} objects, channels {meta['channels']})")
    return 0


def _cmd_train(args) -> int:
    from .io.record import stored_record
    from .train import export_training, train_model

    dataset = args.dataset
    if stored_record(dataset) is not None:  # a popseg output: train on a population's corrections
        if not args.population:
            raise PopsegError(f"{dataset} is a popseg output: give --population, whose corrected frames to train on")
        dataset = str(Path(args.out).with_name(Path(args.out).name + ".dataset"))
        meta = export_training(args.dataset, args.population, dataset, corrected=True, tiles=args.tiles,
                               overwrite=args.overwrite)
        print(f"training set: {dataset} ({len(meta['items'])} tiles from the corrected frames of {args.population})")
    elif args.population:
        raise PopsegError(f"--population goes with a popseg output; {dataset} is not one (it has no run record)")
    res = train_model(args.kind, dataset, args.out, base=args.base, epochs=args.epochs, steps=args.steps,
                      size=args.size, patch=args.patch, val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite,
                      echo=print)
    print(f"model: {res['model']} ({res['kind']}, trained in {res['train_s']:.0f} s on {res['train_tiles']} tiles)")
    print(f"validation F1: {res['validation_f1']:.3f} at IoU 0.5, {res['validation_f1_09']:.3f} at IoU 0.9 "
          f"({res['validation_tiles']} tiles)")
    print(f"use it in a population as:  segmenter: {res['kind']}, model: {res['model']}")
    return 0


def _cmd_bench(args) -> int:
    from .calibrate import calibrate
    from .config import load_config

    res = calibrate(load_config(args.config), frames=args.frames, tiles=args.tiles)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    m, mv = res["machine"], res["movie"]
    print(f"machine: {m['cores']} core(s), {m['free_memory_mb']} MB free, {m['gpus']} GPU(s); "
          f"movie: {mv['frames']} frames of {mv['shape'][0]}x{mv['shape'][1]}; timed frames {mv['timed_frames']}")
    print(f"{'population':16s} {'tile':>6s} {'s/frame':>9s} {'frames/s':>9s} {'task MB':>8s} {'objects':>8s}")
    for name, pop in res["populations"].items():
        for tile, v in pop["variants"].items():
            print(f"{name:16s} {tile:>6s} {v['s_per_frame']:9.3f} {1 / max(v['s_per_frame'], 1e-9):9.2f} "
                  f"{v['peak_task_mb']:8.0f} {v['objects_per_frame']:8.0f}")
    r = res["recommendation"]
    tiles = ", ".join(f"{k}: {v}" for k, v in r["tile"].items())
    print(f"recommended: --workers {r['workers']} (threads per worker {r['threads_per_worker']}, "
          f"about {r['memory_per_worker_mb']} MB each); tile per population: {tiles}"
          + (f"; --gpu-workers {r['gpu_workers']}" if r.get("gpu_workers") else ""))
    print(f"estimated segmentation time for the movie: {r['estimated_s'] / 60:.1f} min ({r['why']})")
    return 0


def _cmd_tune(args) -> int:
    from .cluster import open_client
    from .config import load_config, read_yaml
    from .train import read_label_image
    from .tune import default_space, expand_space, table_lines, tune, write_outputs

    config = load_config(args.config)
    spec = config.populations.get(args.population)
    if spec is None:  # before reading labels or starting a cluster
        raise PopsegError(f"--population {args.population!r} is not in {args.config}; its populations are "
                          f"{list(config.populations)}")
    truth = read_label_image(args.truth)
    if args.space and not Path(args.space).is_file():
        raise PopsegError(f"--space {args.space} not found; give a YAML file of keys and their candidate values")
    space = read_yaml(Path(args.space).read_text(), args.space) if args.space else \
        default_space(spec.segmenter, spec.params())
    grid = expand_space(space, args.samples, args.seed)
    out = Path(args.out) if args.out else Path(args.config).with_suffix(".tune")
    print(f"tuning population {args.population}: {len(grid)} setting(s)")
    with open_client(args.scheduler, n_workers=args.workers, gpu_workers=0) as client:
        result = tune(config, args.population, truth, args.frames or None, grid, client=client)
    for line in table_lines(result):
        print(line)
    paths = write_outputs(result, read_yaml(Path(args.config).read_text(), args.config), out)
    print(f"best: #{result.best()['index']} {json.dumps(result.best()['settings'])} (mean F1 "
          f"{result.best()['mean_f1']:.3f}) on frame(s) {result.frames} in {result.seconds:.1f} s")
    print(f"written {paths['table']}, {paths['plot']} and {paths['config']} (the config with the best setting)")
    return 0


def _print_summary(record: dict, where) -> None:
    if record.get("up_to_date"):
        return
    t = record["timings"]
    print(f"done in {t['total_s']:.1f} s (segment {t['segment_s']:.1f} s, numbering {t['number_s']:.1f} s) "
          f"on {record['n_workers']} worker(s)")
    for name, pop in record["populations"].items():
        print(f"  {name}: {pop['n_objects']} objects in {len(pop['objects_per_frame'])} frames")


def _cmd_demo(args) -> int:
    from .config import load_config
    from .metrics import f1_score
    from .io.labels import open_label_array
    from .pipeline import run
    from .synthetic import write_demo

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
        pred = open_label_array(output, name)[...]
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


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", metavar="WHERE",
                   help="local (default), slurm (dask-jobqueue; --workers = jobs), slurm-runner (inside sbatch), "
                        "or a scheduler address")
    p.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786, tls://...)")
    p.add_argument("--workers", type=int, help="workers of the embedded LocalCluster (default: one per core)")
    p.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate, for a tls:// scheduler")
    p.add_argument("--tls-cert", metavar="PEM", help="this client's certificate, for a tls:// scheduler")
    p.add_argument("--tls-key", metavar="PEM", help="this client's private key, for a tls:// scheduler")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="popseg", description="Population-specific segmentation of microscopy movies on Dask.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_exchange_commands(sub)
    _add_tool_commands(sub)
    return p


def _add_run_commands(sub) -> None:
    """run, measure, report: a movie to labels, tables and a QC report."""
    r = sub.add_parser("run", help="segment every population of a movie")
    r.add_argument("config", help="YAML configuration")
    _cluster_args(r)
    r.add_argument("--gpu-workers", type=int, metavar="N",
                   help="embedded workers with one GPU each (default: one per GPU found; 0: none)")
    r.add_argument("--in-place", action="store_true", help="write labels inside the input OME-Zarr")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the existing output (default: recompute only populations whose labels can change)")
    r.add_argument("--prune", action="store_true", help="delete labels of populations the config no longer names")
    r.add_argument("--dry-run", action="store_true",
                   help="say which populations would be kept, recomputed or added, and stop")
    r.add_argument("--drop-cache", action="store_true",
                   help="delete the cached network outputs (cache: model_outputs) once the run is done")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    # off by default: serving it imports bokeh in the embedded scheduler, about 1.5 s of every
    # command's start-up on a laptop (benchmarks/RESULTS.md, "The whole command")
    r.add_argument("--dashboard", action="store_true",
                   help="serve the Dask dashboard of the embedded cluster (its link is printed)")
    r.add_argument("--measure", action="store_true", help="measure every object afterwards (Parquet)")
    r.add_argument("--report", action="store_true", help="write the QC report afterwards")
    r.add_argument("--radius-um", type=float, default=20.0, help="neighbourhood radius for --measure")
    r.set_defaults(func=_cmd_run)

    m = sub.add_parser("measure", help="per-object measurements of a run, as Parquet")
    m.add_argument("output", help="the output store of a run")
    m.add_argument("--radius-um", type=float, default=20.0, help="neighbourhood radius (µm; px without pixel size)")
    _cluster_args(m)
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_cmd_measure)

    q = sub.add_parser("report", help="QC report (HTML + PNGs) of a run")
    q.add_argument("output")
    q.add_argument("--frames", type=int, default=4, help="frames in the overlay montage")
    q.set_defaults(func=_cmd_report)


def _add_exchange_commands(sub) -> None:
    """export, import, view, export-training, train: labels to and from other tools, and models."""
    e = sub.add_parser("export", help="export labels to another tool's layout")
    e.add_argument("format", choices=["celldetective"])
    e.add_argument("output", help="the output store of a run")
    e.add_argument("--to", required=True, help="experiment folder")
    e.add_argument("--well", default="W1")
    e.add_argument("--position", default="100")
    e.add_argument("--population", action="append", help="only this population (repeatable)")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_cmd_export)

    im = sub.add_parser("import", help="make a popseg config from another tool's project")
    im.add_argument("format", choices=["celldetective"])
    im.add_argument("experiment", help="Celldetective experiment folder")
    im.set_defaults(func=_cmd_import)

    v = sub.add_parser("view", help="open the movie and labels in napari")
    v.add_argument("output")
    v.set_defaults(func=_cmd_view)

    x = sub.add_parser("export-training", help="paired image/mask tiles from labels, for training a model")
    x.add_argument("output", nargs="?", help="the output store of a run (or use --labels/--movie/--channels)")
    x.add_argument("--population", help="whose labels and channels to export")
    x.add_argument("--out", required=True, help="dataset folder to create")
    x.add_argument("--frames", help="start:stop:step or a comma list (default: all)")
    x.add_argument("--tiles", type=int, default=1, help="cut each frame into N x N tiles")
    x.add_argument("--labels", help="corrected labels (TIFF or Zarr) instead of the run's")
    x.add_argument("--corrected", action="store_true",
                   help="the population's proofread frames (labels/<population>-corrected; default frames: those)")
    x.add_argument("--movie", help="the movie, without a popseg output")
    x.add_argument("--channels", help="comma-separated channels to export")
    x.add_argument("--overwrite", action="store_true")
    x.set_defaults(func=_cmd_export_training)

    tr = sub.add_parser("train", help="train a StarDist or Cellpose model on an exported training set")
    tr.add_argument("kind", choices=["stardist", "cellpose"])
    tr.add_argument("dataset", help="folder written by export-training, or a popseg output with --population "
                                    "(its corrected frames are exported first)")
    tr.add_argument("--population", help="with a popseg output: train on this population's corrected frames")
    tr.add_argument("--tiles", type=int, default=1, help="with a popseg output: cut each frame into N x N tiles")
    tr.add_argument("--out", required=True, help="model folder to create")
    tr.add_argument("--from", dest="base", help="model folder to fine-tune (default: from scratch)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--steps", type=int, help="steps per epoch (StarDist)")
    tr.add_argument("--size", default="small", choices=["tiny", "small", "default"],
                    help="network size from scratch (tiny: seconds on a CPU)")
    tr.add_argument("--patch", type=int, help="side of the training crops (default: 256 StarDist, 224 Cellpose)")
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(func=_cmd_train)


def _add_tool_commands(sub) -> None:
    """bench, tune, demo, inspect."""
    b = sub.add_parser("bench", help="time a few frames of your movie and recommend tiles and workers")
    b.add_argument("config", help="YAML configuration (nothing is written)")
    b.add_argument("--frames", type=int, default=3, help="frames to time, evenly spaced")
    b.add_argument("--tiles", type=int, nargs="*", help="tile sizes to try besides whole frames")
    b.add_argument("--json", action="store_true", help="print the measurements and advice as JSON")
    b.set_defaults(func=_cmd_bench)

    u = sub.add_parser("tune", help="search one population's settings against known labels (F1 table, best config)")
    u.add_argument("config", help="YAML configuration")
    u.add_argument("--population", required=True, help="the population to tune")
    u.add_argument("--truth", required=True, help="known labels: TIFF or Zarr (t, y, x), e.g. corrected in napari")
    u.add_argument("--frames", help="movie frames the truth labels (start:stop:step or 0,5,9; default: the first ones)")
    u.add_argument("--space", help="YAML mapping of population keys to lists of values (default: a small grid)")
    u.add_argument("--samples", type=int, help="score this many settings drawn at random from the grid")
    u.add_argument("--seed", type=int, default=0, help="seed of --samples")
    u.add_argument("--out", help="folder for tune.csv, tune.json, tune.png and best.yaml (default: CONFIG.tune/)")
    u.add_argument("--workers", type=int)
    u.add_argument("--scheduler", help="address of a running Dask scheduler")
    u.set_defaults(func=_cmd_tune)

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
