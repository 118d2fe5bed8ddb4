"""Traditional segmentation: filters, threshold, EDT markers, watershed, feature queries.

A re-implementation of Celldetective 1.6.5's ``segment_frame_from_thresholds`` with
the same steps in the same order, so that the same config gives the same masks
(ids may differ; the pipeline renumbers them):

1. NaN pixels of the target channel filled by nearest-neighbour interpolation;
2. optional histogram matching to a reference frame of the movie (``equalize_reference``);
3. the filter chain (:mod:`.filters`);
4. pixels within ``thresholds`` (inclusive) become foreground; the frame border of width
   :func:`.filters.edge_width` is cleared (``edge_exclusion``); holes filled (``fill_holes``);
5. with ``do_watershed``: markers at the peaks of the Euclidean distance transform
   (``peak_local_max`` with a square footprint of ``marker_footprint_size`` and
   ``min_distance=marker_min_distance``), watershed of the negated distance inside the
   mask, holes of each object filled; without: 4-connected components;
6. every object matched by one of ``feature_queries`` is **removed**.

Differences, on purpose: a query naming an unknown feature is a config error (there it
is logged and skipped), and only the features the queries name are measured (there a
full property table, Feret diameter included, is computed for every object).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator
from scipy import ndimage as ndi

from ..config import Strict, validation_message
from ..errors import PopsegError
from .base import BuildContext, Segmenter, WindowContext, resolve_channel
from .facts import FrameFacts, holes_in_window, join_background
from .memo import WindowMemo, digest
from .markers import (clamp_safe, core_candidates, footprint_of, frame_markers, greedy_spacing, local_maxima,
                      markers_in_window, search_box)
from .filters import (FRAME_GLOBAL, POSITION_DEPENDENT, apply_filters, edge_width, filter_support,
                      frame_filter_params, interpolate_nan, validate_filters)
from .query import Query, QuerySyntaxError, parse_query

__all__ = ["FrameFacts", "ThresholdParams", "ThresholdSegmenter", "enclosing_objects", "fill_label_holes", "feature_names"]

# Per-object features a query may name (skimage regionprops names, as Celldetective exposes them).
SHAPE_FEATURES = (
    "label", "area", "area_bbox", "area_convex", "area_filled", "axis_major_length",
    "axis_minor_length", "eccentricity", "equivalent_diameter_area", "euler_number",
    "feret_diameter_max", "orientation", "perimeter", "perimeter_crofton", "solidity",
)
_INTENSITY_STATS = ("mean", "max", "min")
# features a bincount gives exactly as skimage's regionprops does
_COUNTED_FEATURES = frozenset({"label", "area"})

# a tiled frame's windows are looked at up to three times (facts, facts, tiles); see .memo
_MEMO = WindowMemo()


def _intensity_name(channel: str, stat: str) -> str:
    # Celldetective renames 'intensity_<stat>-<i>' to '<channel>_<stat>', then '-' to '_'.
    return f"{channel}_{stat}".replace("-", "_")


def _raw_intensity_name(index: int, stat: str) -> str:
    return f"intensity_{stat}-{index}"


def feature_names(channel_names: Sequence[str]) -> list[str]:
    """Every feature name a query may use for a movie with these channels."""
    names = [*SHAPE_FEATURES, "centroid-0", "centroid-1", "radial_distance"]
    names += [_intensity_name(str(c), s) for c in channel_names for s in _INTENSITY_STATS]
    # The names Celldetective uses when it is given no channel names.
    names += [_raw_intensity_name(i, s) for i in range(len(channel_names)) for s in _INTENSITY_STATS]
    return names


class ThresholdParams(Strict):
    """Population keys of ``segmenter: threshold`` (Celldetective's threshold config)."""

    channel: str | int | None = Field(None, description="Channel to threshold (name or index).")
    thresholds: tuple[float, float] | None = Field(None, description="[low, high], inclusive; high may be .inf")
    filters: list[Any] = Field(default_factory=list, description="[[name, args...], ...] applied in order")
    marker_min_distance: int = Field(30, ge=1)
    marker_footprint_size: int = Field(20, ge=1)
    marker_footprint: list[list[int]] | None = Field(
        None, description="explicit 0/1 footprint for marker detection; overrides marker_footprint_size")
    feature_queries: list[str] = Field(default_factory=list, description="objects matching any query are removed")
    do_watershed: bool = True
    watershed_ties: Literal["local", "celldetective"] = Field(
        "local", description="local: each connected component flooded on its own (the same in any tile); "
                             "celldetective: one flood over the whole frame, as Celldetective (whole frames only)")
    fill_holes: bool = True
    edge_exclusion: bool = True
    equalize_reference: int | None = Field(None, ge=0, description="frame whose histogram every frame is matched to")
    max_object_px: int | None = Field(None, ge=0, description="largest object diameter, for tile padding")
    threshold_config: Path | None = Field(None, description="Celldetective threshold_config_*.json to start from")

    @field_validator("filters", mode="before")
    @classmethod
    def _filters(cls, v):
        return validate_filters(v)

    @field_validator("feature_queries", mode="before")
    @classmethod
    def _queries(cls, v):
        if v is None:
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("feature_queries")
    @classmethod
    def _parse(cls, v):
        for q in v:
            if q.strip():
                try:
                    parse_query(q)
                except QuerySyntaxError as err:
                    raise ValueError(f"bad feature query: {err}") from None
        return v

    @field_validator("equalize_reference", mode="before")
    @classmethod
    def _equalize(cls, v):
        # Celldetective writes [enabled, frame].
        if isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise ValueError("equalize_reference must be a frame index or [enabled, frame]")
            return int(v[1]) if v[0] else None
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.thresholds is not None:
            lo, hi = self.thresholds
            if math.isnan(lo) or math.isnan(hi) or lo > hi:
                raise ValueError(f"thresholds must be [low, high] with low <= high, got {list(self.thresholds)}")
        return self


# Keys of Celldetective's threshold JSON and the population keys they become.
_CD_KEYS = {"target_channel": "channel", "channel_names": None}


def _load_threshold_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PopsegError(f"threshold_config {path} not found; check the path (relative to the config file)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PopsegError(f"threshold_config {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise PopsegError(f"threshold_config {path} must hold a JSON object")
    out = {}
    for k, v in data.items():
        k2 = _CD_KEYS.get(k, k)
        if k2 is not None:
            out[k2] = v
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes(mask)`` (default structure), by labelling the background once.

    scipy dilates the background from the border until nothing changes, one full pass per
    step; on a 2048² frame that was a tenth of a threshold segmentation. The holes are the
    4-connected background components that do not touch the border: the same pixels.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:  # the border test below looks at four edges only
        return ndi.binary_fill_holes(mask)
    if mask.size == 0:
        return mask.copy()
    background, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = False
    return ~outside[background]


# Above this, sqrt of distinct integers can round to the same float32, and ties would differ
# from scipy's float64 (Celldetective's): such distances mean objects ~4000 px across.
_EDT_FLOAT32_EXACT = 2000.0


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """``ndi.distance_transform_edt(mask)``, with the same order and ties, about 2.6x faster.

    The ``edt`` package computes the same exact squared distances and returns their square
    roots as float32: scipy's values rounded, so every comparison the watershed and the peak
    search make (which is larger, which are equal) comes out the same while distances stay
    below 2000 px. Beyond that, or without ``edt``, scipy computes it.
    """
    try:
        import edt
    except ImportError:
        return ndi.distance_transform_edt(mask)
    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.flags.writeable:  # edt's typed memoryview refuses read-only buffers (memoized masks)
        mask = mask.copy()
    out = edt.edt(mask, black_border=False)
    if out.size and out.max() >= _EDT_FLOAT32_EXACT:
        return ndi.distance_transform_edt(mask)
    return out


def fill_label_holes(labels: np.ndarray, *, simple: bool = False) -> np.ndarray:
    """Fill the holes of each object, one object at a time in id order.

    Each object's mask is filled inside its bounding box grown by one pixel (where the
    box does not touch the image border); a later id overwrites an earlier one where
    filled regions overlap.

    ``simple``: the caller guarantees that every object is one 4-connected piece and that
    every 4-connected component of the background (0) touches the image's edge — what a
    watershed of a hole-filled mask gives. Only objects that can enclose another are then
    filled (:func:`enclosing_objects`), with the same result.
    """
    # Tried: fill only the objects whose Euler number and 8-connected components say they
    # have a hole. Counting both for every object (skimage's equal-value labelling and 2x2 bit
    # quads) took 59 ms of this loop's 80 on a 2048² frame of 850 objects: not kept.
    if simple:
        ids = enclosing_objects(labels)
        if not len(ids):
            return labels.copy()
        out = labels.copy()
    else:
        out = np.zeros_like(labels)
    boxes = ndi.find_objects(labels)
    for i in ids if simple else range(1, len(boxes) + 1):
        box = boxes[i - 1]
        if box is None:
            continue
        inner = [(s.start > 0, s.stop < n) for s, n in zip(box, labels.shape)]
        grown = tuple(slice(s.start - int(a), s.stop + int(b)) for s, (a, b) in zip(box, inner))
        crop = tuple(slice(int(a), -1 if b else None) for a, b in inner)
        filled = fill_holes(labels[grown] == i)[crop]
        if simple:
            # every object keeps its own pixels, so the loop's last write (the largest id whose
            # filled mask holds the pixel) is a maximum
            filled &= out[box] < i
        out[box][filled] = i
    return out


def enclosing_objects(labels: np.ndarray) -> np.ndarray:
    """Ids of the objects that may have holes, where every object is one 4-connected piece and
    every 4-connected background component touches the image's edge (see ``fill_label_holes``).

    Such an image's holes hold no background, so a hole of A is made of whole objects that
    touch neither the background nor the image's edge ("enclosed"), and A is 4-adjacent to one
    of them. The candidates are the objects 4-adjacent to an enclosed one (and those it touches).
    A 2048² frame takes 11-15 ms, where filling every object took 24-120 ms.
    """
    if labels.ndim != 2 or labels.size == 0:
        return np.zeros(0, np.int64)
    fg = labels > 0
    bg = ~fg
    exposed = np.zeros(labels.shape, bool)
    exposed[1:] |= bg[:-1]
    exposed[:-1] |= bg[1:]
    exposed[:, 1:] |= bg[:, :-1]
    exposed[:, :-1] |= bg[:, 1:]
    exposed[[0, -1], :] = True
    exposed[:, [0, -1]] = True
    exposed &= fg
    n = int(labels.max()) + 1
    enclosed = np.bincount(labels.ravel(), minlength=n) > 0
    enclosed[np.bincount(labels[exposed], minlength=n) > 0] = False
    enclosed[0] = False
    if not enclosed.any():
        return np.zeros(0, np.int64)
    inside = enclosed[labels]
    found = []
    for a, b, near in ((labels[1:], labels[:-1], inside[1:] | inside[:-1]),
                       (labels[:, 1:], labels[:, :-1], inside[:, 1:] | inside[:, :-1])):
        pair = near & (a != b) & (a > 0) & (b > 0)
        found += [a[pair], b[pair]]
    return np.unique(np.concatenate(found)).astype(np.int64)


def flood_components(image: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker watershed of ``image`` inside ``mask``, each 4-connected component flooded on its own.

    skimage's watershed breaks ties between markers of equal height by the internal order of
    one priority queue holding every marker of the image, so a component's result can depend on
    markers far away. Flooding each component alone makes the result depend on the component
    only — the same in any window that contains it — and equal to skimage's wherever no two
    markers of a component tie. A component with one marker is that marker's object; one
    without markers is dropped (as in skimage).
    """
    from skimage.segmentation import watershed

    comps, _ = ndi.label(mask)
    out = np.zeros(mask.shape, np.int32)
    boxes = ndi.find_objects(comps)
    marked = markers > 0
    # markers per component: one array op, then watershed only where a component has several
    pairs = np.unique(np.stack([comps[marked], markers[marked]]), axis=1) if marked.any() else np.zeros((2, 0), int)
    n_markers = np.bincount(pairs[0], minlength=len(boxes) + 1)
    single = np.zeros(len(boxes) + 1, np.int64)
    single[pairs[0]] = pairs[1]
    lut = np.where(n_markers == 1, single, 0).astype(np.int32)
    out[...] = lut[comps]
    for c in np.flatnonzero(n_markers > 1):
        box = boxes[c - 1]
        # pad by one so the component never touches the crop's edge (skimage needs a zero border)
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        comp = comps[box] == c
        sub = watershed(image[box], np.where(comp, markers[box], 0), mask=comp)
        out[box][comp] = sub[comp]
    return out


class ThresholdSegmenter(Segmenter):
    """Celldetective-compatible threshold segmentation of one population."""

    name = "threshold"
    Params = ThresholdParams
    exact_tiles = True  # tests/test_tiling.py, tests/test_markers.py
    # padding only, and the JSON's path (its keys are merged into the settings recorded)
    label_neutral: ClassVar[frozenset[str]] = frozenset({"max_object_px", "threshold_config"})
    label_packages: ClassVar[tuple[str, ...]] = ("scikit-image", "scipy", "numpy")

    def __init__(self, params: ThresholdParams, context: BuildContext | Sequence[str]):
        ctx = BuildContext.of(context)
        channel_names, population = ctx.channel_names, ctx.population
        self.params = params
        self.population = population
        who = f"population '{population}'" if population else "threshold segmenter"
        if params.channel is None:
            raise PopsegError(f"{who}: 'channel' is required (the channel to threshold)")
        if params.thresholds is None:
            raise PopsegError(f"{who}: 'thresholds' is required, e.g. thresholds: [500, .inf]")
        target = resolve_channel(params.channel, channel_names, population)
        self.queries: list[Query] = [parse_query(q) for q in params.feature_queries if q.strip()]
        known = set(feature_names(channel_names))
        for q in self.queries:
            unknown = q.names - known
            if unknown:
                raise PopsegError(
                    f"{who}: feature query {q.text!r} uses unknown feature(s) {sorted(unknown)}; "
                    f"known: {', '.join(sorted(known))}"
                )
        needed = {n for q in self.queries for n in q.names}
        self.intensity_channels = [
            str(c) for i, c in enumerate(channel_names)
            if any(_intensity_name(str(c), s) in needed or _raw_intensity_name(i, s) in needed
                   for s in _INTENSITY_STATS)
        ]
        self._channel_index = {str(c): i for i, c in enumerate(channel_names)}
        self.channels = [target] + [c for c in self.intensity_channels if c != target]
        self._needed = needed
        self.edge = edge_width(params.filters) if params.edge_exclusion else None
        self._digest: bytes | None = None  # of the parameters, for the window memo

    @classmethod
    def from_config(cls, params: dict[str, Any], context: BuildContext | Sequence[str]) -> "ThresholdSegmenter":
        """Build from population keys, merging a Celldetective ``threshold_config`` JSON first.

        Keys written in the population win over the JSON's; its path is relative to
        ``context.base_dir``.
        """
        ctx = BuildContext.of(context)
        merged = dict(params)
        if merged.get("threshold_config"):
            path = Path(merged["threshold_config"]).expanduser()
            path = path if path.is_absolute() else ctx.base_dir / path
            merged = {**_load_threshold_json(path), **merged}
            merged["threshold_config"] = str(path)
        try:
            p = ThresholdParams(**merged)
        except ValidationError as err:
            raise PopsegError("config error: " + validation_message(err, f"populations.{ctx.population}")) from None
        return cls(p, ctx)

    # --------------------------------------------------------------- tiling facts
    @property
    def whole_frame_reason(self) -> str | None:  # type: ignore[override]
        """Why tiles cannot reproduce this config exactly (None when they can)."""
        pos = [name for name, *_ in self.params.filters if name in POSITION_DEPENDENT]
        if pos:
            return (f"filter(s) {', '.join(sorted(set(pos)))} round differently at different positions "
                    "in the frame")
        if self.params.do_watershed and self.params.watershed_ties == "celldetective":
            return "watershed_ties: celldetective floods the whole frame at once"
        return None

    @property
    def footprint(self) -> np.ndarray:
        """The peak search's footprint (``marker_footprint``, or a square of ``marker_footprint_size``)."""
        return footprint_of(self.params.marker_footprint, self.params.marker_footprint_size)

    @property
    def link(self) -> int:  # type: ignore[override]
        # Watershed markers are a frame fact (:mod:`.markers`): an object depends only on its own
        # connected component of the mask, so clusters are the mask's 8-connected components.
        return 0 if self.params.do_watershed else 1

    @property
    def object_size(self) -> int:  # type: ignore[override]
        if self.params.max_object_px is not None:
            return self.params.max_object_px
        # Celldetective users size the marker footprint to about a cell: allow two
        return 2 * max(self.params.marker_footprint_size, self.params.marker_min_distance)

    @property
    def halo(self) -> int:  # type: ignore[override]
        # the mask is exact filter_support from a cut; a cluster needs its own pixels, the ring
        # around them and the background nearest to each of them (within 2 of the cluster) exact
        return filter_support(self.params.filters) + 3

    @property
    def needs_frame_stats(self) -> bool:  # type: ignore[override]
        return self.params.equalize_reference is not None or any(
            name in FRAME_GLOBAL for name, *_ in self.params.filters)

    @property
    def needs_tile_stats(self) -> bool:  # type: ignore[override]
        return self.params.do_watershed or self.params.fill_holes

    @property
    def tile_stats_rounds(self) -> int:  # type: ignore[override]
        # markers are found on the filled mask, and the holes are known only after round one
        return 2 if self.params.do_watershed and self.params.fill_holes else 1

    # --------------------------------------------------------------- stats
    def reference_frames(self) -> list[int]:
        r = self.params.equalize_reference
        return [] if r is None else [r]

    def movie_stats(self, frames: dict[int, np.ndarray]) -> Any:
        r = self.params.equalize_reference
        if r is None:
            return FrameFacts()
        return FrameFacts(equalize_reference=_inf_to_nan(frames[r])[0])

    def frame_stats(self, frame: np.ndarray, stats: Any) -> FrameFacts:
        """Whole-frame facts: NaN present, histogram-matching table, Otsu-type thresholds."""
        out = stats or FrameFacts()
        frame = _inf_to_nan(np.asarray(frame))
        img = frame[0]
        if np.any(img != img):
            # Nearest-neighbour filling of NaNs reaches arbitrarily far: segment this frame whole.
            return replace(out, whole=True)
        table = None
        if self.params.equalize_reference is not None:
            from skimage.exposure import match_histograms

            matched = match_histograms(img, out.equalize_reference)
            values, first = np.unique(img, return_index=True)
            table = (values, matched.ravel()[first])
            img = matched
        return replace(out, equalize_table=table, filter_params=frame_filter_params(img, self.params.filters),
                       equalize_reference=None)

    def tile_stats(self, block, stats, ctx, core):
        """A core's share of the frame facts, in one round or two.

        Round one: the foreground box, whether there is background, and for hole filling the
        background components (stored per pixel, joined across cores by the reduction: a
        background region is a hole iff it does not reach the frame edge). The candidate peaks
        of the watershed markers (:func:`.markers.core_candidates`) need the filled mask, so with
        hole filling they are a second round; without, they come with the first.
        """
        stats = stats or FrameFacts()
        if stats.whole:
            return None, None
        binary, key = self._window_mask(block, stats, ctx)
        if stats.reduced:  # round two
            return {"peaks": self._candidates(*self._filled_distance(binary, key, stats, ctx), ctx, core)}, None
        part, aux = self._partial(binary, ctx, core, holes=self.params.fill_holes)
        if self.params.do_watershed and not self.params.fill_holes:
            part["peaks"] = self._candidates(*self._filled_distance(binary, key, stats, ctx), ctx, core)
        return part, aux

    def _candidates(self, binary, distance, ctx, core) -> dict[str, Any]:
        return core_candidates(distance, binary, ctx, core, self.footprint, self.params.marker_min_distance,
                               filter_support(self.params.filters))

    def _window_mask(self, block, stats, ctx) -> tuple[np.ndarray, bytes | None]:
        """The window's thresholded mask (unfilled) and the digest it is memoized under (None
        for a whole frame, which is looked at once)."""
        if ctx.is_whole_frame:
            return self._binary(block, stats, ctx, fill=False), None
        if self._digest is None:
            self._digest = digest(self.params.model_dump_json(), self.channels, self.edge)
        eq = stats.equalize_table if stats.equalize_table is not None else (stats.equalize_reference,)
        key = digest(self._digest, block, ctx.origin, ctx.frame_shape, stats.filter_params, *eq)
        return _MEMO.get(key + b"mask", lambda: self._binary(block, stats, ctx, fill=False)), key

    def _filled_distance(self, binary, key, stats, ctx) -> tuple[np.ndarray, np.ndarray]:
        """The mask with its holes filled (when configured) and its distance to the background."""
        def compute():
            filled = self._fill(binary, stats, ctx) if self.params.fill_holes else binary
            return filled, distance_to_background(filled)

        if key is None:
            return compute()
        if self.params.fill_holes:
            key = digest(key, ctx.aux, stats.holes, stats.hole_offsets, stats.tile, stats.grid_cols)
        return _MEMO.get(key + b"filled", compute)

    def _partial(self, binary, ctx, core, holes: bool):
        cy, cx = core
        oy, ox = ctx.origin
        Y, X = ctx.frame_shape
        sub = binary[cy, cx]
        gy0, gx0 = oy + cy.start, ox + cx.start
        edge = np.zeros(sub.shape, bool)
        if gy0 == 0:
            edge[0, :] = True
        if gy0 + sub.shape[0] == Y:
            edge[-1, :] = True
        if gx0 == 0:
            edge[:, 0] = True
        if gx0 + sub.shape[1] == X:
            edge[:, -1] = True
        # After hole filling, background remains iff some frame-edge pixel is background.
        part: dict[str, Any] = {"has_bg": bool((edge & ~sub).any()), "box": None}
        # skimage's peak search looks only at the box of the foreground inside its search box (the
        # frame less a strip of min_distance); that box is a frame-wide fact.
        b0, b1, c0, c1 = search_box((Y, X), self.params.marker_min_distance)
        yy0, yy1 = max(b0 - gy0, 0), min(b1 - gy0, sub.shape[0])
        xx0, xx1 = max(c0 - gx0, 0), min(c1 - gx0, sub.shape[1])
        if yy0 < yy1 and xx0 < xx1:
            inner = sub[yy0:yy1, xx0:xx1]
            if inner.any():
                rows = np.flatnonzero(inner.any(axis=1))
                cols = np.flatnonzero(inner.any(axis=0))
                part["box"] = (gy0 + yy0 + rows[0], gy0 + yy0 + rows[-1] + 1,
                               gx0 + xx0 + cols[0], gx0 + xx0 + cols[-1] + 1)
        aux = None
        if holes:
            comp, n = ndi.label(~sub)  # 4-connected, as binary_fill_holes floods the background
            touches = np.zeros(n + 1, bool)
            touches[np.unique(comp[edge])] = True
            touches[0] = False
            part.update(n=n, touches=touches,
                        sides=(comp[0, :].copy(), comp[-1, :].copy(), comp[:, 0].copy(), comp[:, -1].copy()))
            aux = comp.astype(np.int32)
        return part, aux

    def reduce_tile_stats(self, partials, stats, plan=None):
        """The frame's facts from its cores' (``plan``: None for a whole frame, its own core)."""
        out = stats or FrameFacts()
        if out.whole:
            return out
        first = not out.reduced
        if first:
            out = self._reduce_first(partials, out, plan)
        if out.whole or plan is None or not self.params.do_watershed or (first and self.params.fill_holes):
            return out
        markers = frame_markers([p["peaks"] for p in partials], plan.frame_shape, self.params.marker_min_distance,
                                out.roi, self.footprint.size)
        return replace(out, whole=True) if markers is None else replace(out, markers=markers)

    def _reduce_first(self, partials, out: FrameFacts, plan) -> FrameFacts:
        boxes = [p["box"] for p in partials if p is not None and p["box"] is not None]
        has_bg = any(p["has_bg"] for p in partials if p is not None)
        roi = None
        if boxes:
            b = np.asarray(boxes)
            roi = (int(b[:, 0].min()), int(b[:, 1].max()), int(b[:, 2].min()), int(b[:, 3].max()))
        # no background at all: the distance map has no zero; do it whole
        whole = not has_bg and roi is not None
        if plan is not None and self.params.do_watershed and roi is not None and not clamp_safe(self.footprint):
            # candidates are searched in the largest box; this footprint needs the foreground's
            whole = whole or roi != search_box(plan.frame_shape, self.params.marker_min_distance)
        out = replace(out, reduced=True, roi=roi, whole=whole)
        if self.params.fill_holes and plan is not None:
            out = replace(out, **join_background(partials, plan))
        return out

    # --------------------------------------------------------------- segmentation
    def __call__(self, block: np.ndarray, stats: Any = None) -> np.ndarray:
        """Segment a whole frame ``(c, y, x)``."""
        block = np.asarray(block)
        if self.needs_frame_stats:
            stats = self.frame_stats(block, stats)
        return self.segment_window(block, stats, WindowContext.whole(block.shape[-2:]))[0]

    def segment_window(self, block, stats, ctx):
        """Segment a window; exact for clusters ``halo`` pixels from its artificial edges."""
        block = _inf_to_nan(np.asarray(block))
        stats = stats or FrameFacts()
        if stats.whole and not ctx.is_whole_frame:
            empty = np.zeros(block.shape[-2:], np.int32)
            return empty, empty.astype(bool), True
        binary, key = self._window_mask(block, stats, ctx)
        if ctx.is_whole_frame and self.params.do_watershed and not stats.reduced:
            # a whole frame is its own single tile: its facts come from the mask just computed
            whole = (slice(0, binary.shape[0]), slice(0, binary.shape[1]))
            stats = self.reduce_tile_stats([self._partial(binary, ctx, whole, holes=False)[0]], stats)
        if self.params.do_watershed:
            binary, distance = self._filled_distance(binary, key, stats, ctx)
            labels = self._watershed(binary, distance, stats, ctx)
        else:
            if self.params.fill_holes:
                binary = self._fill(binary, stats, ctx)
            labels, _ = ndi.label(binary.astype(int))
        if self.queries:
            labels = self._remove_matching(labels, block, ctx)
        # no whole-frame vote: a 'trivial' frame is found by the reduction (.markers)
        return labels, binary, False

    @staticmethod
    def _fill(binary, stats, ctx) -> np.ndarray:
        if ctx.is_whole_frame or stats.holes is None:
            return fill_holes(binary)
        return binary | holes_in_window(ctx, stats)

    def _binary(self, block, stats, ctx, fill: bool) -> np.ndarray:
        p = self.params
        img = block[0]
        if np.any(img != img):
            img = interpolate_nan(img)  # only whole frames get here with NaNs (see frame_stats)
        if p.equalize_reference is not None:
            if stats.equalize_table is not None:
                values, mapped = stats.equalize_table
                img = mapped[np.searchsorted(values, img)]
            else:
                from skimage.exposure import match_histograms

                img = match_histograms(img, stats.equalize_reference)
        img = apply_filters(img, p.filters, stats.filter_params)
        lo, hi = p.thresholds
        valid = img == img
        binary = np.zeros(img.shape, dtype=bool)
        binary[valid] = (img[valid] >= lo) & (img[valid] <= hi)
        if self.edge is not None and self.edge > 0:
            # Celldetective clears a border of the *frame*; in frame coordinates here.
            e = self.edge
            (Y, X), (oy, ox) = ctx.frame_shape, ctx.origin
            H, W = binary.shape
            binary[: max(0, min(H, e - oy)), :] = False
            binary[max(0, Y - e - oy):, :] = False
            binary[:, : max(0, min(W, e - ox))] = False
            binary[:, max(0, X - e - ox):] = False
        if fill:
            binary = self._fill(binary, stats, ctx)
        return binary

    def _peaks(self, distance, binary, stats, ctx) -> np.ndarray:
        """skimage's ``peak_local_max(distance, footprint, labels=binary, min_distance)`` on the frame.

        A window takes the frame's markers (:mod:`.markers`); a whole frame finds them itself,
        the frame-wide search box coming from ``stats``.
        """
        if stats.markers is not None:
            return markers_in_window(stats.markers, ctx.origin, binary.shape)
        if not ctx.is_whole_frame:
            raise RuntimeError("a watershed window needs the frame's markers: run tile_stats and "
                               "reduce_tile_stats first")
        p, roi = self.params, stats.roi
        peaks = np.zeros(binary.shape, bool)
        if roi is None:
            return peaks
        y0, y1, x0, x1 = roi
        footprint = self.footprint
        img, mask = distance[y0:y1, x0:x1], binary[y0:y1, x0:x1]
        single = footprint.size == 1 or (y1 - y0) * (x1 - x0) == 1
        out = local_maxima(img, mask, np.ones((1, 1)) if single else footprint)
        if not single and np.all(out[mask]):
            # skimage's 'trivial image': every foreground pixel a maximum
            out[:] = False
            out[np.logical_xor(mask, ndi.binary_opening(mask))] = True
        coords = np.argwhere(out)
        if len(coords) and p.marker_min_distance > 1:
            order = np.argsort(-img[out], kind="stable")
            coords = greedy_spacing(coords[order], p.marker_min_distance)
        peaks[coords[:, 0] + y0, coords[:, 1] + x0] = True
        return peaks

    def _watershed(self, binary: np.ndarray, distance: np.ndarray, stats, ctx) -> np.ndarray:
        from skimage.segmentation import watershed

        markers, _ = ndi.label(self._peaks(distance, binary, stats, ctx))
        if self.params.watershed_ties == "celldetective":
            labels = watershed(-distance, markers, mask=binary)
        else:
            labels = flood_components(-distance, markers, binary)
        if self.params.fill_holes:
            # a watershed of the hole-filled mask: objects in one piece, background open
            labels = fill_label_holes(labels, simple=True)
        return labels

    def _remove_matching(self, labels: np.ndarray, block: np.ndarray, ctx) -> np.ndarray:
        from skimage.measure import regionprops_table

        if not labels.any():
            return labels
        need = self._needed
        remove = self._counted_matches(labels) if need <= _COUNTED_FEATURES else None
        if remove is not None:  # 'area < 30', Celldetective's usual query: no per-object loop
            if remove.any():
                labels = labels.copy()
                labels[remove[labels]] = 0
            return labels
        props = ["label"] + [f for f in SHAPE_FEATURES if f in need and f != "label"]
        if need & {"centroid-0", "centroid-1", "radial_distance"}:
            props.append("centroid")
        intensity = None
        if self.intensity_channels:
            idx = [self.channels.index(c) for c in self.intensity_channels]
            intensity = np.moveaxis(block[idx], 0, -1)
            props += [f"intensity_{s}" for s in _INTENSITY_STATS]
        table = regionprops_table(labels, intensity_image=intensity, properties=props)
        if intensity is not None:
            for j, c in enumerate(self.intensity_channels):
                for s in _INTENSITY_STATS:
                    values = table.pop(f"intensity_{s}-{j}")
                    table[_intensity_name(c, s)] = values
                    table[_raw_intensity_name(self._channel_index[c], s)] = values
        if "centroid-0" in table:
            # frame coordinates; Celldetective's radial formula, axes as it writes them
            table["centroid-0"] = table["centroid-0"] + ctx.origin[0]
            table["centroid-1"] = table["centroid-1"] + ctx.origin[1]
            Y, X = ctx.frame_shape
            table["radial_distance"] = np.sqrt(
                (table["centroid-1"] - Y / 2) ** 2 + (table["centroid-0"] - X / 2) ** 2
            )
        n = len(table["label"])
        remove = np.zeros(n, dtype=bool)
        for q in self.queries:
            remove |= q.matches(table, n)
        if remove.any():
            labels = labels.copy()
            labels[np.isin(labels, table["label"][remove])] = 0
        return labels

    def _counted_matches(self, labels: np.ndarray) -> np.ndarray | None:
        """Per id: whether a query matches, from pixel counts (skimage's ``area`` is the count as
        float64, its ``label`` the id; the table lists present ids in ascending order)."""
        if labels.dtype.kind not in "iu" or labels.max() > labels.size:
            return None
        counts = np.bincount(labels.ravel().astype(np.intp, copy=False))
        present = np.flatnonzero(counts)
        present = present[present > 0]
        table = {"label": present, "area": counts[present].astype(np.float64)}
        n = len(present)
        remove = np.zeros(n, dtype=bool)
        for q in self.queries:
            remove |= q.matches(table, n)
        out = np.zeros(len(counts), bool)
        out[present[remove]] = True
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["params"] = self.params.model_dump(mode="json")
        return d


def _inf_to_nan(a: np.ndarray) -> np.ndarray:
    # Celldetective's frame loader turns +-inf into NaN (and the frame into float) on load.
    if a.dtype.kind == "f" and np.isinf(a).any():
        a = a.astype(float)
        a[np.isinf(a)] = np.nan
    return a
