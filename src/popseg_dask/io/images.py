"""Write an image (t, c, y, x) as an OME-Zarr image group, NGFF 0.4 or 0.5.

Used for the demo's synthetic movie and by tests; popseg never rewrites a user's movie.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

__all__ = ["write_ome_zarr_image"]


def write_ome_zarr_image(
    path: Path | str,
    data: np.ndarray,
    channels: Sequence[str],
    *,
    pixel_size_um: float | None = None,
    frame_interval_s: float | None = None,
    version: str = "0.5",
    chunks: tuple[int, ...] | None = None,
    axes: str = "tcyx",
) -> Path:
    """Write ``data`` (axes as given, default t, c, y, x) as a one-level OME-Zarr image.

    Parameters
    ----------
    path : path
        The image group to create (must not exist).
    data : array
        Pixels, with the axes named by ``axes``.
    channels : list of str
        Channel names (``omero.channels[].label``).
    pixel_size_um, frame_interval_s : float, optional
        Scale of x/y (micrometres) and t (seconds).
    version : {"0.5", "0.4"}
        NGFF version; 0.5 is written as Zarr v3, 0.4 as Zarr v2.
    chunks : tuple, optional
        Chunk shape (default: one plane per chunk).
    axes : str
        Axis letters of ``data``.
    """
    path = Path(path)
    zf = 3 if version == "0.5" else 2
    grp = zarr.open_group(str(path), mode="w-", zarr_format=zf)
    if chunks is None:
        chunks = tuple(n if a in "yx" else 1 for a, n in zip(axes, data.shape))
    kw = {"dimension_names": list(axes)} if zf == 3 else {}
    arr = zarr.create_array(store=str(path / "0"), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            fill_value=0, zarr_format=zf, **kw)
    arr[...] = data
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    ax_meta = []
    for a in axes:
        m = {"name": a, "type": kinds[a]}
        if a in "yx" and pixel_size_um is not None:
            m["unit"] = "micrometer"
        if a == "t" and frame_interval_s is not None:
            m["unit"] = "second"
        ax_meta.append(m)
    scale = [
        (pixel_size_um or 1.0) if a in "yx" else (frame_interval_s or 1.0) if a == "t" else 1.0 for a in axes
    ]
    ms = [{"name": path.name, "axes": ax_meta,
           "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    lo, hi = (float(np.min(data)), float(np.max(data))) if data.size else (0.0, 1.0)
    colors = ["00FFFF", "FF00FF", "FFFF00", "FFFFFF"]
    omero = {"channels": [{"label": str(c), "color": colors[i % len(colors)], "active": True,
                           "window": {"start": lo, "end": hi, "min": lo, "max": hi}}
                          for i, c in enumerate(channels)]}
    if zf == 3:
        grp.attrs["ome"] = {"version": "0.5", "multiscales": ms, "omero": omero}
    else:
        ms[0]["version"] = "0.4"
        grp.attrs.update({"multiscales": ms, "omero": omero})
    return path
