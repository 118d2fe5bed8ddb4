"""napari reader: a popseg output (local folder or URL) opens as its movie and labels."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import PopsegError
from ..io.record import stored_record
from ..view import napari_layers

__all__ = ["get_reader", "read_output"]


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """The reader for ``path`` when it is a popseg output (it holds a run record), else None so
    napari tries its other readers (a plain OME-Zarr goes to napari-ome-zarr)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return read_output if stored_record(str(path)) is not None else None
    except (PopsegError, OSError, ValueError):
        return None


def read_output(path: str | list[str]) -> list[tuple]:
    """Layer data of a popseg output: the movie's channels, then every population's labels and
    corrections (see :func:`popseg_dask.view.napari_layers`)."""
    path = path[0] if isinstance(path, list) else path
    return napari_layers(str(path))
