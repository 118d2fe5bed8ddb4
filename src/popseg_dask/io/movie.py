"""Open movies lazily as ``xarray.DataArray`` with dims ``("t", "c", "y", "x")``.

Sources:

* OME-Zarr images, NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3): axes, channel names and
  pixel size from the metadata, resolution level 0;
* plain Zarr arrays, with ``dims`` and ``channels`` given by the caller;
* TIFF / OME-TIFF / ImageJ stacks, read page by page through tifffile's Zarr store.
  A stack whose pages are an unlabelled sequence is read in Celldetective's order,
  page = t * n_channels + c.

Only metadata is read when a movie is opened; pixels are read by the tasks that need
them. The ``attrs`` of the result carry ``source`` (path, format, NGFF version),
``pixel_size_um`` (or None) and ``scale`` (per dim, from the file).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from ..errors import PopsegError
from ..location import Location

__all__ = ["open_movie", "open_run_input", "movie_levels", "describe", "SUPPORTED_DTYPES"]

DIMS = ("t", "c", "y", "x")
# Integer and float pixels; complex, bool and object data are not images we can threshold.
SUPPORTED_DTYPES = tuple(np.dtype(d) for d in ("uint8", "uint16", "uint32", "int8", "int16", "int32",
                                                  "float16", "float32", "float64"))
_TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
_UNIT_TO_UM = {"nanometer": 1e-3, "nm": 1e-3, "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0,
               "millimeter": 1e3, "mm": 1e3}


def open_movie(
    path: str | os.PathLike,
    *,
    channels: list[str] | None = None,
    dims: str | None = None,
    pixel_size_um: float | None = None,
) -> xr.DataArray:
    """Open a movie lazily as a dask-backed ``DataArray`` with dims t, c, y, x.

    Parameters
    ----------
    path : path
        An OME-Zarr image group, a plain Zarr array, or a TIFF file.
    channels : list of str, optional
        Channel names, for files that carry none (or to rename them; the count must match).
    dims : str, optional
        Axis letters of a plain Zarr array or an unlabelled TIFF, e.g. ``"tcyx"``.
        Ignored where the file names its axes.
    pixel_size_um : float, optional
        Pixel size in micrometres; overrides the file's.

    Returns
    -------
    xarray.DataArray
        Dims ``("t", "c", "y", "x")``, channel names as the ``c`` coordinate.

    Raises
    ------
    PopsegError
        If the path is missing, is not a movie, or its axes cannot be mapped to t, c, y, x.
    """
    loc = Location.of(path)
    arr, axes, names, scale, source = _open_source(loc, dims, channels)
    path = loc.url
    if np.dtype(arr.dtype) not in SUPPORTED_DTYPES:
        raise PopsegError(
            f"{path} has pixel type {arr.dtype}, which popseg cannot segment "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)}); convert the movie first"
        )
    arr, axes = _to_tcyx(arr, axes, path)
    scale = {k: v for k, v in scale.items() if k in DIMS}
    n_c = arr.shape[1]
    if channels is not None:
        if len(channels) != n_c:
            raise PopsegError(
                f"config names {len(channels)} channels {channels} but {path} has {n_c}; "
                "list exactly one name per channel"
            )
        names = list(channels)
    elif names is None or len(names) != n_c or len(set(names)) != n_c:
        names = [str(i) for i in range(n_c)]
    if 0 in arr.shape:
        raise PopsegError(f"{path} is empty (shape t,c,y,x = {arr.shape}); nothing to segment")
    if pixel_size_um is None and "x" in scale and source.get("unit_to_um"):
        pixel_size_um = float(scale["x"]) * source["unit_to_um"]
    return xr.DataArray(
        arr,
        dims=DIMS,
        coords=_channel_coords(names),
        name=loc.name,
        attrs={"source": source, "pixel_size_um": pixel_size_um, "scale": scale},
    )


def _channel_coords(names: list[str]) -> xr.Coordinates:
    """The ``c`` coordinate with its index given: inferring the index from a list makes xarray
    look for every duck-array library installed, and importing pint (napari's) costs the
    command 0.13 s before its first task."""
    values = np.asarray(names, dtype=str)
    index = xr.indexes.PandasIndex(pd.Index(values), "c")
    return xr.Coordinates({"c": values}, indexes={"c": index})


def _open_source(loc: Location, dims: str | None, channels: list[str] | None):
    """Array, axes, channel names, scale and source facts of a TIFF file or a Zarr store."""
    is_tiff = loc.name.lower().endswith(_TIFF_SUFFIXES)
    if not loc.is_local:
        if is_tiff:
            raise PopsegError(f"{loc.url}: TIFF inputs are read from local disk only; convert the movie to OME-Zarr "
                              "(e.g. with bioformats2raw, or `popseg` on a local copy) or copy it locally")
        if not any((loc / key).exists() for key in ("zarr.json", ".zgroup", ".zarray")):
            raise PopsegError(f"input not found: {loc.url} holds no Zarr store (no zarr.json, .zgroup or .zarray); "
                              "check the URL and your credentials")
        return _open_zarr(loc, dims)
    path = Path(loc.url)
    if not path.exists():
        raise PopsegError(f"input not found: {path} (check the 'input' path in the config)")
    if path.is_file() and is_tiff:
        return _open_tiff(path, dims, channels)
    if path.is_dir():
        return _open_zarr(loc, dims)
    raise PopsegError(f"{path} is not a movie popseg can read (expected an OME-Zarr/Zarr folder or a .tif/.tiff file)")


def movie_levels(movie: xr.DataArray) -> list[da.Array]:
    """The movie and its coarser resolution levels (OME-Zarr multiscales), each lazy (t, c, y, x)
    with the movie's channels; only level 0 for other inputs. For viewers: runs read level 0."""
    src = movie.attrs["source"]
    levels = src.get("levels") or []
    if src.get("format") != "ome-zarr" or len(levels) < 2:
        return [movie.data]
    root = Location.of(src["path"])
    out = [movie.data]
    for name in levels[1:]:
        arr = _zarr_open(root / name)
        lev, _ = _to_tcyx(_dask_array(root / name, arr), src["axes"], root.url)
        if lev.shape[:2] != movie.data.shape[:2]:
            break  # a level that is not the same movie at a coarser scale: browse level 0 only
        out.append(lev)
    return out


def open_run_input(record: dict) -> xr.DataArray:
    """Open the movie a run read, as its config described it (channels, dims, pixel size)."""
    cfg = record.get("config", {})
    return open_movie(record["input"], channels=cfg.get("channels"), dims=cfg.get("dims"),
                      pixel_size_um=cfg.get("pixel_size_um"))


def _to_tcyx(arr: da.Array, axes: str, path: str) -> tuple[da.Array, str]:
    """Squeeze singleton extra axes, add missing t/c, transpose to t, c, y, x."""
    if len(axes) != arr.ndim:
        raise PopsegError(f"{path}: axes '{axes}' do not match the array's {arr.ndim} dimensions (shape {arr.shape}); "
                          f"give {arr.ndim} letters in 'dims' (e.g. {'tcyx'[-arr.ndim:] if arr.ndim <= 4 else 'tczyx'})")
    keep = []
    for i, ax in enumerate(axes):
        if ax in DIMS:
            keep.append(i)
        elif arr.shape[i] == 1:
            continue
        elif ax == "z":
            raise PopsegError(
                f"{path} has {arr.shape[i]} z-planes; popseg segments 2D frames: "
                "project the stack (e.g. max over z) or select one plane first"
            )
        else:
            raise PopsegError(
                f"{path} has an axis '{ax}' of size {arr.shape[i]} that is not t, c, y or x; "
                "give 'dims' in the config to name the axes"
            )
    arr = arr[tuple(slice(None) if i in keep else 0 for i in range(arr.ndim))]
    axes = "".join(axes[i] for i in keep)
    for ax in ("t", "c"):
        if ax not in axes:
            arr = arr[None]
            axes = ax + axes
    if "y" not in axes or "x" not in axes:
        raise PopsegError(f"{path}: no y and x axes found (axes '{axes}'); give 'dims' in the config")
    return arr.transpose([axes.index(d) for d in DIMS]), "tcyx"


# --------------------------------------------------------------------------- Zarr

def _zarr_open(path: Location) -> Any:
    try:
        # On an object store every metadata probe is a round trip (zarr tries the v3 and the v2
        # names, then lists each missing one): with zarr.json there, ask for v3 only
        fmt = 3 if not path.is_local and (path / "zarr.json").exists() else None
        return zarr.open(store=path.zarr_store(read_only=True), mode="r", zarr_format=fmt)
    except Exception as err:  # zarr raises several types for "not a zarr"
        raise PopsegError(
            f"{path} is not a readable Zarr store ({type(err).__name__}: {err}); "
            "point 'input' at an OME-Zarr image or a Zarr array"
        ) from None


def _ome_attrs(attrs: dict) -> tuple[dict | None, str | None]:
    """Return (OME attributes, NGFF version) of a group's attributes."""
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        ome = attrs["ome"]
        return ome, str(ome.get("version", "0.5"))
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        version = ms[0].get("version", "0.4") if ms else "0.4"
        return attrs, str(version)
    return None, None


def _open_zarr(path: Location, dims: str | None):
    node = _zarr_open(path)
    if isinstance(node, zarr.Array):
        axes = dims
        if axes is None:
            axes = {2: "yx", 4: "tcyx", 5: "tczyx"}.get(node.ndim)
        if axes is None:
            raise PopsegError(
                f"{path} is a {node.ndim}-D Zarr array without axis names; "
                "give 'dims' in the config (e.g. dims: tyx or dims: cyx)"
            )
        src = {"path": path.url, "format": "zarr", "zarr_format": node.metadata.zarr_format,
               **_stored_layout(path, node, axes)}
        return _dask_array(path, node), axes, None, {}, src
    attrs = dict(node.attrs)
    ome, version = _ome_attrs(attrs)
    if ome is None and "bioformats2raw.layout" in str(attrs) and "0" in node:
        return _open_zarr(path / "0", dims)
    if ome is None or "multiscales" not in ome:
        if "plate" in (ome or attrs):
            raise PopsegError(f"{path} is an HCS plate; point 'input' at one field (e.g. {path}/A/1/0)")
        raise PopsegError(
            f"{path} is a Zarr group without OME-NGFF multiscales metadata; "
            "point 'input' at an image group or at a Zarr array"
        )
    ms = ome["multiscales"][0]
    axes_meta = ms.get("axes")
    if axes_meta is None:
        axes_meta = ["t", "c", "z", "y", "x"]  # NGFF <= 0.3 had no axes: 5D tczyx
    names_units = [(a, None) if isinstance(a, str) else (a["name"], a.get("unit")) for a in axes_meta]
    axes = "".join(n.lower()[0] if n.lower() in DIMS + ("z",) else "?" for n, _ in names_units)
    level0 = ms["datasets"][0]
    arr_path = path / level0["path"]
    scale = {}
    for tr in level0.get("coordinateTransformations", []):
        if tr.get("type") == "scale":
            scale = {ax: float(s) for ax, s in zip(axes, tr["scale"])}
    unit = dict(names_units).get("x")
    channels = None
    omero = ome.get("omero") or {}
    if omero.get("channels"):
        channels = [str(ch.get("label", i)) for i, ch in enumerate(omero["channels"])]
    src = {
        "path": path.url,
        "format": "ome-zarr",
        "ngff_version": version,
        "level_path": level0["path"],
        "levels": [str(d["path"]) for d in ms["datasets"]],  # for viewers: coarser levels to browse
        "axes": axes,
        "unit_to_um": _UNIT_TO_UM.get(str(unit).lower()) if unit else None,
    }
    level = _zarr_open(arr_path)
    src["zarr_format"] = level.metadata.zarr_format
    src.update(_stored_layout(arr_path, level, axes))
    return _dask_array(arr_path, level), axes, channels, scale, src


def _stored_layout(path: Location, arr, axes: str) -> dict[str, Any]:
    """Where the pixels are stored and how frames map to stored objects (for input identity)."""
    ok = len(axes) == arr.ndim
    t_axis = axes.index("t") if "t" in axes and ok else None
    c_axis = axes.index("c") if "c" in axes and ok else None
    blocks = getattr(arr, "shards", None) or arr.chunks  # a sharded array stores one object per shard
    return {"array": path.url, "t_axis": t_axis, "t_block": int(blocks[t_axis]) if t_axis is not None else 1,
            "c_axis": c_axis, "c_block": int(blocks[c_axis]) if c_axis is not None else 1}


def _dask_array(path: Location, arr) -> da.Array:
    # a local array by path (what workers open themselves); a remote one as the opened array, whose
    # store (with its options) pickles to the workers
    return da.from_zarr(path.url if path.is_local else arr)


# --------------------------------------------------------------------------- TIFF

@functools.lru_cache(maxsize=16)
def _tiff_zarr(path: str, mtime: float, series: int):
    import tifffile

    store = tifffile.imread(path, aszarr=True, series=series, level=0)
    return zarr.open(store, mode="r")


class _TiffPages:
    """Picklable, lazy array view of one TIFF series via tifffile's Zarr store.

    Only the path travels to workers; each worker process opens the file once
    (an LRU cache keyed by path and modification time) and reads only the pages
    its tasks ask for.
    """

    def __init__(self, path: str, series: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.series = path, series
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __getitem__(self, key):
        z = _tiff_zarr(self.path, os.stat(self.path).st_mtime, self.series)
        return np.asarray(z[key])


def _open_tiff(path: Path, dims: str | None, channels: list[str] | None):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, axes = series.shape, series.dtype, series.axes.lower()
            names, scale, unit = _tiff_metadata(tif)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        raise PopsegError(f"{path} is not a readable TIFF ({err}); check the file") from None
    src = {"path": str(path.resolve()), "format": "tiff", "unit_to_um": unit}
    # 's' (samples) is RGB: not a fluorescence movie; 'q'/'i' are unlabelled page sequences.
    if "s" in axes:
        raise PopsegError(f"{path} is an RGB(A) image; popseg expects one grey level per channel")
    arr = da.from_array(
        _TiffPages(str(path.resolve()), 0, shape, dtype),
        chunks=tuple(1 if a not in "yx" else n for a, n in zip(axes, shape)),
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * len(shape), dtype=dtype),  # else dask reads a slice to learn the type
        name=f"tiff-{path.name}-{os.stat(path).st_mtime_ns}",
    )
    if dims is not None and len(dims) == arr.ndim:
        axes = dims
    elif axes[0] in "qi" and len(axes) == 3:
        # Celldetective's stacks: one page per (frame, channel), channel fastest.
        n_c = len(channels) if channels else 1
        if shape[0] % n_c:
            raise PopsegError(
                f"{path} has {shape[0]} pages, not a multiple of the {n_c} channels named in the config; "
                "check 'channels'"
            )
        arr = arr.reshape(shape[0] // n_c, n_c, *shape[1:])
        axes = "tcyx"
    axes = axes.replace("i", "t").replace("q", "t")
    if len(set(axes)) != len(axes):
        raise PopsegError(f"{path}: cannot map TIFF axes '{series.axes}' to t, c, y, x; give 'dims' in the config")
    return arr, axes, names, scale, src


def _tiff_metadata(tif) -> tuple[list[str] | None, dict, float | None]:
    """Channel names, per-axis scale and unit factor from OME or ImageJ metadata."""
    names, scale, unit = None, {}, None
    if tif.is_ome and tif.ome_metadata:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(tif.ome_metadata)
        ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
        pix = root.find(".//ome:Pixels", ns) if ns else root.find(".//Pixels")
        if pix is not None:
            chans = pix.findall("ome:Channel", ns) if ns else pix.findall("Channel")
            got = [c.get("Name") for c in chans]
            if got and all(got):
                names = got
            if pix.get("PhysicalSizeX"):
                scale = {"x": float(pix.get("PhysicalSizeX")), "y": float(pix.get("PhysicalSizeY", pix.get("PhysicalSizeX")))}
                unit = _UNIT_TO_UM.get(pix.get("PhysicalSizeXUnit", "µm").lower(), 1.0)
    elif tif.is_imagej:
        meta = tif.imagej_metadata or {}
        labels = meta.get("Labels")
        n_c = meta.get("channels", 1)
        if isinstance(labels, list) and len(labels) >= n_c and n_c > 1:
            names = [str(x) for x in labels[:n_c]]
        try:
            xres = tif.pages[0].tags["XResolution"].value
            if xres and xres[0]:
                scale = {"x": xres[1] / xres[0], "y": xres[1] / xres[0]}
                unit = _UNIT_TO_UM.get(str(meta.get("unit", "")).lower().replace("\\u00b5", "µ"))
        except KeyError:
            pass
    return names, scale, unit


# --------------------------------------------------------------------------- inspect

def describe(path: "str | os.PathLike | Location", **kwargs) -> dict:
    """Summarise a movie or a popseg output without reading pixels.

    Returns a dict with dims, shape, channels, chunks, dtype, pixel size and the
    label images found beside it (OME-Zarr ``labels`` group).
    """
    from .record import stored_record

    path = Location.of(path)
    out: dict[str, Any] = {"path": path.url}
    labels_dir = path / "labels"
    # (an HTTP server cannot list a folder: a URL input is described without its labels)
    names = [n for n in labels_dir.list() if not n.startswith(".") and n != "zarr.json"] if not path.read_only else []
    if names:
        out["labels"] = _describe_labels(labels_dir, names)
        rec = stored_record(path)
        if rec:
            out["run"] = {k: rec.get(k) for k in ("complete", "input", "started", "finished")}
    try:
        movie = open_movie(path, **kwargs)
    except PopsegError:
        if "labels" not in out:
            raise
        out["image"] = None
        return out
    out.update(
        format=movie.attrs["source"]["format"],
        dims=list(movie.dims),
        shape=list(movie.shape),
        channels=[str(c) for c in movie.c.values],
        chunks=[list(c) if len(set(c)) > 1 else c[0] for c in movie.data.chunks],
        dtype=str(movie.dtype),
        pixel_size_um=movie.attrs["pixel_size_um"],
    )
    return out


def _describe_labels(labels_dir: Location, names: list[str]) -> dict:
    found = {}
    for name in names:
        child = labels_dir / name
        try:
            arr = zarr.open_array(store=(child / "0").zarr_store(read_only=True), mode="r")
            grp = zarr.open_group(store=child.zarr_store(read_only=True), mode="r")
        except Exception:
            continue
        rec = (dict(grp.attrs).get("popseg") or {})
        found[name] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "chunks": list(arr.chunks),
            "complete": rec.get("complete"),
            "n_objects": rec.get("n_objects"),
        }
    return found
