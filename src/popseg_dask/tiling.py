"""Tile plans: how a frame is cut into cores, and the padded windows segmenters see.

A frame of shape (Y, X) is cut into a regular grid of *cores* of ``(ty, tx)`` pixels (the last
row/column of cores may be smaller). Each core is padded by ``halo`` pixels on every side into its
*window*, clipped at the frame: a window never extends beyond the frame, so a segmenter treats a
frame edge exactly as it would in the untiled frame, and only the window edges inside the frame
(its *artificial* edges) are approximations that stitching must account for.

Invariants: cores partition the frame; every core lies inside its window; a window edge is
artificial iff it is not on the frame edge; the label scratch array is chunked by the core grid, so
each tile writes exactly its own chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import logging
from typing import Any, Iterator

from .errors import PopsegError

__all__ = ["Tile", "TilePlan", "plan_tiles", "auto_tile_size", "tile_policy"]

log = logging.getLogger(__name__)

# float64 working copies dominate a segmenter's memory: about this many bytes per window pixel.
BYTES_PER_PIXEL = 64


@dataclass(frozen=True)
class Tile:
    """One tile: its core and padded window, as (y0, y1, x0, x1) in frame coordinates."""

    index: tuple[int, int]
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """Slices of the core inside the window array."""
        y0, y1, x0, x1 = self.core
        wy0, _, wx0, _ = self.window
        return slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0)

    def artificial_edges(self, frame_shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """(top, bottom, left, right): True where the window edge lies inside the frame."""
        wy0, wy1, wx0, wx1 = self.window
        return wy0 > 0, wy1 < frame_shape[0], wx0 > 0, wx1 < frame_shape[1]


@dataclass(frozen=True)
class TilePlan:
    """The tiles of a frame: core size, halo, frame shape."""

    frame_shape: tuple[int, int]
    tile: tuple[int, int]
    halo: int

    @property
    def grid(self) -> tuple[int, int]:
        (Y, X), (ty, tx) = self.frame_shape, self.tile
        return -(-Y // ty), -(-X // tx)

    @property
    def untiled(self) -> bool:
        return self.grid == (1, 1)

    def __len__(self) -> int:
        gy, gx = self.grid
        return gy * gx

    def __iter__(self) -> Iterator[Tile]:
        (Y, X), (ty, tx), h = self.frame_shape, self.tile, self.halo
        gy, gx = self.grid
        for i in range(gy):
            for j in range(gx):
                y0, x0 = i * ty, j * tx
                y1, x1 = min(Y, y0 + ty), min(X, x0 + tx)
                yield Tile((i, j), (y0, y1, x0, x1), (max(0, y0 - h), min(Y, y1 + h), max(0, x0 - h), min(X, x1 + h)))


def auto_tile_size(frame_shape: tuple[int, int], halo: int, memory_bytes: float, multiple: int = 64) -> tuple[int, int]:
    """Largest square core (a multiple of ``multiple``) whose window fits ``memory_bytes``.

    Returns the whole frame when it fits: tiling only costs when it is not needed.
    """
    Y, X = frame_shape
    if (Y * X) * BYTES_PER_PIXEL <= memory_bytes:
        return Y, X
    side = int((memory_bytes / BYTES_PER_PIXEL) ** 0.5) - 2 * halo
    side = max(multiple, side // multiple * multiple)
    return min(Y, side), min(X, side)


def plan_tiles(frame_shape: tuple[int, int], tile, halo: int, *, memory_bytes: float = 2e9,
               clamp_halo: bool = False, align: int = 1) -> TilePlan:
    """Build the tile plan of a population.

    Parameters
    ----------
    frame_shape : (Y, X)
    tile : "auto", "none", None, int or (ty, tx)
        Core size; ``auto`` picks it from ``memory_bytes``; ``none`` means whole frames.
    halo : int
        Context pixels around each core.
    memory_bytes : float
        Memory a tile task may use (for ``auto``).
    clamp_halo : bool
        Shrink a halo that is not smaller than the tile (a default halo, not the user's) to
        tile - 1 instead of refusing it; stitching stays exact, more objects are merged.
    align : int
        Tile sizes and halo are rounded up to multiples of this, so every window starts on the
        segmenter's grid (a network that downsamples by 16 sees the same pooling blocks).

    Raises
    ------
    PopsegError
        If the tile is not positive or the halo is not smaller than the tile.
    """
    if halo < 0:
        raise PopsegError(f"halo must be >= 0, got {halo}")
    align = max(1, int(align))
    halo = -(-halo // align) * align
    if tile in (None, "none"):
        return TilePlan(tuple(frame_shape), tuple(frame_shape), halo)
    if tile == "auto":
        ty, tx = auto_tile_size(frame_shape, halo, memory_bytes, multiple=math.lcm(64, align))
        return TilePlan(tuple(frame_shape), (ty, tx), halo)
    ty, tx = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if ty < 1 or tx < 1:
        raise PopsegError(f"tile must be positive, got {tile}")
    ty, tx = (min(-(-v // align) * align, n) for v, n in zip((ty, tx), frame_shape))
    plan = TilePlan(tuple(frame_shape), (ty, tx), halo)
    if clamp_halo and not plan.untiled and halo >= min(ty, tx):
        plan = TilePlan(tuple(frame_shape), (ty, tx), max(0, (min(ty, tx) - 1) // align * align))
    if not plan.untiled and plan.halo >= min(ty, tx):
        raise PopsegError(
            f"halo {halo} is not smaller than the tile {ty}x{tx}: every tile would be mostly halo; "
            f"use a tile larger than {halo} (or tile: none)"
        )
    return plan


def tile_policy(segmenter: Any, frame_shape: tuple[int, int], tile="auto", halo: int | None = None, *,
                memory_mb: float = 1024, population: str = "") -> tuple[Any, TilePlan]:
    """The one tile policy: how a population's frames are cut, for a run, ``segment_frame`` and
    ``popseg bench`` alike.

    * The window padding is the segmenter's exactness margin plus room for a whole object
      (``halo + object_size``), so an object cut by a core edge is seen whole by the tile that
      holds its anchor; a user's ``halo`` replaces it (a network takes it as its context, see
      ``Segmenter.with_context``; an exact margin larger than it only means more merges).
    * A segmenter with a ``whole_frame_reason`` runs whole frames, whatever ``tile`` says.
    * Tiles and halo are rounded to the segmenter's ``align``.

    Parameters
    ----------
    segmenter : Segmenter
    frame_shape : (Y, X)
    tile : "auto", "none", None, int or (ty, tx)
    halo : int, optional
        The user's window padding.
    memory_mb : float
        Memory a tile task may use (for ``tile: auto``).
    population : str
        For messages.

    Returns
    -------
    segmenter : Segmenter
        The segmenter for these windows (a copy when the user's halo changed its context).
    plan : TilePlan
    """
    who = f"population {population}" if population else f"segmenter {segmenter.name}"
    if halo is None:
        pad = segmenter.halo + segmenter.object_size
    else:
        pad = halo
        segmenter = segmenter.with_context(halo)
        if halo < segmenter.halo:
            log.warning("%s: halo %d is below the segmenter's margin %d; more objects will be "
                        "re-segmented in merged regions (results stay exact)", who, halo, segmenter.halo)
    if segmenter.whole_frame_reason and tile not in (None, "none"):
        log.warning("%s: frames are segmented whole: %s", who, segmenter.whole_frame_reason)
        tile = "none"
    return segmenter, plan_tiles(frame_shape, tile, pad, memory_bytes=memory_mb * 2**20,
                                 clamp_halo=halo is None, align=segmenter.align)
