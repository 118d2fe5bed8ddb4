"""Write label images as OME-NGFF ``image-label`` groups, one per population.

Where things go is :class:`~popseg_dask.io.layout.OutputLayout`'s to say. NGFF 0.5 (Zarr v3) is
written by default; 0.4 (Zarr v2) when labels are added in place to a 0.4 image. Every array
chunk has exactly one writer: chunks are ``(1, cy, cx)`` and a task always writes whole frames.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import PopsegError
from ..location import Location
from .layout import LEASE_DIR, RECORD_KEY, OutputLayout
from .record import RunRecord, stored_record

__all__ = ["LabelGrid", "LabelStore", "create_scratch", "open_label_array", "relative_source"]


FRAMES_PER_SHARD = 8
CHUNK_PX = 512   # chunks napari reads while browsing
SHARD_PX = 2048  # a shard holds up to this many pixels a side


@dataclass(frozen=True)
class LabelGrid:
    """How a (t, y, x) label array is stored: chunks, and the shards that hold them (Zarr v3).

    Chunks are one frame deep and at most 512 px a side; a shard holds 8 frames and up to
    2048 px a side (one object per 8 frames of a 2048² movie). Zarr v2 (NGFF 0.4, in place) has
    no shards: chunks one frame deep, at most 2048 px. Every write covers whole shards (whole
    chunks without shards), and exactly one task writes each: zarr loses data when two writers
    touch one shard.
    """

    chunks: tuple[int, int, int]
    shards: tuple[int, int, int] | None

    @classmethod
    def for_shape(cls, shape_yx: tuple[int, int], zarr_format: int = 3) -> "LabelGrid":
        Y, X = shape_yx
        if zarr_format == 2:
            return cls((1, min(Y, SHARD_PX), min(X, SHARD_PX)), None)
        cy, cx = min(Y, CHUNK_PX), min(X, CHUNK_PX)
        sy = cy * max(1, min(-(-Y // cy), SHARD_PX // cy))
        sx = cx * max(1, min(-(-X // cx), SHARD_PX // cx))
        return cls((1, cy, cx), (FRAMES_PER_SHARD, sy, sx))

    @property
    def frames_per_write(self) -> int:
        """Frames one write covers (a shard's depth)."""
        return self.shards[0] if self.shards else 1

    def windows(self, shape_yx: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The spatial blocks of one write, (y0, y1, x0, x1), covering the frame."""
        (Y, X), (_, by, bx) = shape_yx, (self.shards or self.chunks)
        return [(y0, min(Y, y0 + by), x0, min(X, x0 + bx)) for y0 in range(0, Y, by) for x0 in range(0, X, bx)]


def _units(unit_to_um: float | None) -> str | None:
    return "micrometer" if unit_to_um is not None else None


class LabelStore:
    """An output store: scratch arrays during a run, NGFF label images at the end.

    Parameters
    ----------
    root : path
        The output Zarr store (created if missing).
    ngff_version : {"0.5", "0.4"}
        Metadata version; decides the Zarr format (v3 for 0.5, v2 for 0.4).
    """

    def __init__(self, root: "Location | Path | str", ngff_version: str = "0.5"):
        if ngff_version not in ("0.4", "0.5"):
            raise ValueError(f"unsupported NGFF version {ngff_version}")
        self.root = Location.of(root)
        self.paths = OutputLayout(self.root)
        self.ngff_version = ngff_version
        self.zarr_format = 3 if ngff_version == "0.5" else 2

    def _contents(self) -> list[str]:
        """What the output holds besides the lease of the run writing it."""
        return [n for n in self.root.list() if n != LEASE_DIR]

    # ----------------------------------------------------------- creation
    def prepare(self, *, overwrite: bool, in_place: bool) -> str:
        """Create the root group, refusing to clobber what is not a popseg output (call with the
        lease held). With ``overwrite`` everything but the lease is deleted first; with
        ``in_place`` the root is the input image itself and nothing is deleted here.

        Returns ``"fresh"`` (nothing of an earlier run is there) or ``"existing"`` (an earlier
        run's output: what to keep of it is :func:`popseg_dask._engine.lineage.decide`'s to say).
        """
        if in_place:
            return "existing" if self.read_record() else "fresh"
        contents = self._contents()
        if contents and not overwrite:
            if self.read_record() is None:
                raise PopsegError(f"output {self.root} already exists; pass --overwrite to replace it or set another 'output'")
            return "existing"
        if contents:
            corrected = self.paths.corrected_names()
            if corrected:
                raise PopsegError(
                    f"output {self.root} holds proofread labels ({', '.join('labels/' + n for n in corrected)}); "
                    "--overwrite would delete them: set another 'output', or move them away first")
            if "zarr.json" not in contents and ".zgroup" not in contents:
                raise PopsegError(
                    f"output {self.root} exists and is not a Zarr store; refusing to delete it with --overwrite"
                )
            for name in contents:  # everything but the lease this run holds
                (self.root / name).delete()
        try:
            zarr.open_group(store=self.root.zarr_store(), mode="a", zarr_format=self.zarr_format)
        except PermissionError:
            raise PopsegError(f"cannot write output {self.root}: permission denied; choose a writable 'output'") from None
        except OSError as err:
            raise PopsegError(f"cannot write output {self.root}: {err.strerror or err}; choose a writable 'output'") from None
        return "fresh"

    def stored_format(self) -> int | None:
        """The Zarr format of the existing root group (None: none there)."""
        names = set(self.root.list())
        return 3 if "zarr.json" in names else 2 if ".zgroup" in names else None

    def population_record(self, population: str) -> dict[str, Any] | None:
        """A label group's popseg record: None without the group, ``{}`` for a group of no run."""
        group = self.paths.label_group(population)
        if not group.exists():
            return None
        try:
            attrs = zarr.open_group(store=group.zarr_store(read_only=True), mode="r").attrs
        except Exception:
            return {}
        return dict(attrs.get(RECORD_KEY) or {})

    def drop_population(self, population: str) -> None:
        """Delete a population's label image and its entry in the ``labels`` list (others untouched)."""
        self.paths.label_group(population).delete()
        if not self.paths.labels_group.exists():
            return
        labels_grp = zarr.open_group(store=self.paths.labels_group.zarr_store(), mode="a", zarr_format=self.zarr_format)
        attrs = dict(labels_grp.attrs)
        holder = attrs.get("ome", {}) if self.ngff_version == "0.5" else attrs
        names = [n for n in holder.get("labels", []) if n != population]
        if self.ngff_version == "0.5":
            labels_grp.attrs["ome"] = {**holder, "labels": names}
        else:
            labels_grp.attrs["labels"] = names

    def create_labels(
        self,
        population: str,
        shape: tuple[int, int, int],
        dtype: np.dtype,
        *,
        source_image: str,
        scale: dict[str, float],
        unit_to_um: float | None,
        keep: bool = False,
    ) -> Location:
        """Create a population's NGFF label image (empty) and return its array's location.

        With ``keep``, an existing one of the same shape and dtype (a resumed run's) is kept.
        """
        grp_path, arr_path = self.paths.label_group(population), self.paths.label_array(population)
        if keep:
            try:
                old = zarr.open_array(store=arr_path.zarr_store(read_only=True), mode="r")
                if old.shape == tuple(shape) and old.dtype == np.dtype(dtype):
                    return arr_path
            except Exception:
                pass  # absent or unreadable: create it
        grid = LabelGrid.for_shape(shape[1:], self.zarr_format)
        labels_grp = zarr.open_group(store=self.paths.labels_group.zarr_store(), mode="a", zarr_format=self.zarr_format)
        grp = zarr.open_group(store=grp_path.zarr_store(), mode="w", zarr_format=self.zarr_format)
        zarr.create_array(
            store=arr_path.zarr_store(), shape=shape, chunks=grid.chunks, shards=grid.shards, dtype=dtype,
            fill_value=0, zarr_format=self.zarr_format, overwrite=True,
            dimension_names=["t", "y", "x"] if self.zarr_format == 3 else None,
        )
        unit = _units(unit_to_um)
        axes = [{"name": "t", "type": "time"}]
        for ax in ("y", "x"):
            axes.append({"name": ax, "type": "space", **({"unit": unit} if unit else {})})
        sc = [float(scale.get("t", 1.0)), float(scale.get("y", 1.0)), float(scale.get("x", 1.0))]
        multiscales = [{
            "name": population,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": sc}]}],
        }]
        image_label = {"source": {"image": source_image}}
        if self.ngff_version == "0.5":
            grp.attrs["ome"] = {"version": "0.5", "multiscales": multiscales, "image-label": image_label}
        else:
            multiscales[0]["version"] = "0.4"
            grp.attrs.update({"multiscales": multiscales, "image-label": {"version": "0.4", **image_label}})
        # Register the population in the parent 'labels' list (kept sorted, no duplicates).
        attrs = dict(labels_grp.attrs)
        holder = attrs.get("ome", {}) if self.ngff_version == "0.5" else attrs
        names = sorted(set(holder.get("labels", [])) | {population})
        if self.ngff_version == "0.5":
            labels_grp.attrs["ome"] = {"version": "0.5", "labels": names}
        else:
            labels_grp.attrs["labels"] = names
        return arr_path

    # ----------------------------------------------------------- records
    def write_record(self, record: RunRecord) -> None:
        """Store the run record in the root group's attributes."""
        grp = zarr.open_group(store=self.root.zarr_store(), mode="a", zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = record

    def read_record(self) -> RunRecord | None:
        return stored_record(self.root)

    def mark_population(self, population: str, info: dict[str, Any]) -> None:
        """Store a finished population's record in its label group's attributes."""
        grp = zarr.open_group(store=self.paths.label_group(population).zarr_store(), mode="a",
                              zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = info


def create_scratch(loc: Location, shape: tuple[int, int, int], tile: tuple[int, int], dtype,
                   zarr_format: int) -> Location:
    """Create (or, resuming, reopen) a scratch array chunked by the tile cores."""
    try:
        old = zarr.open_array(store=loc.zarr_store(read_only=True), mode="r")
        if old.shape == tuple(shape) and old.chunks == (1, *tile) and old.dtype == np.dtype(dtype):
            return loc
    except Exception:
        pass  # absent or unreadable leftovers: start the array again
    zarr.create_array(store=loc.zarr_store(), shape=shape, chunks=(1, *tile), dtype=dtype, fill_value=0,
                      zarr_format=zarr_format, overwrite=True)
    return loc


def open_label_array(output: "Location | Path | str", population: str, mode: str = "r") -> zarr.Array:
    """A population's label array in a run's output."""
    loc = OutputLayout(output).label_array(population)
    return zarr.open_array(store=loc.zarr_store(read_only=mode == "r"), mode=mode)


def relative_source(label_group: Location, image: Location) -> str:
    """``image-label.source.image``: the image relative to the label group (a URL when they live
    in different places)."""
    if label_group.is_local and image.is_local:
        return os.path.relpath(Path(image.url).resolve(), Path(label_group.url).resolve())
    if label_group.scheme == image.scheme and label_group.path.split("/", 1)[0] == image.path.split("/", 1)[0]:
        return posixpath.relpath(image.path, label_group.path)
    return image.url
