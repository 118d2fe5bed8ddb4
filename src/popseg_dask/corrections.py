"""Proofread labels: corrected frames kept beside a run's labels, never over them.

A population's corrections live in their own NGFF label image, ``labels/<population>-corrected``,
of the same shape, dtype and grid as the run's ``labels/<population>``. Only corrected frames are
written; the group's ``popseg_correction`` attribute says which frames they are, from which
labels (the population's fingerprint when they were corrected), and every save with its time.

Rules:

* The run's labels are never written here: a save takes the output's lease (so it never races a
  run) and writes only the corrected image.
* Ids stay unique across the movie: in a saved frame, an id the frame already had (in the run's
  labels or an earlier correction of that frame) keeps its number; every other id becomes a new
  one, above every id of the run and of earlier corrections (``next_id``). Painting with an id of
  another frame can therefore never make two objects one.
* Pixels are written first, the record last: a save that dies halfway leaves the record naming
  the frames of the last complete save.

The edit helpers (:func:`merge_objects`, :func:`delete_object`, :func:`fill_object_holes`,
:func:`split_object`) work on one frame in memory and return a new array.
"""

from __future__ import annotations

import getpass
import socket
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import zarr

from .errors import PopsegError
from .io.layout import CORRECTED_SUFFIX, CORRECTION_KEY, OutputLayout
from .io.lease import Lease
from .io.record import read_run_record
from .location import Location

__all__ = ["CORRECTED_SUFFIX", "CORRECTION_KEY", "Corrections", "corrected_name", "delete_object",
           "fill_object_holes", "frame_for_editing", "merge_objects", "open_corrections", "save_corrections",
           "split_object"]

def corrected_name(population: str) -> str:
    """The label image holding a population's corrections."""
    return population + CORRECTED_SUFFIX


@dataclass
class Corrections:
    """A population's corrections in an output (see the module's rules)."""

    output: Location
    population: str
    record: dict[str, Any]

    @property
    def frames(self) -> list[int]:
        """The corrected frames, sorted."""
        return sorted(int(t) for t in self.record.get("frames", []))

    @property
    def location(self) -> Location:
        return OutputLayout(self.output).label_array(corrected_name(self.population))

    def array(self) -> zarr.Array:
        return zarr.open_array(store=self.location.zarr_store(read_only=True), mode="r")

    def frame(self, t: int) -> np.ndarray:
        """Corrected frame ``t`` (it must be one of :attr:`frames`)."""
        if t not in self.frames:
            raise PopsegError(f"frame {t} of {self.population} has no correction; corrected frames: {self.frames}")
        return np.asarray(self.array()[t])


def open_corrections(output: "Location | str", population: str) -> Corrections | None:
    """The population's corrections, or None when it has none."""
    output = Location.of(output)
    grp_loc = OutputLayout(output).label_group(corrected_name(population))
    try:
        grp = zarr.open_group(store=grp_loc.zarr_store(read_only=True), mode="r")
    except Exception:
        return None
    rec = dict(grp.attrs).get(CORRECTION_KEY)
    return Corrections(output, population, rec) if rec else None


def _run_population(output: Location, population: str) -> dict[str, Any]:
    rec = read_run_record(output, complete=False)
    pops = rec.get("populations", {})
    if population not in pops:
        raise PopsegError(f"population {population!r} is not in {output}; it has {sorted(pops)}")
    return pops[population]


def frame_for_editing(output: "Location | str", population: str, t: int) -> np.ndarray:
    """Frame ``t`` as it stands: its latest correction, else the run's labels."""
    output = Location.of(output)
    _run_population(output, population)
    corr = open_corrections(output, population)
    if corr is not None and t in corr.frames:
        return corr.frame(t)
    arr = zarr.open_array(store=OutputLayout(output).label_array(population).zarr_store(read_only=True), mode="r")
    if not 0 <= t < arr.shape[0]:
        raise PopsegError(f"frame {t} is outside the movie (frames 0..{arr.shape[0] - 1})")
    return np.asarray(arr[t])


