"""Per-object measurements of a run's labels, written as a Parquet dataset.

One row per object per frame and population: id, frame, centroid (pixels and µm), area, bounding
box, perimeter, eccentricity, solidity, major/minor axis, and per channel (by name) the mean, min,
max and standard deviation of the intensity; plus, for every other population, how many of its
objects the object touches (overlap or 8-adjacency) and how many lie within a radius (centroid to
centroid, µm); the object's own population is counted too, the object itself never.

Measurements are taken on the final, stitched labels, one task per frame, so an object cut by
tiles is measured once and whole.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import PopsegError
from .io.labels import open_label_array
from .io.layout import OutputLayout
from .location import Location

COMPLETE_MARKER = "_popseg_complete"  # pyarrow skips names starting with "_"

__all__ = ["measure_frame", "contacts", "neighbours_within", "measure_output", "read_measurements"]

_SHAPE = ("area", "bbox", "centroid", "perimeter", "eccentricity", "solidity", "axis_major_length",
          "axis_minor_length")


def measure_frame(labels: np.ndarray, image: np.ndarray, channels: list[str], *, frame: int, population: str,
                  pixel_size_um: float | None) -> pd.DataFrame:
    """Shape and intensity features of every object of one frame.

    Parameters
    ----------
    labels : (y, x) integer array
        Objects of one population (ids unique in the movie).
    image : (c, y, x) array
        All channels of the same frame.
    channels : list of str
        Channel names, for the intensity columns ``<channel>_mean`` etc.
    frame : int
    population : str
    pixel_size_um : float or None
        For the µm columns (NaN without it).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    props = list(_SHAPE) + ["label", "intensity_mean", "intensity_min", "intensity_max", "intensity_std"]
    if labels.any():
        t = regionprops_table(labels, intensity_image=np.moveaxis(np.asarray(image), 0, -1), properties=props)
    else:
        t = {k: np.zeros(0) for k in ["label", "area", "centroid-0", "centroid-1", "bbox-0", "bbox-1", "bbox-2",
                                       "bbox-3", "perimeter", "eccentricity", "solidity", "axis_major_length",
                                       "axis_minor_length"]}
        for stat in ("mean", "min", "max", "std"):
            for j in range(len(channels)):
                t[f"intensity_{stat}-{j}"] = np.zeros(0)
    px = float("nan") if pixel_size_um is None else float(pixel_size_um)
    n = len(t["label"])
    out = {
        "id": np.asarray(t["label"], np.uint64),
        "frame": np.full(n, frame, np.int32),
        "population": np.array([population] * n, dtype=object),
        "centroid_y_px": t["centroid-0"], "centroid_x_px": t["centroid-1"],
        "centroid_y_um": t["centroid-0"] * px, "centroid_x_um": t["centroid-1"] * px,
        "area_px": np.asarray(t["area"], np.int64), "area_um2": np.asarray(t["area"], float) * px * px,
        "bbox_y0": np.asarray(t["bbox-0"], np.int32), "bbox_x0": np.asarray(t["bbox-1"], np.int32),
        "bbox_y1": np.asarray(t["bbox-2"], np.int32), "bbox_x1": np.asarray(t["bbox-3"], np.int32),
        "perimeter_px": t["perimeter"], "eccentricity": t["eccentricity"], "solidity": t["solidity"],
        "axis_major_px": t["axis_major_length"], "axis_minor_px": t["axis_minor_length"],
    }
    for j, c in enumerate(channels):
        for stat in ("mean", "min", "max", "std"):
            out[f"{c}_{stat}"] = np.asarray(t[f"intensity_{stat}-{j}"], float)
    return pd.DataFrame(out)


