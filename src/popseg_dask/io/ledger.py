"""What a run has finished, frame by frame, kept on disk beside its output so a re-run resumes.

Layout under ``<output>/.popseg/`` (:attr:`OutputLayout.ledger <popseg_dask.io.layout.OutputLayout.ledger>`)::

    input.json                     per-frame tokens of the input the run started from
    frames/<population>/t000042.npz    anchors + stitching info of frame 42, written by the
                                       frame's merge task after its pixels are in the scratch array
    numbered/<population>/t000040-000047  marker, written after frames 40-47's final ids: empty,
                                       or (frames numbered directly, without a scratch
                                       array) their stitching facts as JSON

A frame counts as segmented only once its ``.npz`` exists, and files appear whole (written to a
temporary name, flushed, then renamed), so a run killed at any moment leaves either a finished
frame or none (locally through a rename, on an object store as one PUT). The final ids of a frame depend on the counts of all earlier frames, which never
change once written, so numbering is repeated safely. Which settings a population's records
belong to is its ``labels_from`` in the run record (:mod:`popseg_dask._engine.lineage`), checked
before a run resumes it; a population computed afresh has its records removed first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..location import Location
from ..stitch import FrameInfo, FrameResult

__all__ = ["Ledger", "fingerprint"]


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able description of a run."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Ledger:
    """Per-frame completion of a run's populations (safe to use from workers: whole objects, each
    written once, locally or on an object store)."""

    def __init__(self, root: "Location | Path | str"):
        self.root = Location.of(root)

    def clear(self) -> None:
        """Remove every record (and the scratch arrays kept beside them): a fresh or finished run."""
        self.root.delete()

    def forget(self, population: str) -> None:
        """Remove one population's records (it is computed afresh; the others' stay)."""
        (self.root / "frames" / population).delete()
        (self.root / "numbered" / population).delete()

    # ------------------------------------------------------------------ input identity
    def save_input(self, tokens: list[str] | None) -> None:
        """Record what the input was when the run started (see :mod:`popseg_dask.io.identity`)."""
        (self.root / "input.json").write_bytes(json.dumps({"frames": tokens}).encode())

    def load_input(self) -> list[str] | None:
        """The tokens :meth:`save_input` recorded (None if none were, or none could be)."""
        try:
            return json.loads((self.root / "input.json").read_bytes()).get("frames")
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ pass 1: segmented frames
    def frame_path(self, population: str, t: int) -> Location:
        return self.root / "frames" / population / f"t{t:06d}.npz"

    def save_frame(self, population: str, t: int, result: FrameResult) -> None:
        """Record frame ``t`` of ``population`` as segmented (call after its pixels are written)."""
        buf = io.BytesIO()
        np.savez(buf, anchors=np.asarray(result.anchors, np.int64),
                 info=np.asarray(json.dumps(dataclasses.asdict(result.info))))
        self.frame_path(population, t).write_bytes(buf.getvalue())

    def load_frame(self, population: str, t: int) -> FrameResult:
        """What :meth:`save_frame` recorded for frame ``t``."""
        with np.load(io.BytesIO(self.frame_path(population, t).read_bytes())) as z:
            return FrameResult(z["anchors"], FrameInfo(**json.loads(str(z["info"]))))

    def segmented(self, population: str, n_frames: int) -> np.ndarray:
        """Boolean mask of the frames already segmented (one listing, not one look-up per frame)."""
        return _marked(self.root / "frames" / population, n_frames, ".npz")

    # ------------------------------------------------------------------ pass 2: numbered frames
    def mark_numbered(self, population: str, ts: list[int], infos: list[FrameInfo] | None = None) -> None:
        """Record frames ``ts`` (consecutive) as numbered: one object for the lot. ``infos``: their
        stitching facts, for frames numbered directly (no per-frame record of theirs exists)."""
        name = f"t{ts[0]:06d}" if len(ts) == 1 else f"t{ts[0]:06d}-{ts[-1]:06d}"
        body = b"" if infos is None else json.dumps([dataclasses.asdict(i) for i in infos]).encode()
        (self.root / "numbered" / population / name).write_bytes(body)

    def numbered_infos(self, population: str, n_frames: int) -> dict[int, FrameInfo]:
        """The facts :meth:`mark_numbered` stored with directly numbered frames, by frame."""
        out: dict[int, FrameInfo] = {}
        folder = self.root / "numbered" / population
        for name in folder.list():
            span = _span(name)
            if span is None or span[0] >= n_frames:
                continue
            body = (folder / name).read_bytes()
            if body:
                out.update(zip(range(span[0], span[1] + 1), (FrameInfo(**d) for d in json.loads(body))))
        return out

    def numbered(self, population: str, n_frames: int) -> np.ndarray:
        """Boolean mask of the frames already numbered."""
        done = np.zeros(n_frames, bool)
        for name in (self.root / "numbered" / population).list():
            span = _span(name)
            if span is not None:
                done[span[0]:min(n_frames, span[1] + 1)] = True
        return done


def _span(name: str) -> tuple[int, int] | None:
    """First and last frame of a numbered marker's name (``t000040-000047`` or ``t000040``)."""
    first, _, last = name[1:].partition("-")
    if name.startswith("t") and first.isdigit() and (not last or last.isdigit()):
        return int(first), int(last or first)
    return None


def _marked(folder: Location, n_frames: int, suffix: str) -> np.ndarray:
    done = np.zeros(n_frames, bool)
    for name in folder.list():
        stem = name[1:len(name) - len(suffix)] if suffix else name[1:]
        if name.startswith("t") and name.endswith(suffix) and stem.isdigit() and int(stem) < n_frames:
            done[int(stem)] = True
    return done
