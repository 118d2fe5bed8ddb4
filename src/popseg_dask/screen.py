"""Screens: every position of a plate, an experiment folder or a list of movies, in one run.

``input`` may be:

* one movie (OME-Zarr image, Zarr array, TIFF) — a plain run;
* a list of movies — one position per movie, named by its file name;
* a Celldetective experiment folder (``config.ini``, ``W*/<position>/movie/*.tif``) — one position
  per movie folder; channels and pixel size come from ``config.ini`` unless the config gives them;
* an OME-NGFF HCS plate (``plate`` metadata, wells, fields) — one position per field.

Each position gets its own output store, ``<output>/<position>.popseg.zarr`` (or, with
``--in-place``, labels inside each field of a plate), its own run record and its own resume state,
so a screen interrupted anywhere continues where it stopped, position by position. Positions run
one after the other on one cluster, each with a bounded window of frames in flight, so neither the
client nor the scheduler ever holds a graph larger than that window. A position that fails (a
damaged movie) does not stop the others; the run reports every failure at the end.
"""

from __future__ import annotations

import configparser
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .errors import PopsegError
from .io.celldetective import experiment_channels
from .io.layout import input_stem
from .location import Location, is_url

__all__ = ["Position", "Screen", "find_positions", "run_screen"]


@dataclass
class Position:
    """One movie of a screen, where its labels go, and what the config says differently for it."""

    name: str
    input: Location
    output: Location
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Screen:
    """The positions of a screen and the folder that holds their outputs."""

    positions: list[Position]
    root: Location


def _zarr_attrs(path: Path) -> dict:
    for meta in ("zarr.json", ".zattrs"):
        f = path / meta
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except ValueError:
                return {}
            return data.get("attributes", data) if meta == "zarr.json" else data
    return {}


def _plate(path: Path) -> dict | None:
    attrs = _zarr_attrs(path)
    return (attrs.get("ome") or attrs).get("plate")


def _plate_positions(path: Path, out: Path) -> list[Position]:
    plate = _plate(path) or {}
    wells = [w["path"] for w in plate.get("wells", []) if "path" in w]
    if not wells:
        raise PopsegError(f"{path} is an HCS plate with no wells listed; check its 'plate' metadata")
    positions = []
    for well in wells:
        attrs = _zarr_attrs(path / well)
        images = ((attrs.get("ome") or attrs).get("well") or {}).get("images", [])
        for img in images:
            name = f"{well}/{img['path']}"
            positions.append(Position(name, Location.of(path / well / img["path"]), out / f"{name}.popseg.zarr"))
    if not positions:
        raise PopsegError(f"{path}: no field listed in any well; check the wells' 'well' metadata")
    return positions


def _experiment_positions(path: Path, out: Path, config: RunConfig) -> list[Position]:
    cfg = configparser.ConfigParser()
    try:
        cfg.read(path / "config.ini")
    except configparser.Error as err:
        raise PopsegError(f"{path / 'config.ini'} cannot be parsed: {err}") from None
    movie = dict(cfg.items("MovieSettings")) if cfg.has_section("MovieSettings") else {}
    prefix = movie.get("movie_prefix", "")
    overrides: dict[str, Any] = {}
    if config.channels is None:
        overrides["channels"] = experiment_channels(cfg)
    if config.pixel_size_um is None:
        try:
            px = float(movie.get("pxtoum", "nan"))
            if px > 0:
                overrides["pixel_size_um"] = px
        except ValueError:
            pass
    positions = []
    for pos_dir in sorted(p for p in path.glob("W*/*") if (p / "movie").is_dir()):
        movies = sorted((pos_dir / "movie").glob(f"{prefix}*.tif"))
        if not movies:
            continue
        name = f"{pos_dir.parent.name}/{pos_dir.name}"
        positions.append(Position(name, Location.of(movies[0]), out / f"{name}.popseg.zarr", dict(overrides)))
    if not positions:
        raise PopsegError(f"no movie found under {path}/W*/<position>/movie/{prefix}*.tif")
    return positions


def find_positions(config: RunConfig) -> Screen | None:
    """The positions of a screen input, or None when the input is a single movie."""
    inputs = config.input if isinstance(config.input, list) else None
    if inputs is not None:
        out = config.location(config.output or "screen.popseg")
        paths = [config.location(p) for p in inputs]
        names = [input_stem(p) for p in paths]
        if len(set(names)) != len(names):
            raise PopsegError(f"the movies of 'input' must have distinct names (their outputs are named after "
                              f"them); got {names}")
        return Screen([Position(n, p, out / f"{n}.popseg.zarr") for n, p in zip(names, paths)], out)
    if is_url(config.input):
        return None  # plates and experiment folders are scanned on local disk; a URL is one movie
    path = config.resolve(config.input)
    if not path.is_dir():
        return None
    out = config.location(config.output) if config.output else Location.of(path.parent / f"{input_stem(path)}.popseg")
    if (path / "config.ini").is_file():
        return Screen(_experiment_positions(path, out, config), out)
    if _plate(path) is not None:
        return Screen(_plate_positions(path, out), out)
    return None


def run_screen(config: RunConfig, screen: Screen, *, client, overwrite: bool = False,
               in_place: bool = False, progress: bool = False, prune: bool = False, dry_run: bool = False,
               drop_cache: bool = False, echo: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run every position on ``client``; finished positions are skipped, failed ones reported.

    ``prune``, ``dry_run`` and ``drop_cache`` are :func:`popseg_dask.pipeline.run`'s, per position (a dry run
    writes no summary).

    Returns the screen summary (also written to ``<output>/screen.json``).

    Raises
    ------
    PopsegError
        After all positions were tried, if any failed (its message names them).
    """
    from .pipeline import run

    positions = screen.positions
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"positions": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    failed = []
    echo(f"screen: {len(positions)} position(s)")
    for i, pos in enumerate(positions, 1):
        update: dict[str, Any] = {"input": pos.input.url, "output": None if in_place else pos.output.url,
                                  **pos.overrides}
        cfg = config.model_copy(update=update)
        echo(f"[{i}/{len(positions)}] {pos.name}")
        try:
            rec = run(cfg, client=client, overwrite=overwrite, in_place=in_place, progress=progress, echo=echo,
                      prune=prune, dry_run=dry_run, drop_cache=drop_cache)
        except PopsegError as err:
            failed.append(pos.name)
            summary["positions"][pos.name] = {"status": "failed", "error": str(err), "input": pos.input.url}
            echo(f"  {pos.name}: error: {err}")
            continue
        if dry_run:
            summary["positions"][pos.name] = {"status": "dry run", "decisions": rec["decisions"]}
            continue
        summary["positions"][pos.name] = {
            "status": "up to date" if rec.get("up_to_date") else "done", "output": rec.get("output"),
            "frames_computed": 0 if rec.get("up_to_date") else rec.get("frames_computed"),
            "objects": {p: v.get("n_objects") for p, v in rec.get("populations", {}).items()},
        }
    summary["seconds"] = time.perf_counter() - t0
    summary["failed"] = failed
    if not in_place and not dry_run:
        (screen.root / "screen.json").write_bytes(json.dumps(summary, indent=1, default=str).encode())
    if failed:
        raise PopsegError(f"{len(failed)} of {len(positions)} position(s) failed ({', '.join(failed[:5])}"
                          f"{', ...' if len(failed) > 5 else ''}); the others are complete — fix those inputs "
                          "and run again to finish them (see screen.json)")
    return summary