def contacts(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """For each object of ``a``, how many objects of ``b`` it overlaps or touches (8-adjacency).

    With ``b is a``, an object does not count itself. Only pixels of ``a`` next to ``b`` are
    visited (a separable 3x3 maximum finds them), not the whole frame nine times.
    """
    from scipy import ndimage as ndi

    same = b is a
    a, b = np.asarray(a), np.asarray(b)
    near = ndi.maximum_filter((b > 0).view(np.uint8), size=3) > 0
    ys, xs = np.nonzero((a > 0) & near)
    if not len(ys):
        return {}
    padded = np.pad(b, 1)
    pa = np.repeat(a[ys, xs].astype(np.int64), 9)
    pb = np.stack([padded[ys + 1 + dy, xs + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=1)
    pb = pb.ravel().astype(np.int64)
    keep = pb > 0
    if same:
        keep &= pb != pa
    uniq = np.unique(np.stack([pa[keep], pb[keep]]), axis=1)
    ids, counts = np.unique(uniq[0], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def neighbours_within(ca: np.ndarray, cb: np.ndarray, radius: float, same: bool = False) -> np.ndarray:
    """For each point of ``ca`` (n, 2), how many points of ``cb`` lie within ``radius`` (excluding itself)."""
    from scipy.spatial import cKDTree

    if len(ca) == 0:
        return np.zeros(0, np.int64)
    if len(cb) == 0:
        return np.zeros(len(ca), np.int64)
    counts = np.asarray([len(x) for x in cKDTree(cb).query_ball_point(ca, r=radius)], np.int64)
    return counts - 1 if same else counts


def _frame_table(labels: dict[str, np.ndarray], image: np.ndarray, names: list[str], px: float | None,
                 t: int, radius_um: float) -> pd.DataFrame:
    """Every population's rows for one frame, neighbourhood columns included."""
    populations = list(labels)
    tables = {p: measure_frame(labels[p], image, names, frame=t, population=p, pixel_size_um=px)
              for p in populations}
    radius_px = radius_um / px if px else radius_um
    for p, tab in tables.items():
        for q in populations:  # its own population too (an object never counts itself)
            touch = contacts(labels[p], labels[q])
            tab[f"touching_{q}"] = np.asarray([touch.get(int(i), 0) for i in tab["id"]], np.int64)
            cq = tables[q][["centroid_y_px", "centroid_x_px"]].to_numpy()
            tab[f"within_{radius_um:g}um_{q}"] = neighbours_within(
                tab[["centroid_y_px", "centroid_x_px"]].to_numpy(), cq, radius_px, same=(q == p))
    return pd.concat(list(tables.values()), ignore_index=True) if tables else pd.DataFrame()


def _measure_task(output: Location, populations: list[str], record: dict, t: int, radius_um: float) -> pd.DataFrame:
    from .io.movie import open_run_input

    movie = open_run_input(record)
    image = np.asarray(movie.data[t].compute(scheduler="sync"))
    labels = {p: open_label_array(output, p)[t] for p in populations}
    return _frame_table(labels, image, [str(c) for c in movie.c.values], movie.attrs["pixel_size_um"], t, radius_um)


def measure_output(output: "Location | Path | str", *, client=None, radius_um: float = 20.0, overwrite: bool = False,
                   progress: bool = False) -> dict[str, Any]:
    """Measure every object of a finished run; write ``<output>/measurements.parquet``.

    The dataset is partitioned by population (``population=<name>/`` folders) and reads with
    ``pandas.read_parquet``. Returns a summary (rows per population, seconds).
    """
    import dask
    import dask.dataframe as dd

    from .io.record import read_run_record
    from .io.movie import open_run_input

    output = Location.of(output)
    rec = read_run_record(output)
    dest = OutputLayout(output).measurements
    if dest.exists() and not overwrite:
        raise PopsegError(f"{dest} exists; pass --overwrite to measure again")
    populations = list(rec["populations"])
    n_t = len(next(iter(rec["populations"].values()))["objects_per_frame"])
    t0 = time.perf_counter()
    # The table's columns, from an empty frame: no pixel is read on the client.
    movie = open_run_input(rec)
    empty = {p: np.zeros((1, 1), np.uint32) for p in populations}
    meta = _frame_table(empty, np.zeros((movie.sizes["c"], 1, 1), movie.dtype), [str(c) for c in movie.c.values],
                        movie.attrs["pixel_size_um"], 0, radius_um)
    parts = [dask.delayed(_measure_task)(output, populations, rec, t, radius_um) for t in range(n_t)]
    ddf = dd.from_delayed(parts, meta=meta, verify_meta=False)
    dest.delete()
    # locally a complete dataset appears under its name by a rename; an object store has no rename,
    # so there the dataset is written in place and a marker object written last says it is complete
    tmp = dest.parent / (dest.name + ".partial") if dest.is_local else dest
    tmp.delete()
    write = ddf.to_parquet(tmp.url, partition_on=["population"], write_index=False, compute=False,
                           storage_options=dest.io_options)
    if client is not None:
        fut = client.compute(write)
        if progress:
            from distributed import progress as show

            show(fut)
            print()
        fut.result()
    else:
        dask.compute(write)
    if dest.is_local:
        Path(tmp.url).rename(dest.url)  # only a complete dataset carries the final name
    else:
        (dest / COMPLETE_MARKER).write_bytes(b"")
    rows = read_measurements(dest).groupby("population", observed=True).size().to_dict()
    return {"path": dest.url, "rows": {str(k): int(v) for k, v in rows.items()},
            "seconds": time.perf_counter() - t0, "frames": n_t}


def read_measurements(path: "Location | Path | str") -> pd.DataFrame:
    """Read a measurements dataset into one pandas DataFrame."""
    loc = Location.of(path)
    if not loc.is_local and not (loc / COMPLETE_MARKER).exists():
        raise PopsegError(f"{loc.url} is not a complete measurements dataset; run `popseg measure` again")
    return pd.read_parquet(loc.url, storage_options=loc.io_options)