def save_corrections(output: "Location | str", population: str, frames: Mapping[int, np.ndarray], *,
                     echo=lambda msg: None) -> dict[str, Any]:
    """Save corrected frames of a population, beside its run labels.

    Parameters
    ----------
    output : path or URL
        A popseg output.
    population : str
    frames : mapping of frame index to (y, x) integer array
        The frames as corrected. A frame equal to what it corrects is not recorded.
    echo : callable
        Receives a one-line message when the lease of a stopped run is taken over.

    Returns
    -------
    dict
        The corrections' record (``frames``, ``from``, ``next_id``, ``saves``), with ``saved``:
        the frames this save wrote, and ``renumbered``: per frame, the ids given new numbers.
    """
    output = Location.of(output)
    pop_rec = _run_population(output, population)
    layout = OutputLayout(output)
    source = zarr.open_array(store=layout.label_array(population).zarr_store(read_only=True), mode="r")
    frames = {int(t): _checked_frame(np.asarray(f), t, source) for t, f in frames.items()}
    lease = Lease(layout.lease)
    lease.acquire(echo)
    try:
        target, record = _open_or_create(output, population, source, pop_rec)
        done, renumbered = _write_frames(target, source, record, frames)
        if done:
            record["frames"] = sorted(set(record["frames"]) | set(done))
            record["saves"].append({"saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "frames": done,
                                    "by": f"{getpass.getuser()}@{socket.gethostname()}"})
            lease.check()
            _group(output, population, "a").attrs[CORRECTION_KEY] = record  # last: names complete frames only
    finally:
        lease.release()
    return {**record, "saved": done, "renumbered": renumbered}


def _checked_frame(frame: np.ndarray, t: int, source: zarr.Array) -> np.ndarray:
    if not 0 <= t < source.shape[0]:
        raise PopsegError(f"frame {t} is outside the movie (frames 0..{source.shape[0] - 1})")
    if frame.shape != tuple(source.shape[1:]):
        raise PopsegError(f"corrected frame {t} is {frame.shape}, the labels' frames {tuple(source.shape[1:])}")
    if frame.dtype.kind not in "ui" or (frame.size and frame.min() < 0):
        raise PopsegError(f"corrected frame {t} must hold non-negative integer ids, not {frame.dtype}")
    return frame


def _group(output: Location, population: str, mode: str) -> zarr.Group:
    loc = OutputLayout(output).label_group(corrected_name(population))
    return zarr.open_group(store=loc.zarr_store(read_only=mode == "r"), mode=mode)


def _open_or_create(output: Location, population: str, source: zarr.Array, pop_rec: dict) -> tuple[zarr.Array, dict]:
    """The corrected array and its record, creating both (empty) on the first save."""
    layout = OutputLayout(output)
    name = corrected_name(population)
    corr = open_corrections(output, population)
    arr_loc = layout.label_array(name)
    if corr is not None:
        return zarr.open_array(store=arr_loc.zarr_store(), mode="r+"), dict(corr.record)
    fmt = source.metadata.zarr_format
    orig = dict(zarr.open_group(store=layout.label_group(population).zarr_store(read_only=True), mode="r").attrs)
    grp = zarr.open_group(store=layout.label_group(name).zarr_store(), mode="w", zarr_format=fmt)
    if fmt == 3:
        ome = dict(orig.get("ome", {}))
        ome["multiscales"] = [{**m, "name": name} for m in ome.get("multiscales", [])]
        grp.attrs["ome"] = ome
    else:
        grp.attrs.update({k: v for k, v in orig.items() if k in ("multiscales", "image-label")})
    arr = zarr.create_array(store=arr_loc.zarr_store(), shape=source.shape, dtype=source.dtype,
                            chunks=source.chunks, shards=getattr(source, "shards", None), fill_value=0,
                            zarr_format=fmt, overwrite=True,
                            dimension_names=["t", "y", "x"] if fmt == 3 else None)
    _register(layout, name, fmt)
    record = {"population": population, "from": f"labels/{population}",
              "from_fingerprint": pop_rec.get("fingerprint"), "frames": [],
              "next_id": int(pop_rec.get("n_objects", 0)) + 1, "saves": []}
    return arr, record


def _register(layout: OutputLayout, name: str, fmt: int) -> None:
    """Add the corrected image to the output's NGFF ``labels`` list."""
    labels_grp = zarr.open_group(store=layout.labels_group.zarr_store(), mode="a", zarr_format=fmt)
    attrs = dict(labels_grp.attrs)
    holder = attrs.get("ome", {}) if fmt == 3 else attrs
    names = sorted(set(holder.get("labels", [])) | {name})
    if fmt == 3:
        labels_grp.attrs["ome"] = {**holder, "labels": names}
    else:
        labels_grp.attrs["labels"] = names


