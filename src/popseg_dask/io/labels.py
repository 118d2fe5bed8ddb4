"""Write label images as OME-NGFF ``image-label`` groups, one per population.

Layout of an output store (``<output>``)::

    <output>/                     root group; attrs["popseg"] holds the run record
    <output>/labels/              attrs: the NGFF 'labels' list
    <output>/labels/<population>/ multiscales + image-label metadata
    <output>/labels/<population>/0  uint32 (t, y, x) array, one chunk row per frame
    <output>/.popseg/scratch/     per-frame local labels, removed when the run completes

NGFF 0.5 (Zarr v3) is written by default; 0.4 (Zarr v2) when labels are added in place
to a 0.4 image. Every array chunk has exactly one writer: chunks are ``(1, cy, cx)``
and a task always writes whole frames.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import PopsegError

__all__ = ["LabelStore", "label_chunks", "read_run_record"]

RECORD_KEY = "popseg"


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
        self.ngff_version = ngff_version
        self.zarr_format = 3 if ngff_version == "0.5" else 2

    # ----------------------------------------------------------- paths
    def label_path(self, population: str) -> Path:
        return self.root / "labels" / population

    def scratch_path(self, population: str) -> Path:
        return self.root / ".popseg" / "scratch" / population

    def state_path(self) -> Path:
        """Where the run's ledger (per-frame completion) lives until the run completes."""
        return self.root / ".popseg"

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
                if self.label_path(pop).exists():
                    if not overwrite:
                        raise PopsegError(
                            f"labels for population '{pop}' already exist in {self.root}; pass --overwrite to replace them"
                        )
                    shutil.rmtree(self.label_path(pop))
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            zarr.open_group(str(self.root), mode="a", zarr_format=self.zarr_format)
        except PermissionError:
            raise PopsegError(f"cannot write output {self.root}: permission denied; choose a writable 'output'") from None
        except OSError as err:
            raise PopsegError(f"cannot write output {self.root}: {err.strerror}; choose a writable 'output'") from None
        shutil.rmtree(self.root / ".popseg", ignore_errors=True)
        return "fresh"

    def create_scratch(self, population: str, shape: tuple[int, int, int], tile: tuple[int, int],
                       dtype=np.uint32) -> str:
        """Create (or, resuming, reopen) the scratch array of a population's provisional ids,
        chunked by the tile cores."""
        p = self.scratch_path(population)
        if p.exists():
            try:
                old = zarr.open_array(str(p), mode="r")
                if old.shape == tuple(shape) and old.chunks == (1, *tile) and old.dtype == np.dtype(dtype):
                    return str(p)
            except Exception:
                pass  # unreadable leftovers: start the array again
        zarr.create_array(
            store=str(p), shape=shape, chunks=(1, *tile), dtype=dtype,
            fill_value=0, zarr_format=self.zarr_format, overwrite=True,
        )
        return str(p)

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
        grp_path = self.label_path(population)
        if keep and (grp_path / "0").exists():
            try:
                old = zarr.open_array(str(grp_path / "0"), mode="r")
                if old.shape == tuple(shape) and old.dtype == np.dtype(dtype):
                    return str(grp_path / "0")
            except Exception:
                pass
        labels_grp = zarr.open_group(str(self.root / "labels"), mode="a", zarr_format=self.zarr_format)
        grp = zarr.open_group(str(grp_path), mode="w", zarr_format=self.zarr_format)
        zarr.create_array(
            store=str(grp_path / "0"), shape=shape, chunks=label_chunks(shape[1:]), dtype=dtype,
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
        return str(grp_path / "0")

    # ----------------------------------------------------------- records
    def write_record(self, record: dict[str, Any]) -> None:
        """Store the run record in the root group's attributes (and as JSON beside it)."""
        grp = zarr.open_group(str(self.root), mode="a", zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = record

    def read_record(self) -> dict[str, Any] | None:
        try:
            grp = zarr.open_group(str(self.root), mode="r")
        except Exception:
            return None
        return dict(grp.attrs).get(RECORD_KEY)

    def mark_population(self, population: str, info: dict[str, Any]) -> None:
        grp = zarr.open_group(str(self.label_path(population)), mode="a", zarr_format=self.zarr_format)
        grp.attrs[RECORD_KEY] = info

    def drop_scratch(self) -> None:
        shutil.rmtree(self.root / ".popseg", ignore_errors=True)


def relative_source(label_group: Path, image: Path) -> str:
    """``image-label.source.image``: the image's path relative to the label group."""
    return os.path.relpath(Path(image).resolve(), Path(label_group).resolve())


def read_run_record(output: Path | str, *, complete: bool = True) -> dict[str, Any]:
    """The run record of a popseg output store.

    Raises
    ------
    PopsegError
        If ``output`` is not a popseg output, or (with ``complete``) its run did not finish.
    """
    try:
        rec = dict(zarr.open_group(str(output), mode="r").attrs).get(RECORD_KEY)
    except Exception:
        rec = None
    if not rec:
        raise PopsegError(f"{output} is not a popseg output (no run record); give the folder `popseg run` wrote")
    if complete and not rec.get("complete"):
        raise PopsegError(f"the run in {output} is not complete; re-run `popseg run` to finish it first")
    return rec
