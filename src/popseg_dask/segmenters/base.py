"""The segmenter protocol.

A segmenter turns pixels into a label image. It is a plain, picklable Python object
that knows nothing of Dask: the pipeline decides where and on what block it runs.

Contract
--------
* ``Params``: a pydantic model of the population keys it accepts (unknown keys are
  errors). It is built as ``cls(params, channel_names)`` where ``channel_names`` are
  the movie's channels.
* ``channels``: the movie channels it reads, in the order they appear in ``block``.
* ``halo``: pixels of context needed on each side of a tile. A group of objects (a *cluster*,
  see ``link``) whose pixels are all at least ``halo`` pixels from every cut of a window must
  come out of that window exactly as from the whole frame.
* ``link``: objects closer than this (Chebyshev, pixels) may influence each other's
  segmentation and are resolved together (0: objects are independent).
* ``object_size``: the largest object (or cluster) expected, in pixels; tile windows are padded
  by ``halo + object_size`` so that most cut objects are resolved by a neighbouring tile.
* ``whole_frame_reason``: set when the segmenter cannot be tiled exactly (frames then run whole).
* ``resources``: Dask worker resources its tasks need (e.g. ``{"GPU": 1}``), or None.
* ``reference_frames()``: frames whose pixels its movie-level statistics need
  (e.g. a histogram reference); ``movie_stats(frames)`` reduces them once per run.
* ``__call__(block, stats)``: ``block`` is a ``(c, y, x)`` array in the movie's dtype,
  ``stats`` what ``movie_stats`` returned (None if it needs none). Returns an integer
  ``(y, x)`` label image, 0 for background; ids need not be ordered or contiguous —
  the pipeline renumbers them canonically.
* Tiles: ``frame_stats``/``tile_stats``/``reduce_tile_stats`` compute statistics of the whole
  frame before any tile is segmented (defaults: none), and ``segment_window(block, stats, ctx)``
  segments a padded window (default: ``__call__``), returning the labels, the *support* mask
  whose clusters decide exactness (default: the labels' foreground), and a vote that the frame
  must be segmented whole (default: False).

Heavy state (a neural network) must be loaded lazily on first call, once per worker
process, never pickled with the object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import ValidationError

from ..config import Strict, validation_message
from ..errors import PopsegError

__all__ = ["Segmenter", "WindowContext", "TileGrid", "resolve_channel"]


@dataclass(frozen=True)
class TileGrid:
    """The geometry of a frame's tiles, as statistics reductions need it."""

    frame_shape: tuple[int, int]
    tile: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.frame_shape[0] // self.tile[0]), -(-self.frame_shape[1] // self.tile[1])


@dataclass(frozen=True, eq=False)
class WindowContext:
    """Where a block sits: the frame's shape, the window's origin, its artificial edges.

    ``artificial`` is (top, bottom, left, right): True where the window edge lies inside the
    frame (the segmenter sees a cut there), False on the frame's own edges. ``aux`` is the
    window of the per-pixel arrays the segmenter's ``tile_stats`` stored (or None).
    """

    frame_shape: tuple[int, int]
    origin: tuple[int, int] = (0, 0)
    artificial: tuple[bool, bool, bool, bool] = (False, False, False, False)
    aux: np.ndarray | None = None

    @property
    def is_whole_frame(self) -> bool:
        return not any(self.artificial)

    @classmethod
    def whole(cls, frame_shape) -> "WindowContext":
        return cls(tuple(int(v) for v in frame_shape))


def resolve_channel(channel: str | int, channel_names: Sequence[str], population: str = "") -> str:
    """Map a channel given by name or index to the movie's channel name."""
    names = [str(c) for c in channel_names]
    who = f"population '{population}': " if population else ""
    if isinstance(channel, bool):
        raise PopsegError(f"{who}channel must be a name or an index, got {channel!r}")
    if isinstance(channel, int):
        if str(channel) in names:
            return str(channel)
        if 0 <= channel < len(names):
            return names[channel]
        raise PopsegError(f"{who}channel index {channel} is out of range; the movie has channels {names}")
    if str(channel) not in names:
        raise PopsegError(f"{who}channel '{channel}' is not in the movie; its channels are {names}")
    return str(channel)


class Segmenter(ABC):
    """Base class of segmenter plugins (see the module docstring for the contract)."""

    name: ClassVar[str]
    Params: ClassVar[type[Strict]]

    channels: list[str]
    halo: int = 0
    link: int = 0
    object_size: int = 0
    resources: dict[str, float] | None = None
    needs_frame_stats: bool = False
    needs_tile_stats: bool = False
    whole_frame_reason: str | None = None

    @classmethod
    def from_config(cls, params: dict[str, Any], channel_names: Sequence[str], *,
                    base_dir: Path = Path("."), population: str = "") -> "Segmenter":
        """Validate a population's keys with :attr:`Params` and build the segmenter.

        ``base_dir`` is the config file's folder, for paths in ``params``.
        Plugins whose constructor takes ``(params, channel_names)`` need not override this.
        """
        try:
            p = cls.Params(**params)
        except ValidationError as err:
            raise PopsegError("config error: " + validation_message(err, f"populations.{population}")) from None
        return cls(p, channel_names)

    def reference_frames(self) -> list[int]:
        """Frames whose pixels :meth:`movie_stats` needs (default: none)."""
        return []

    def movie_stats(self, frames: dict[int, np.ndarray]) -> Any:
        """Reduce the reference frames (each ``(c, y, x)``) to statistics passed to every call."""
        return None

    def frame_stats(self, frame: np.ndarray, stats: Any) -> Any:
        """Statistics of a whole frame ``(c, y, x)`` (run when ``needs_frame_stats``)."""
        return stats

    def tile_stats(self, block: np.ndarray, stats: Any, ctx: WindowContext,
                   core: tuple[slice, slice]) -> tuple[Any, np.ndarray | None]:
        """Partial frame statistics from one tile's core (run when ``needs_tile_stats``).

        Returns the partial (small, sent to ``reduce_tile_stats``) and optionally an int32
        array of the core's shape that the pipeline stores and hands back, windowed, as
        ``ctx.aux`` when segmenting.
        """
        return None, None

    def reduce_tile_stats(self, partials: list, stats: Any, grid: "TileGrid") -> Any:
        """Combine the tiles' partial statistics (in grid order) into the frame's."""
        return stats

    @abstractmethod
    def __call__(self, block: np.ndarray, stats: Any = None) -> np.ndarray:
        """Segment one block ``(c, y, x)`` into an integer ``(y, x)`` label image."""

    def segment_window(self, block: np.ndarray, stats: Any, ctx: WindowContext
                       ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Segment a window of a frame: (labels, support mask, whole-frame vote)."""
        labels = self(block, stats)
        return labels, labels > 0, False

    def describe(self) -> dict[str, Any]:
        """What goes into the run record about this segmenter."""
        return {"segmenter": self.name, "channels": list(self.channels), "halo": self.halo,
                "link": self.link, "resources": self.resources}
