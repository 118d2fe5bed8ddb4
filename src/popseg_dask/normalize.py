"""Intensity normalisation computed once per frame (or per set of reference frames), before tiling.

Deep-learning models expect inputs scaled to roughly [0, 1]. Celldetective and csbdeep scale each
channel by its own low/high percentiles; computed per tile, those percentiles would differ from tile
to tile (a tile of background stretches noise to full range) and objects cut by tiles would come out
differently on each side. So the percentiles are computed on the whole frame — or on a fixed set of
reference frames for the whole movie — and every tile is scaled with the same numbers.

Conventions follow Celldetective's ``normalize_multichannel``: pixels equal to 0 are left out of the
percentiles (0 is how padded or missing regions are usually stored), ``(x - lo) / (hi - lo + 1e-20)``,
optional clipping to [0, 1], and an all-zero channel stays all zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ChannelScaling", "scaling_from_pixels", "apply_scaling"]

_EPS = 1e-20


@dataclass(frozen=True)
class ChannelScaling:
    """How one channel is scaled: ``mode`` is ``percentile`` (``low``/``high`` are percentiles),
    ``absolute`` (``low``/``high`` are intensities) or ``none``."""

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    clip: bool = False


def scaling_from_pixels(pixels: np.ndarray, scalings: Sequence[ChannelScaling]) -> np.ndarray:
    """The (lo, hi) intensities of each channel of ``pixels`` ``(c, ...)``.

    Parameters
    ----------
    pixels : array (c, ...)
        One frame, or several reference frames stacked on later axes.
    scalings : sequence of ChannelScaling
        One per channel.

    Returns
    -------
    (c, 2) float64 array
        NaN rows for channels that are all zero (or all NaN): they are left at 0.
    """
    if len(scalings) != pixels.shape[0]:
        raise ValueError(f"{len(scalings)} channel scalings for {pixels.shape[0]} channels")
    out = np.full((pixels.shape[0], 2), np.nan)
    for c, s in enumerate(scalings):
        if s.mode == "absolute":
            out[c] = (s.low, s.high)
            continue
        if s.mode == "none":
            out[c] = (0.0, 1.0)
            continue
        values = np.asarray(pixels[c], dtype=np.float64).ravel()
        values = values[(values != 0) & np.isfinite(values)]
        if values.size:
            out[c] = np.percentile(values, [s.low, s.high])
    return out


def apply_scaling(block: np.ndarray, lohi: np.ndarray, scalings: Sequence[ChannelScaling]) -> np.ndarray:
    """Scale a block ``(c, y, x)`` with per-channel (lo, hi) from :func:`scaling_from_pixels`.

    NaN pixels become 0 (the background value after scaling), so a model never sees NaN.
    """
    out = np.zeros(block.shape, dtype=np.float32)
    for c, s in enumerate(scalings):
        lo, hi = lohi[c]
        if not np.isfinite(lo):
            continue
        x = (np.asarray(block[c], dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo + _EPS)
        if s.clip:
            np.clip(x, 0.0, 1.0, out=x)
        out[c] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return out
