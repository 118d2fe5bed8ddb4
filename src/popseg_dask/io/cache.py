"""Cached network outputs (``cache: model_outputs``): one write-once object per window.

A model population's network outputs (StarDist's probabilities and distances, Cellpose's flows
and cell probability) are stored as float16 in ``<output>/cache/<population>/``, one compressed
``.npz`` per window of a frame, named by the frame and the window's box in movie pixels. A window
is cut the same way in every run of one tile plan, so a re-run finds the windows it needs; a
merge's grown window that a new threshold makes different is simply computed and added.

``cache.json`` says what the outputs were computed from: the population's ``labels_from`` minus
its post-processing settings, and its hash. A cache of anything else is deleted before a run uses
it (:meth:`ModelOutputCache.open_for`), so stale outputs are never read.

A task that Dask runs twice writes the same bytes under the same name, and a reader never sees
half an object (a local file is renamed into place, an object store's PUT is atomic).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..location import Location

__all__ = ["ModelOutputCache"]

_META = "cache.json"


@dataclass(frozen=True)
class ModelOutputCache:
    """The network outputs of one population; picklable (workers get it with the segmenter)."""

    root: Location

    def _object(self, frame: int, box: tuple[int, int, int, int]) -> Location:
        return self.root / f"t{int(frame):06d}" / ("_".join(str(int(v)) for v in box) + ".npz")

    def load(self, frame: int, box: tuple[int, int, int, int]) -> dict[str, np.ndarray] | None:
        """The outputs of frame ``frame``'s window ``box`` (y0, x0, height, width), or None."""
        loc = self._object(frame, box)
        try:
            with np.load(io.BytesIO(loc.read_bytes())) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, zipfile.BadZipFile):
            return None  # damaged (a disk filled mid-write): computed again and rewritten

    def save(self, frame: int, box: tuple[int, int, int, int], arrays: dict[str, np.ndarray]) -> None:
        """Store a window's outputs (as they are: the segmenter rounds them before using them)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        # renamed into place locally, one PUT on object stores: never seen half-written; a
        # window computed twice (a retried task) writes the same bytes again
        self._object(frame, box).write_bytes(buf.getvalue())

    def meta(self) -> dict[str, Any] | None:
        """``cache.json`` (None: no cache)."""
        try:
            return json.loads((self.root / _META).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def open_for(self, fingerprint: str, network_from: dict[str, Any]) -> bool:
        """Make this the cache of ``network_from``: True if it already was (its outputs are kept),
        False if it was of something else or absent (deleted and started afresh)."""
        meta = self.meta()
        if meta and meta.get("fingerprint") == fingerprint:
            return True
        self.root.delete()
        (self.root / _META).write_bytes(json.dumps({"fingerprint": fingerprint, "network_from": network_from},
                                                   indent=1, sort_keys=True).encode())
        return False

    def size(self) -> tuple[int, int]:
        """(bytes, frames) stored, from one recursive listing (not one request per object)."""
        sizes = _sizes(self.root)
        windows = {rel: v for rel, v in sizes.items() if "/" in rel and rel.startswith("t")}
        return sum(windows.values()), len({rel.split("/", 1)[0] for rel in windows})

    def drop(self) -> None:
        """Delete every output and ``cache.json``."""
        self.root.delete()


def _sizes(root: Location) -> dict[str, int]:
    """Every object under ``root`` by its relative path, with its size."""
    if root.is_local:
        base = root.url
        out = {}
        for folder, _, files in os.walk(base):
            for name in files:
                path = os.path.join(folder, name)
                out[os.path.relpath(path, base).replace(os.sep, "/")] = os.path.getsize(path)
        return out
    try:
        found = root.fs().find(root.path, detail=True)
    except FileNotFoundError:
        return {}
    prefix = root.path.rstrip("/") + "/"
    return {p[len(prefix):]: int(info.get("size") or 0) for p, info in found.items() if p.startswith(prefix)}
