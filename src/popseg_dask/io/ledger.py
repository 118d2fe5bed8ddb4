"""What a run has finished, frame by frame, kept on disk beside its output so a re-run resumes.

Layout under ``<output>/.popseg/`` (:attr:`OutputLayout.ledger <popseg_dask.io.layout.OutputLayout.ledger>`)::

    frames/<population>/t000042.npz    anchors + stitching info of frame 42, written by the
                                       frame's merge task after its pixels are in the scratch array
    numbered/<population>/t000042      empty marker, written after frame 42's final ids

A frame counts as segmented only once its ``.npz`` exists, and files appear whole (written to a
temporary name, flushed, then renamed), so a run killed at any moment leaves either a finished
frame or none. The final ids of a frame depend on the counts of all earlier frames, which never
change once written, so numbering is repeated safely. Which run the records belong to is the
run record's ``fingerprint`` (in the output's root attributes), checked before a run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..stitch import FrameInfo, FrameResult

__all__ = ["Ledger", "fingerprint"]


def fingerprint(obj: Any) -> str:
    """A stable hash of a JSON-able description of a run."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Ledger:
    """Per-frame completion of a run's populations (safe to use from workers: plain files)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def clear(self) -> None:
        """Remove every record (and the scratch arrays kept beside them): a fresh or finished run."""
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ pass 1: segmented frames
    def frame_path(self, population: str, t: int) -> Path:
        return self.root / "frames" / population / f"t{t:06d}.npz"

    def save_frame(self, population: str, t: int, result: FrameResult) -> None:
        """Record frame ``t`` of ``population`` as segmented (call after its pixels are written)."""
        def write(fh):
            np.savez(fh, anchors=np.asarray(result.anchors, np.int64),
                     info=np.asarray(json.dumps(dataclasses.asdict(result.info))))

        _atomic_write(self.frame_path(population, t), write)

    def load_frame(self, population: str, t: int) -> FrameResult:
        """What :meth:`save_frame` recorded for frame ``t``."""
        with np.load(self.frame_path(population, t)) as z:
            return FrameResult(z["anchors"], FrameInfo(**json.loads(str(z["info"]))))

    def segmented(self, population: str, n_frames: int) -> np.ndarray:
        """Boolean mask of the frames already segmented."""
        folder = self.root / "frames" / population
        done = np.zeros(n_frames, bool)
        if folder.is_dir():
            for name in os.listdir(folder):
                if name.startswith("t") and name.endswith(".npz"):
                    t = int(name[1:-4])
                    if t < n_frames:
                        done[t] = True
        return done

    # ------------------------------------------------------------------ pass 2: numbered frames
    def numbered_path(self, population: str, t: int) -> Path:
        return self.root / "numbered" / population / f"t{t:06d}"

    def mark_numbered(self, population: str, t: int) -> None:
        _atomic_write(self.numbered_path(population, t), lambda fh: None)

    def numbered(self, population: str, n_frames: int) -> np.ndarray:
        folder = self.root / "numbered" / population
        done = np.zeros(n_frames, bool)
        if folder.is_dir():
            for name in os.listdir(folder):
                if name.startswith("t") and not name.startswith("."):
                    t = int(name[1:])
                    if t < n_frames:
                        done[t] = True
        return done
