"""Write label images as OME-NGFF ``image-label`` groups, one per population.

Where things go is :class:`~popseg_dask.io.layout.OutputLayout`'s to say. NGFF 0.5 (Zarr v3) is
written by default; 0.4 (Zarr v2) when labels are added in place to a 0.4 image. Every array
chunk has exactly one writer: chunks are ``(1, cy, cx)`` and a task always writes whole frames.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import PopsegError
from .layout import RECORD_KEY, OutputLayout
from .record import RunRecord, stored_record

__all__ = ["LabelStore", "create_scratch", "label_chunks", "relative_source"]


def label_chunks(shape_yx: tuple[int, int], max_chunk: int = 2048) -> tuple[int, int, int]:
    """Chunk shape of a (t, y, x) label array: one frame deep, at most ``max_chunk`` wide."""
    return (1, min(shape_yx[0], max_chunk), min(shape_yx[1], max_chunk))


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

    def __init__(self, root: Path | str, ngff_version: str = "0.5"):
        if ngff_version not in ("0.4", "0.5"):
            raise ValueError(f"unsupported NGFF version {ngff_version}")
        self.root = Path(root)
        self.paths = OutputLayout(self.root)
        self.ngff_version = ngff_version
        self.zarr_format = 3 if ngff_version == "0.5" else 2

    # ----------------------------------------------------------- creation
    def prepare(self, *, overwrite: bool, in_place: bool, populations: list[str],
                fingerprint: str | None = None) -> str:
        """Create the root group, refusing to clobber results unless asked.

        With ``in_place`` the root is the input image itself: only the named
        populations' label groups may be replaced, nothing else is touched.

        Returns ``"fresh"``, ``"resume"`` (an unfinished run with the same ``fingerprint`` is
        there: its finished frames are kept) or ``"complete"`` (that run already finished).
        """
        if not in_place and self.root.exists() and not overwrite:
            rec = self.read_record()
            if rec is None:
                raise PopsegError(
                    f"output {self.root} already exists; pass --overwrite to replace it or set another 'output'"
                )
            if fingerprint is None or rec.get("fingerprint") != fingerprint:
                raise PopsegError(
                    f"output {self.root} holds a run of another configuration or input; pass --overwrite to "
                    "replace it (its results would be lost) or set another 'output'"
                )
            if rec.get("complete"):
                return "complete"
            return "resume"
        if not in_place and self.root.exists():
            if not (self.root / "zarr.json").exists() and not (self.root / ".zgroup").exists():
                raise PopsegError(
                    f"output {self.root} exists and is not a Zarr store; refusing to delete it with --overwrite"
                )
            shutil.rmtree(self.root)
        if in_place:
            for pop in populations:
                if self.paths.label_group(pop).exists():
                    if not overwrite:
                        raise PopsegError(
                            f"labels for population '{pop}' already exist in {self.root}; pass --overwrite to replace them"
                        )
                    shutil.rmtree(self.paths.label_group(pop))
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(self.root), mode="a", zarr_format=self.zarr_format)
        except PermissionError:
            raise PopsegError(f"cannot write output {self.root}: permission denied; choose a writable 'output'") from None
        except OSError as err:
            raise PopsegError(f"cannot write output {self.root}: {err.strerror}; choose a writable 'output'") from None
        return "fresh"

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
    ) -> str:
        """Create a population's NGFF label image (empty) and return its array path.

        With ``keep``, an existing one of the same shape and dtype (a resumed run's) is kept.
        """
        grp_path, arr_path = self.paths.label_group(population), self.paths.label_array(population)
        if keep and arr_path.exists():
            try:
                old = zarr.open_array(str(arr_path), mode="r")
                if old.shape == tuple(shape) and old.dtype == np.dtype(dtype):
                    return str(arr_path)
            except Exception:
                pass
        labels_grp = zarr.open_group(str(self.paths.labels_group), mode="a", zarr_format=self.zarr_format)
        grp = zarr.open_group(str(grp_path), mode="w", zarr_format=self.zarr_format)
        zarr.create_array(
            store=str(arr_path), shape=shape, chunks=label_chunks(shape[1:]), dtype=dtype,
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
        return str(arr_path)

    # ----------------------------------------------------------- records
    def write_record(self, record: RunRecord) -> None:
        """Store the run record in the root group's attributes."""
        grp = zarr.open_group(str(self.root), mode="a", zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = record

    def read_record(self) -> RunRecord | None:
        return stored_record(self.root)

    def mark_population(self, population: str, info: dict[str, Any]) -> None:
        """Store a finished population's record in its label group's attributes."""
        grp = zarr.open_group(str(self.paths.label_group(population)), mode="a", zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = info


def create_scratch(path: Path | str, shape: tuple[int, int, int], tile: tuple[int, int], dtype,
                   zarr_format: int) -> str:
    """Create (or, resuming, reopen) a scratch array chunked by the tile cores; returns its path."""
    p = Path(path)
    if p.exists():
        try:
            old = zarr.open_array(str(p), mode="r")
            if old.shape == tuple(shape) and old.chunks == (1, *tile) and old.dtype == np.dtype(dtype):
                return str(p)
        except Exception:
            pass  # unreadable leftovers: start the array again
    zarr.create_array(store=str(p), shape=shape, chunks=(1, *tile), dtype=dtype, fill_value=0,
                      zarr_format=zarr_format, overwrite=True)
    return str(p)


def relative_source(label_group: Path, image: Path) -> str:
    """``image-label.source.image``: the image's path relative to the label group."""
    return os.path.relpath(Path(image).resolve(), Path(label_group).resolve())
