"""The run record: what a run was, stored in its output, and the one function that reads it.

The record is JSON in the output root's attributes (``attrs["popseg"]``); each population's
part is repeated in its label group's attributes once that population is complete. The types
below name every key a run writes, so readers (cli, report, measure, screen, export) need not
guess; older outputs may lack the newer keys (hence ``total=False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import zarr

from ..errors import PopsegError
from ..location import Location
from .layout import RECORD_KEY

__all__ = ["PopulationRecord", "RunRecord", "read_run_record", "stored_record"]


class PopulationRecord(TypedDict, total=False):
    """One population of a run: its segmenter (``describe()``) and what came out."""

    segmenter: str
    channels: list[str]
    halo: int
    link: int
    resources: dict[str, float] | None
    complete: bool
    n_objects: int
    objects_per_frame: list[int]
    dtype: str
    tile: list[int]
    tiles_per_frame: int
    numbering: str  # "direct" (a frame per task: final ids written by the segment pass) or "staged"
    whole_frame_reason: str | None
    merged_regions: int
    copied_clusters: int
    whole_frame_fallbacks: int
    largest_merge_px: int  # pixels of the largest window a merge re-segmented (0: no merge)
    tile_task_s: float
    merge_task_s: float
    stitch_share: float
    frames_computed: int
    labels_from: dict[str, Any]  # what the labels were computed from (popseg_dask._engine.lineage)
    fingerprint: str  # the hash of labels_from: a re-run keeps the labels while it is unchanged
    in_config: bool  # False: the last run's config no longer named it; its labels were kept


class RunRecord(TypedDict, total=False):
    """A run: input, config, versions, populations, timings; ``complete`` is written last."""

    complete: bool
    started: str
    finished: str
    resumed: list[str]
    input: str
    output: str
    config: dict[str, Any]
    fingerprint: str
    versions: dict[str, str]
    populations: dict[str, PopulationRecord]
    timings: dict[str, float]
    n_workers: int
    frames_computed: int
    up_to_date: bool  # only in what ``run`` returns: the output already held this run


def read_run_record(output: "Location | Path | str", *, complete: bool = True) -> RunRecord:
    """The run record of a popseg output store.

    Parameters
    ----------
    output : path
        The output store.
    complete : bool
        Refuse a run that did not finish.

    Raises
    ------
    PopsegError
        If ``output`` is not a popseg output, or (with ``complete``) its run did not finish.
    """
    rec = stored_record(output)
    if not rec:
        raise PopsegError(f"{output} is not a popseg output (no run record); give the folder `popseg run` wrote")
    if complete and not rec.get("complete"):
        raise PopsegError(f"the run in {output} is not complete; re-run `popseg run` to finish it first")
    return rec


def stored_record(output: "Location | Path | str") -> RunRecord | None:
    """The record in ``output``'s root attributes, or None (no store, no record)."""
    try:
        return dict(zarr.open_group(store=Location.of(output).zarr_store(read_only=True), mode="r").attrs).get(RECORD_KEY)
    except Exception:
        return None
