"""Segmenter plugins.

Built-in: ``threshold``, ``stardist``, ``cellpose`` (the last two import their frameworks only
on workers, when a model is first loaded). Third-party segmenters register a :class:`Segmenter`
subclass under the entry-point group ``popseg_dask.segmenters``::

    [project.entry-points."popseg_dask.segmenters"]
    mymethod = "mypackage.segment:MySegmenter"

and are then used as ``segmenter: mymethod`` in a population. The protocol they follow is
declared on :class:`Segmenter` (see :func:`protocol_markdown`).
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Sequence

from ..config import PopulationSpec
from ..errors import PopsegError
from .base import BuildContext, Segmenter, WindowContext, protocol_markdown, resolve_channel
from .cellpose import CellposeSegmenter
from .stardist import StarDistSegmenter
from .threshold import ThresholdSegmenter

__all__ = ["BuildContext", "Segmenter", "WindowContext", "available_segmenters", "get_segmenter_class",
           "build_segmenter", "protocol_markdown", "refresh_plugins", "resolve_channel"]

ENTRY_POINT_GROUP = "popseg_dask.segmenters"
# The built-ins are listed here only (not as entry points too): a source checkout without
# install metadata still has them.
BUILTIN: dict[str, type[Segmenter]] = {"threshold": ThresholdSegmenter, "stardist": StarDistSegmenter,
                                       "cellpose": CellposeSegmenter}


@functools.lru_cache(maxsize=1)
def plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed third-party segmenters by name (scanned once per process: the scan reads every
    installed package's metadata)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN}


def refresh_plugins() -> None:
    """Scan the installed plugins again (after installing one into a running process)."""
    plugin_entry_points.cache_clear()
    get_segmenter_class.cache_clear()


def available_segmenters() -> list[str]:
    """Names usable as ``segmenter:`` (built-in and installed plugins)."""
    return sorted(set(BUILTIN) | set(plugin_entry_points()))


@functools.lru_cache(maxsize=None)
def get_segmenter_class(name: str) -> type[Segmenter]:
    """The class registered under ``name``."""
    if name in BUILTIN:
        return BUILTIN[name]
    ep = plugin_entry_points().get(name)
    if ep is None:
        raise PopsegError(f"unknown segmenter '{name}'; available: {', '.join(available_segmenters())}")
    try:
        cls = ep.load()
    except Exception as err:  # a broken plugin must not look like a typo
        raise PopsegError(f"segmenter plugin '{name}' ({ep.value}) failed to import: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Segmenter)):
        raise PopsegError(f"segmenter plugin '{name}' ({ep.value}) is not a popseg_dask Segmenter subclass")
    return cls


def build_segmenter(population: str, spec: PopulationSpec, channel_names: Sequence[str], base_dir: Path = Path("."),
                    pixel_size_um: float | None = None) -> Segmenter:
    """Validate a population's keys with its segmenter's model and build the segmenter.

    Parameters
    ----------
    population : str
    spec : PopulationSpec
    channel_names : sequence of str
        The movie's channels.
    base_dir : path
        The config file's folder.
    pixel_size_um : float, optional
        The movie's pixel size (models trained at another one rescale).
    """
    cls = get_segmenter_class(spec.segmenter)
    ctx = BuildContext(tuple(str(c) for c in channel_names), Path(base_dir), population, pixel_size_um)
    seg = cls.from_config(spec.params(), ctx)
    if spec.device == "gpu" and "gpu" not in seg.devices:
        raise PopsegError(f"population '{population}': segmenter {spec.segmenter} runs on the CPU only; "
                          "remove 'device: gpu' (or set device: cpu)")
    return seg
