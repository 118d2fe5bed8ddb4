"""Segmenter plugins.

Built-in: ``threshold``, ``stardist``, ``cellpose`` (the last two import their frameworks only
on workers, when a model is first loaded). Third-party segmenters register a :class:`Segmenter` subclass
under the entry-point group ``popseg_dask.segmenters``::

    [project.entry-points."popseg_dask.segmenters"]
    mymethod = "mypackage.segment:MySegmenter"

and are then used as ``segmenter: mymethod`` in a population.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

from ..config import PopulationSpec
from ..errors import PopsegError
from .base import Segmenter, TileGrid, WindowContext, resolve_channel
from .cellpose import CellposeSegmenter
from .stardist import StarDistSegmenter
from .threshold import ThresholdSegmenter

__all__ = ["Segmenter", "TileGrid", "WindowContext", "available_segmenters", "get_segmenter_class", "build_segmenter", "resolve_channel"]

ENTRY_POINT_GROUP = "popseg_dask.segmenters"
_BUILTIN: dict[str, type[Segmenter]] = {"threshold": ThresholdSegmenter, "stardist": StarDistSegmenter,
                                         "cellpose": CellposeSegmenter}


def available_segmenters() -> list[str]:
    """Names usable as ``segmenter:`` (built-in and installed plugins)."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_segmenter_class(name: str) -> type[Segmenter]:
    """The class registered under ``name``."""
    if name in _BUILTIN:
        return _BUILTIN[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                cls = ep.load()
            except Exception as err:  # a broken plugin must not look like a typo
                raise PopsegError(f"segmenter plugin '{name}' ({ep.value}) failed to import: {err}") from None
            if not (isinstance(cls, type) and issubclass(cls, Segmenter)):
                raise PopsegError(f"segmenter plugin '{name}' ({ep.value}) is not a popseg_dask Segmenter subclass")
            return cls
    raise PopsegError(f"unknown segmenter '{name}'; available: {', '.join(available_segmenters())}")


def build_segmenter(
    population: str, spec: PopulationSpec, channel_names: Sequence[str], base_dir: Path = Path("."),
    pixel_size_um: float | None = None,
) -> Segmenter:
    """Validate a population's keys with its segmenter's model and build the segmenter.

    ``pixel_size_um`` (the movie's) reaches segmenters whose ``from_config`` takes it (models
    trained at another pixel size rescale with it).
    """
    cls = get_segmenter_class(spec.segmenter)
    kwargs = {}
    if "pixel_size_um" in inspect.signature(cls.from_config).parameters:
        kwargs["pixel_size_um"] = pixel_size_um
    seg = cls.from_config(spec.params(), channel_names, base_dir=base_dir, population=population, **kwargs)
    devices = getattr(seg, "devices", ("cpu",))
    if spec.device == "gpu" and "gpu" not in devices:
        raise PopsegError(f"population '{population}': segmenter {spec.segmenter} runs on the CPU only; "
                          "remove 'device: gpu' (or set device: cpu)")
    return seg
