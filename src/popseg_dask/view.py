"""Look at a run in napari: the movie's channels and every population's labels, all lazy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import PopsegError
from .location import Location

__all__ = ["InProcess", "napari_layers", "view"]

_COLORMAPS = ["gray", "green", "magenta", "cyan", "yellow", "red", "blue"]


class InProcess:
    """A dask array that napari slices in this process (threads), never on a Dask cluster that
    happens to be the default client: workers may lack this process's credentials, and a slice
    for the screen should not queue behind a run's tasks."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim, self.size = array.shape, array.dtype, array.ndim, array.size

    def __getitem__(self, key):
        return np.asarray(self.array[key].compute(scheduler="threads"))

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array.compute(scheduler="threads"))
        return out.astype(dtype) if dtype is not None else out

    def __len__(self) -> int:
        return self.shape[0]


def napari_layers(output: Path | str) -> list[tuple[Any, dict, str]]:
    """Layer data for napari, as ``(data, kwargs, layer_type)``: images first, then labels.

    Nothing is read: images are the input movie's dask array (read in this process, see
    :class:`InProcess`), labels the output's Zarr arrays; each population's corrected label image (``<population>-corrected``,
    only its corrected frames hold labels) follows the populations. Label layers carry
    ``metadata``: the output's URL and the population, for popseg's napari widgets.
    """
    import zarr

    from .io.layout import CORRECTED_SUFFIX, OutputLayout
    from .io.record import read_run_record
    from .io.movie import movie_levels, open_run_input

    output = Location.of(output)
    rec = read_run_record(output, complete=False)
    movie = open_run_input(rec)
    px = movie.attrs["pixel_size_um"] or 1.0
    scale = (1.0, px, px)
    layers: list[tuple[Any, dict, str]] = []
    levels = movie_levels(movie)
    for i, c in enumerate(movie.c.values):
        data = [InProcess(lev[:, i]) for lev in levels]  # several levels: napari browses a pyramid
        layers.append((data if len(data) > 1 else data[0], {"multiscale": len(data) > 1, "name": str(c), "colormap": _COLORMAPS[i % len(_COLORMAPS)],
                                          "blending": "additive", "scale": scale}, "image"))
    layout = OutputLayout(output)
    for p in list(rec["populations"]) + layout.corrected_names():
        path = layout.label_array(p)
        if (path / "zarr.json").exists() or (path / ".zarray").exists():
            layers.append((zarr.open_array(store=path.zarr_store(read_only=True), mode="r"),
                           {"name": p, "scale": scale, "opacity": 0.5,
                            "metadata": {"popseg_output": output.url, "population": p.removesuffix(CORRECTED_SUFFIX),
                                         "corrected": p.endswith(CORRECTED_SUFFIX)}}, "labels"))
    return layers


def view(output: Path | str) -> None:
    """Open napari on a run (needs the ``napari`` extra and a display): the output through
    popseg's reader, with the proofreading and export/train widgets docked."""
    try:
        import napari
    except ImportError:
        raise PopsegError("napari is not installed; pip install 'popseg-dask[napari]'") from None
    viewer = napari.Viewer(title=f"popseg: {output}")
    for data, kwargs, kind in napari_layers(output):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    for widget in ("Proofread", "Export and train"):
        viewer.window.add_plugin_dock_widget("popseg-dask", widget)
    napari.run()
