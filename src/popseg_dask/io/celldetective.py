"""Celldetective experiment folders: export popseg labels to them, import their configs.

Celldetective keeps, per position, ``labels_<population>/NNNN.tif`` (one uint16 ImageJ TIFF per
frame, ids per frame) and, per experiment, ``config.ini`` (channels, pixel size, populations,
movie prefix) and ``configs/threshold_config_<population>.json``.
"""

from __future__ import annotations

import configparser
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PopsegError
from ..location import Location
from .labels import open_label_array

__all__ = ["experiment_channels", "export_labels", "import_experiment", "threshold_config_json"]

# the keys of Celldetective's threshold_config_<population>.json, popseg's names on the right
THRESHOLD_JSON_KEYS = {"target_channel": "channel", "thresholds": "thresholds", "filters": "filters",
                       "marker_min_distance": "marker_min_distance", "marker_footprint_size": "marker_footprint_size",
                       "feature_queries": "feature_queries", "equalize_reference": "equalize_reference",
                       "do_watershed": "do_watershed", "fill_holes": "fill_holes", "edge_exclusion": "edge_exclusion"}


def export_labels(output: Path | str, experiment: Path | str, *, well: str = "W1", position: str = "100",
                  populations: list[str] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write a run's labels as Celldetective label folders.

    Files go to ``<experiment>/<well>/<position>/labels_<population>/NNNN.tif``: uint16 ImageJ
    TIFFs, ids 1..n per frame in raster order of the objects' first pixels.

    Raises
    ------
    PopsegError
        If the run is incomplete, a folder exists without ``overwrite``, or a frame holds more
        than 65535 objects (uint16 cannot number them).
    """
    import tifffile

    from ..stitch import canonical_relabel

    from .record import read_run_record

    output = Location.of(output)
    rec = read_run_record(output)
    pops = populations or list(rec["populations"])
    unknown = set(pops) - set(rec["populations"])
    if unknown:
        raise PopsegError(f"population(s) {sorted(unknown)} not in {output}; it has {list(rec['populations'])}")
    pos_dir = Path(experiment) / well / position
    for p in pops:
        counts = rec["populations"][p]["objects_per_frame"]
        worst = max(counts) if counts else 0
        if worst > 65535:
            t = counts.index(worst)
            raise PopsegError(f"frame {t} of '{p}' has {worst} objects; Celldetective's uint16 label TIFFs hold "
                              "at most 65535 per frame (use the OME-Zarr labels instead)")
        d = pos_dir / f"labels_{p}"
        if d.exists() and any(d.iterdir()) and not overwrite:
            raise PopsegError(f"{d} exists and is not empty; pass --overwrite to replace its TIFFs")
    written = {}
    for p in pops:
        d = pos_dir / f"labels_{p}"
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.tif"):
            old.unlink()
        arr = open_label_array(output, p)
        for t in range(arr.shape[0]):
            lab, n = canonical_relabel(arr[t])
            tifffile.imwrite(d / f"{t:04d}.tif", lab.astype(np.uint16), imagej=True, metadata={"axes": "YX"})
        written[p] = {"folder": str(d), "frames": int(arr.shape[0])}
    return written


def experiment_channels(cfg: configparser.ConfigParser) -> list[str]:
    """The channel names of a Celldetective experiment's ``config.ini``, in index order."""
    if not cfg.has_section("Channels"):
        raise PopsegError("config.ini has no [Channels] section; is this a Celldetective experiment?")
    found = []
    for name, value in cfg.items("Channels"):
        try:
            idx = float(value)
        except ValueError:
            continue
        if not math.isnan(idx):
            found.append((int(idx), name))
    if not found:
        raise PopsegError("config.ini lists no channel with an index under [Channels]")
    return [n for _, n in sorted(found)]


def import_experiment(experiment: Path | str) -> dict[str, Any]:
    """Build a popseg config from a Celldetective experiment folder.

    Channels (ordered by index), pixel size and populations come from ``config.ini``; each
    population with a ``configs/threshold_config_<population>.json`` becomes a threshold
    population that points at that file; the input is the first position's movie.
    """
    exp = Path(experiment)
    ini = exp / "config.ini"
    if not ini.is_file():
        raise PopsegError(f"{exp} has no config.ini; give the folder of a Celldetective experiment")
    cfg = configparser.ConfigParser()
    try:
        cfg.read(ini)
    except configparser.Error as err:
        raise PopsegError(f"{ini} cannot be parsed: {err}") from None
    channels = experiment_channels(cfg)
    movie = dict(cfg.items("MovieSettings")) if cfg.has_section("MovieSettings") else {}
    prefix = movie.get("movie_prefix", "")
    movies = sorted(exp.glob(f"W*/*/movie/{prefix}*.tif"))
    if not movies:
        raise PopsegError(f"no movie found under {exp}/W*/<position>/movie/{prefix}*.tif")
    pops = ["targets", "effectors"]
    if cfg.has_option("Populations", "populations"):
        pops = [p.strip() for p in cfg.get("Populations", "populations").split(",") if p.strip()]
    populations = {}
    for p in pops:
        js = exp / "configs" / f"threshold_config_{p}.json"
        if js.is_file():
            populations[p] = {"segmenter": "threshold", "threshold_config": str(js.resolve())}
    if not populations:
        raise PopsegError(f"no configs/threshold_config_<population>.json for populations {pops} in {exp}")
    out: dict[str, Any] = {"input": str(movies[0].resolve()), "channels": channels}
    try:
        px = float(movie.get("pxtoum", "nan"))
        if px > 0:
            out["pixel_size_um"] = px
    except ValueError:
        pass
    out["populations"] = populations
    return out


def threshold_config_json(params: dict[str, Any]) -> dict[str, Any]:
    """Celldetective's threshold config for a threshold population's validated keys
    (``ThresholdParams.model_dump()``): what its wizard writes, so Celldetective reads it back.

    ``equalize_reference`` becomes ``[enabled, frame]``, an empty query list ``[""]``; keys
    Celldetective does not know (``watershed_ties``, ``max_object_px``, ...) are left out.
    """
    out: dict[str, Any] = {}
    for cd_key, key in THRESHOLD_JSON_KEYS.items():
        value = params.get(key)
        if key == "equalize_reference":
            value = [value is not None, int(value or 0)]
        elif key == "feature_queries":
            value = list(value or []) or [""]
        elif key == "thresholds" and value is not None:
            value = [float(v) for v in value]
        elif key == "filters":
            value = [list(f) for f in value or []]
        out[cd_key] = value
    return out