def _write_frames(target: zarr.Array, source: zarr.Array, record: dict, frames: dict[int, np.ndarray]):
    """Write each changed frame with the id rule of the module; returns (frames written, renumbered)."""
    done, renumbered = [], {}
    for t in sorted(frames):
        base = np.asarray(target[t]) if t in record["frames"] else np.asarray(source[t])
        new, moved, record["next_id"] = _unique_ids(frames[t], base, record["next_id"], source.dtype)
        if np.array_equal(new, base):
            continue
        target[t] = new
        done.append(t)
        if moved:
            renumbered[t] = moved
    return done, renumbered


def _unique_ids(frame: np.ndarray, base: np.ndarray, next_id: int, dtype) -> tuple[np.ndarray, dict, int]:
    """``frame`` with every id that ``base`` lacks renumbered from ``next_id`` on."""
    own = set(np.unique(base).tolist())
    ids = np.unique(frame)
    fresh = [int(i) for i in ids if i and int(i) not in own]
    if next_id + len(fresh) - 1 > np.iinfo(dtype).max:
        raise PopsegError(f"too many objects for the labels' dtype {np.dtype(dtype)}")
    lut_from = np.array(fresh, dtype=np.int64)
    lut_to = np.arange(next_id, next_id + len(fresh), dtype=np.int64)
    out = frame.astype(dtype, copy=True)
    if fresh:
        idx = np.searchsorted(lut_from, frame)
        hit = (idx < len(lut_from)) & (lut_from[np.minimum(idx, len(lut_from) - 1)] == frame)
        out[hit] = lut_to[idx[hit]].astype(dtype)
    moved = {f: int(n) for f, n in zip(fresh, lut_to) if f != n}
    return out, moved, next_id + len(fresh)


# ----------------------------------------------------------------------------- edit helpers
def merge_objects(frame: np.ndarray, keep: int, other: int) -> np.ndarray:
    """Object ``other`` becomes part of ``keep``."""
    _present(frame, keep, other)
    out = frame.copy()
    out[out == other] = keep
    return out


def delete_object(frame: np.ndarray, label: int) -> np.ndarray:
    """Object ``label`` becomes background."""
    _present(frame, label)
    out = frame.copy()
    out[out == label] = 0
    return out


def fill_object_holes(frame: np.ndarray, label: int) -> np.ndarray:
    """Background enclosed by object ``label`` becomes part of it (other objects stay)."""
    from scipy import ndimage as ndi

    _present(frame, label)
    obj = frame == label
    out = frame.copy()
    out[ndi.binary_fill_holes(obj) & (frame == 0)] = label
    return out


def split_object(frame: np.ndarray, label: int, line: np.ndarray, new_id: int) -> tuple[np.ndarray, list[int]]:
    """Cut object ``label`` along a drawn polyline (points ``(y, x)``, in pixels).

    The largest piece keeps ``label``; the others get ``new_id``, ``new_id + 1``, ...; the line's
    own pixels go to the largest piece. Pieces are 4-connected, so a one-pixel line cuts.

    Returns
    -------
    frame, new ids
    """
    from scipy import ndimage as ndi
    from skimage.draw import line as draw_line

    _present(frame, label)
    pts = np.round(np.asarray(line, dtype=float)).astype(int)
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] != 2:
        raise PopsegError("draw the split as a line of at least two points (y, x)")
    cut = np.zeros(frame.shape, bool)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(y0, x0, y1, x1)
        ok = (rr >= 0) & (rr < frame.shape[0]) & (cc >= 0) & (cc < frame.shape[1])
        cut[rr[ok], cc[ok]] = True
    obj = frame == label
    pieces, n = ndi.label(obj & ~cut)
    if n < 2:
        raise PopsegError(f"the line does not cut object {label} in two; draw it across the object, edge to edge")
    sizes = np.bincount(pieces.ravel())[1:]
    order = [int(i) + 1 for i in np.argsort(-sizes, kind="stable")]
    out = frame.copy()
    new_ids = []
    for k, piece in enumerate(order[1:]):
        out[pieces == piece] = new_id + k
        new_ids.append(new_id + k)
    return out, new_ids


def _present(frame: np.ndarray, *labels: int) -> None:
    for lab in labels:
        if not lab or not np.any(frame == lab):
            raise PopsegError(f"object {lab} is not in this frame; pick an id shown in the layer")
