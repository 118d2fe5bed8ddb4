"""Small helpers the widgets share: layers added or replaced by name, errors as one line."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PopsegError

__all__ = ["add_output_layers", "ensure_movie_layers", "one_line", "set_labels_layer"]

COLORMAPS = ["gray", "green", "magenta", "cyan", "yellow", "red", "blue"]


def one_line(err: BaseException) -> str:
    """What the CLI would print for ``err``: its message for a user's mistake, else its type too."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if isinstance(err, PopsegError) else f"{type(err).__name__}: {text}"


def ensure_movie_layers(viewer, movie) -> None:
    """The movie's channels as lazy image layers (t, y, x), unless layers of those names exist."""
    px = movie.attrs.get("pixel_size_um") or 1.0
    for i, c in enumerate(movie.c.values):
        if str(c) not in viewer.layers:
            viewer.add_image(movie.data[:, i], name=str(c), colormap=COLORMAPS[i % len(COLORMAPS)],
                             blending="additive", scale=(1.0, px, px))


def set_labels_layer(viewer, name: str, data: np.ndarray, scale_yx: tuple[float, float], *,
                     translate: tuple[float, ...] | None = None, metadata: dict[str, Any] | None = None):
    """Show ``data`` in the labels layer ``name`` (created, or its data replaced)."""
    scale = (1.0,) * (data.ndim - 2) + tuple(scale_yx)
    if name in viewer.layers and viewer.layers[name].data.shape == data.shape:
        layer = viewer.layers[name]
        layer.data = data
        if translate is not None:
            layer.translate = translate
    else:
        if name in viewer.layers:
            viewer.layers.remove(name)
        layer = viewer.add_labels(data, name=name, scale=scale, opacity=0.6,
                                  translate=translate if translate is not None else (0.0,) * data.ndim)
    if metadata:
        layer.metadata.update(metadata)
    return layer


def add_output_layers(viewer, output: str) -> list:
    """A popseg output's layers (see :func:`popseg_dask.view.napari_layers`), replacing label
    layers of the same names; image layers already there are kept."""
    from ..view import napari_layers

    added = []
    for data, kwargs, kind in napari_layers(output):
        name = kwargs["name"]
        if name in viewer.layers:
            if kind == "image":
                continue
            viewer.layers.remove(name)
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added
