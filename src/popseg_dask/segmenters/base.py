"""The segmenter protocol.

A segmenter turns pixels into a label image. It is a plain, picklable Python object that knows
nothing of Dask: the engine decides where and on what block it runs. Every part of the protocol,
required or optional, is declared on :class:`Segmenter` with its default and its docstring;
:func:`protocol_markdown` renders that list (the README's plugin section is generated from it).

Heavy state (a neural network) must be loaded lazily on first call, once per worker process,
never pickled with the object.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np
from pydantic import BaseModel, ValidationError

from ..config import Strict, validation_message
from ..errors import PopsegError

if TYPE_CHECKING:
    from ..tiling import TilePlan

__all__ = ["BuildContext", "Segmenter", "WindowContext", "protocol_markdown", "resolve_channel"]


@dataclass(frozen=True)
class BuildContext:
    """What a segmenter is built against, besides its own keys.

    ``channel_names``: the movie's channels; ``base_dir``: the config file's folder (for relative
    paths in the keys); ``population``: its name (for messages); ``pixel_size_um``: the movie's
    pixel size, when known (models trained at another one rescale).
    """

    channel_names: tuple[str, ...]
    base_dir: Path = Path(".")
    population: str = ""
    pixel_size_um: float | None = None

    @classmethod
    def of(cls, context: "BuildContext | Sequence[str]") -> "BuildContext":
        """A context as given, or one made from a list of channel names (scripts, tests)."""
        if isinstance(context, BuildContext):
            return context
        return cls(tuple(str(c) for c in context))


@dataclass(frozen=True, eq=False)
class WindowContext:
    """Where a block sits: the frame's shape, the window's origin, its artificial edges.

    ``artificial`` is (top, bottom, left, right): True where the window edge lies inside the
    frame (the segmenter sees a cut there), False on the frame's own edges. ``aux`` is the
    window of the per-pixel arrays the segmenter's ``tile_stats`` stored (or None). ``frame``:
    the movie frame's index (None outside a run), which names the window in an output cache.
    """

    frame_shape: tuple[int, int]
    origin: tuple[int, int] = (0, 0)
    artificial: tuple[bool, bool, bool, bool] = (False, False, False, False)
    aux: np.ndarray | None = None
    frame: int | None = None

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
    """Base class of segmenter plugins: the whole protocol, each part with its default.

    A subclass sets :attr:`name`, :attr:`Params` and :attr:`channels` and implements
    :meth:`__call__`; every other part is optional. It is built by :meth:`from_config` only.

    Attributes
    ----------
    name : str
        The name a population gives as ``segmenter:`` (required).
    Params : pydantic model
        The population keys it accepts; unknown keys are errors (required).
    channels : list of str
        The movie channels it reads, in the order they appear in ``block`` (required).
    halo : int
        Pixels of context needed on each side of a window: a cluster whose pixels all lie ``halo``
        pixels or more from every cut of a window comes out of it exactly as from the whole frame.
    link : int
        Objects closer than this (Chebyshev, pixels) may influence each other's segmentation and
        are resolved together as one cluster (0: independent).
    object_size : int
        The largest object (or cluster) expected, in pixels; windows are padded by
        ``halo + object_size`` so that a cut object is resolved whole by a neighbouring tile.
    align : int
        Windows start on multiples of this (a network that downsamples by 16 sees the same
        pooling blocks in every window); tile sizes and halo are rounded up to it.
    objects_independent : bool
        Each object is its own cluster (networks): touching cells never chain into one blob.
    whole_frame_reason : str or None
        Set when this configuration cannot be tiled exactly; its frames then run whole.
    devices : tuple of str
        Devices it can run on: ``("cpu",)`` or ``("cpu", "gpu")``.
    resources : dict or None
        Dask worker resources its segment tasks need (e.g. ``{"GPU": 1}``), set by :meth:`on_device`.
    needs_frame_stats : bool
        Run :meth:`frame_stats` on each whole frame before its tiles.
    needs_tile_stats : bool
        Run :meth:`tile_stats` on each tile's core and :meth:`reduce_tile_stats` on all of them
        before any tile is segmented (frame-wide facts computed tile by tile).
    tile_stats_rounds : int
        Rounds of :meth:`tile_stats` and :meth:`reduce_tile_stats`: each round's tiles see the
        statistics the previous round reduced, and the ``ctx.aux`` earlier rounds stored (a fact
        that needs another, e.g. peaks of a mask whose holes are a frame fact).
    exact_tiles : bool
        Its tiled output equals its whole-frame output bitwise, whatever the tile size and halo:
        a re-run that changes only those recomputes nothing. Networks (False) see other context
        in other windows, so their tile plan is part of what their labels were computed from.
    label_neutral : frozenset of str
        Keys of :attr:`Params` that cannot change its labels (padding hints, batch sizes, paths
        whose contents are recorded otherwise): a re-run that changes only those recomputes nothing.
    label_packages : tuple of str
        Distributions whose version can change its labels (recorded; an upgrade recomputes).
    labels_version : int
        Bumped by the plugin's author when a change of its code changes its labels.
    postprocess_keys : frozenset of str
        Keys of :attr:`Params` that act only after the network (thresholds, NMS, minimum size):
        with ``cache: model_outputs`` a change of only these reruns post-processing from the
        cached network outputs. Empty: it has no cacheable network outputs.
    window_stream : int
        Whole frames the engine hands one :meth:`segment_windows` call (one task) when the movie
        has frames enough: a segmenter that overlaps reading, forward pass and post-processing of
        consecutive windows, or batches them, needs several.
    cache : object or None
        Set by the engine for ``cache: model_outputs``: ``load(frame, box)`` -> dict of arrays or
        None, ``save(frame, box, arrays)``, where ``box`` is the window (y0, x0, height, width).
    """

    name: ClassVar[str]
    Params: ClassVar[type[Strict]]

    channels: list[str]
    halo: int = 0
    link: int = 0
    object_size: int = 0
    align: int = 1
    objects_independent: bool = False
    whole_frame_reason: str | None = None
    devices: tuple[str, ...] = ("cpu",)
    resources: dict[str, float] | None = None
    needs_frame_stats: bool = False
    needs_tile_stats: bool = False
    tile_stats_rounds: int = 1
    exact_tiles: bool = False
    label_neutral: ClassVar[frozenset[str]] = frozenset()
    label_packages: ClassVar[tuple[str, ...]] = ()
    labels_version: ClassVar[int] = 1
    postprocess_keys: ClassVar[frozenset[str]] = frozenset()
    window_stream: int = 1
    cache: Any = None

    @classmethod
    def from_config(cls, params: dict[str, Any], context: BuildContext | Sequence[str]) -> "Segmenter":
        """Validate a population's keys with :attr:`Params` and build ``cls(params, context)``.

        ``context`` is a :class:`BuildContext` (or just the movie's channel names). Override it
        to read keys before validation (e.g. a file the keys point to).
        """
        ctx = BuildContext.of(context)
        try:
            p = cls.Params(**params)
        except ValidationError as err:
            raise PopsegError("config error: " + validation_message(err, f"populations.{ctx.population}")) from None
        return cls(p, ctx)

    def on_device(self, device: str) -> "Segmenter":
        """This segmenter set to run on ``device`` (one of :attr:`devices`); a copy, never mutated.

        Default: itself (a CPU segmenter). GPU-capable ones set :attr:`resources` on the copy.
        """
        return self

    def with_context(self, halo: int) -> "Segmenter":
        """This segmenter for windows padded by a user's ``halo``; a copy, never mutated.

        Default: itself — an exact margin stays what it is (a smaller halo only means more
        re-segmented regions). Networks, whose margin is an estimate, take the user's instead.
        """
        return self

    def reference_frames(self) -> list[int]:
        """Frames whose pixels :meth:`movie_stats` needs (default: none)."""
        return []

    def movie_stats(self, frames: dict[int, np.ndarray]) -> Any:
        """Reduce the reference frames (each ``(c, y, x)``) to statistics passed to every call."""
        return None

    def frame_stats(self, frame: np.ndarray, stats: Any) -> Any:
        """Statistics of a whole frame ``(c, y, x)`` (run when :attr:`needs_frame_stats`)."""
        return stats

    def tile_stats(self, block: np.ndarray, stats: Any, ctx: WindowContext,
                   core: tuple[slice, slice]) -> tuple[Any, np.ndarray | None]:
        """Partial frame statistics from one tile's core (run when :attr:`needs_tile_stats`).

        Returns the partial (small, sent to :meth:`reduce_tile_stats`) and optionally an int32
        array of the core's shape that the engine stores and hands back, windowed, as
        ``ctx.aux`` when segmenting.
        """
        return None, None

    def reduce_tile_stats(self, partials: list, stats: Any, plan: "TilePlan | None" = None) -> Any:
        """Combine the tiles' partial statistics (in the order of ``plan``'s tiles) into the frame's."""
        return stats

    @abstractmethod
    def __call__(self, block: np.ndarray, stats: Any = None) -> np.ndarray:
        """Segment a whole frame ``(c, y, x)`` into an integer ``(y, x)`` label image (0: background).

        Ids need not be ordered or contiguous: they are renumbered canonically.
        """

    def segment_window(self, block: np.ndarray, stats: Any, ctx: WindowContext
                       ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Segment a window of a frame: (labels, support mask, whole-frame vote).

        The support's clusters decide exactness. Default: :meth:`__call__`, its foreground, no vote.
        """
        labels = self(block, stats)
        return labels, labels > 0, False

    def segment_windows(self, windows: Iterable[tuple[np.ndarray, Any, WindowContext]]
                        ) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Segment ``(block, stats, ctx)`` windows in order, yielding :meth:`segment_window`'s result for each.

        Default: one after the other. ``windows`` may be lazy (the engine reads each block as it
        is pulled): networks pull ahead, batch several windows per forward pass and post-process
        one batch while the next runs. Results must not depend on how windows are grouped.
        """
        for block, stats, ctx in windows:
            yield self.segment_window(block, stats, ctx)

    def label_inputs(self) -> dict[str, Any]:
        """What its labels depend on besides the input pixels and packages, as JSON values.

        Default: its name, :attr:`labels_version`, channels and ``settings``: every key of the
        validated ``params`` attribute (a :attr:`Params` instance) but :attr:`label_neutral`.
        ``settings`` None (no ``params`` attribute) means unknown: every re-run recomputes it.
        Plugins add what else decides their labels (a model's weights).
        """
        params = getattr(self, "params", None)
        settings = (params.model_dump(mode="json", exclude=set(self.label_neutral))
                    if isinstance(params, BaseModel) else None)
        return {"segmenter": self.name, "version": self.labels_version, "channels": list(self.channels),
                "settings": settings}

    def describe(self) -> dict[str, Any]:
        """What the run record says about this segmenter."""
        return {"segmenter": self.name, "channels": list(self.channels), "halo": self.halo,
                "link": self.link, "resources": self.resources}


def _attribute_docs(doc: str) -> list[tuple[str, str, str]]:
    """(name, type, description) of each entry of a numpydoc 'Attributes' section."""
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Attributes") + 2
    out: list[tuple[str, str, str]] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            name, _, kind = line.partition(" : ")
            out.append((name.strip(), kind.strip(), ""))
        elif line.strip() and out:
            name, kind, text = out[-1]
            out[-1] = (name, kind, (text + " " + line.strip()).strip())
    return out


PROTOCOL_METHODS = ("from_config", "__call__", "on_device", "with_context", "reference_frames", "movie_stats",
                    "frame_stats", "tile_stats", "reduce_tile_stats", "segment_window", "segment_windows", "label_inputs",
                    "describe")


def _md(text: str) -> str:
    """reST of a docstring as Markdown table text: roles dropped, literals single-quoted, pipes escaped."""
    text = re.sub(r":(?:meth|attr|class|func):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
    return text.replace("|", "\\|")


def protocol_markdown() -> str:
    """The protocol as a Markdown table, from :class:`Segmenter` itself (README's plugin section)."""
    rows = ["| part | default | what it is |", "|---|---|---|"]
    for name, kind, text in _attribute_docs(Segmenter.__doc__ or ""):
        default = "required" if name in ("name", "Params", "channels") else f"`{getattr(Segmenter, name)!r}`"
        rows.append(f"| `{name}` ({_md(kind)}) | {default} | {_md(text.removesuffix(' (required).').rstrip('.') + '.')} |")
    for name in PROTOCOL_METHODS:
        fn = getattr(Segmenter, name)
        sig = str(inspect.signature(fn)).replace("'", "").replace('"', "")
        first = " ".join(inspect.getdoc(fn).split("\n\n")[0].split())
        required = "required" if getattr(fn, "__isabstractmethod__", False) else "optional"
        rows.append(f"| `{_md(name + sig)}` | {required} | {_md(first)} |")
    return "\n".join(rows) + "\n"
