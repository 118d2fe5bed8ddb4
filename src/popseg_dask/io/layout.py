"""Where everything of a popseg output lives: the one place that spells the layout out.

Layout of an output store (``<output>``)::

    <output>/                         root group; attrs["popseg"] holds the run record
    <output>/labels/                  NGFF 'labels' group listing the populations
    <output>/labels/<population>/     NGFF image-label group; attrs["popseg"]: population record
    <output>/labels/<population>/0    the (t, y, x) label array
    <output>/.popseg-lease/<n>.json   the lease of the run writing the output (see lease.py)
    <output>/.popseg/                 the run's state while it runs (ledger, scratch); removed at the end
    <output>/.popseg/scratch/<pop>    provisional ids, chunked by tile cores
    <output>/.popseg/scratch/<pop>.aux  per-pixel facts of the segmenter's tile statistics
    <output>/cache/<pop>/             ``cache: model_outputs``: network outputs, one object per
                                      window (``t<frame>/<y0>_<x0>_<h>_<w>.npz``) and cache.json
    <output>/measurements.parquet     ``popseg measure``
    <output>/report/index.html        ``popseg report`` (PNGs beside it)
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..config import CORRECTED_SUFFIX
from ..location import Location

__all__ = ["CORRECTED_SUFFIX", "CORRECTION_KEY", "LEASE_DIR", "OutputLayout", "RECORD_KEY", "default_output",
           "input_stem"]

_SUFFIXES = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif")
LEASE_DIR = ".popseg-lease"
RECORD_KEY = "popseg"  # attribute holding the run record (root) and population records (label groups)
CORRECTION_KEY = "popseg_correction"  # attribute of a corrected label image: which frames, from what


@dataclass(frozen=True)
class OutputLayout:
    """Locations of one output store (``root``: a path or URL); nothing is read or created here."""

    root: Location

    def __init__(self, root: "Location | str | os.PathLike"):
        object.__setattr__(self, "root", Location.of(root))

    @property
    def labels_group(self) -> Location:
        return self.root / "labels"

    def label_group(self, population: str) -> Location:
        """The population's NGFF image-label group."""
        return self.labels_group / population

    def corrected_names(self) -> list[str]:
        """Label images of proofread frames in this output (``<population>-corrected``)."""
        if not self.labels_group.exists():
            return []
        return sorted(n for n in self.labels_group.list() if n.endswith(CORRECTED_SUFFIX))

    def label_array(self, population: str) -> Location:
        """The population's (t, y, x) label array (the group's only resolution level)."""
        return self.label_group(population) / "0"

    @property
    def lease(self) -> Location:
        """Where runs take their turn at writing this output."""
        return self.root / LEASE_DIR

    @property
    def state(self) -> Location:
        """The running run's own folder: ledger and scratch arrays."""
        return self.root / ".popseg"

    @property
    def ledger(self) -> Location:
        """Root of the per-frame ledger (:class:`popseg_dask.io.ledger.Ledger`)."""
        return self.state

    def scratch(self, population: str) -> Location:
        """Provisional ids of a population during a run."""
        return self.state / "scratch" / population

    def aux(self, population: str) -> Location:
        """Per-pixel facts a population's tile statistics stored during a run."""
        return self.state / "scratch" / f"{population}.aux"

    def model_cache(self, population: str) -> Location:
        """A population's cached network outputs (see :mod:`popseg_dask.io.cache`)."""
        return self.root / "cache" / population

    @property
    def measurements(self) -> Location:
        return self.root / "measurements.parquet"

    @property
    def report_dir(self) -> Location:
        return self.root / "report"


def input_stem(path: "Location | Path | str") -> str:
    """An input's name without its image suffix (``.ome.zarr``, ``.zarr``, ``.ome.tif``, ``.tif``...):
    what default output names are made of."""
    name = path.name if isinstance(path, Location) else posixpath.basename(os.fspath(path).rstrip("/"))
    for suf in _SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def default_output(input_path: "Location | Path | str") -> Location:
    """A movie's default output: ``<stem>.popseg.zarr`` beside it."""
    loc = Location.of(input_path)
    return loc.parent / f"{input_stem(loc)}.popseg.zarr"
