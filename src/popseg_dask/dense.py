"""Dense fields of nuclei, for the tile benchmark and the stitching tests.

The demo movie's cells are sparse: clusters of objects within the link distance rarely chain
across a tile cut. Real fields chain. Two dense movies, one channel ``nuclei``:

* ``dsb2018``: a real image — the 2018 Data Science Bowl fluorescence field that StarDist ships
  (``stardist.data``, 512², about 120 touching nuclei) — scaled by 7/8 and tiled with a random
  flip or rotation per block, then shifted and noised per frame: ≥ 2 000 nuclei per 2048² frame,
  touching and clumped as in the original. Needs the ``stardist`` extra (nothing is downloaded).
* ``drawn``: clumps of 3–9 touching disks of random radius, blurred and noised, with their true
  labels: no extra needed (the property tests use it).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import PopsegError

__all__ = ["dense_movie", "DENSE_CONFIG", "SOURCES"]

SOURCES = ("dsb2018", "drawn")

# One threshold population with watershed, marker spacing 5 as in the dense trial.
DENSE_CONFIG = {
    "input": "dense.ome.zarr",
    "pixel_size_um": 0.5,
    "output": "dense.popseg.zarr",
    "populations": {
        "nuclei": {
            "segmenter": "threshold",
            "channel": "nuclei",
            "filters": [["gauss", 1]],
            "thresholds": [40, float("inf")],
            "marker_min_distance": 5,
            "marker_footprint_size": 9,
            # the largest nuclei are ~34 px across (17 px to the background): tiles are padded
            # for that, as StarDist's big.py asks for an overlap larger than the largest object
            "max_object_px": 40,
            "feature_queries": ["area < 40"],
            "do_watershed": True,
            "fill_holes": True,
        },
    },
}


def dense_movie(n_frames: int, size: int = 2048, seed: int = 0, source: str = "dsb2018") -> np.ndarray:
    """A dense movie ``(t, 1, y, x)`` uint16 (see the module's text for the two sources)."""
    rng = np.random.default_rng(seed)
    if source == "dsb2018":
        base = _dsb_mosaic(size + 64, rng)
        frames = [_jitter(base, size, rng) for _ in range(n_frames)]
    elif source == "drawn":
        frames = [_drawn_frame(size, rng)[0] for _ in range(n_frames)]
    else:
        raise PopsegError(f"unknown dense source {source!r}; use one of {', '.join(SOURCES)}")
    return np.stack(frames)[:, None]


def _dsb_mosaic(size: int, rng) -> np.ndarray:
    try:
        from stardist.data import test_image_nuclei_2d
    except ImportError:
        raise PopsegError("the dsb2018 dense movie needs StarDist's sample image: "
                          "pip install 'popseg-dask[stardist]' (or use source 'drawn')") from None
    img = ndi.zoom(test_image_nuclei_2d().astype(np.float32), 7 / 8, order=1)
    b = img.shape[0]
    n = -(-size // b)
    rows = []
    for _ in range(n):
        row = []
        for _ in range(n):
            block = np.rot90(img, int(rng.integers(4)))
            row.append(block[:, ::-1] if rng.integers(2) else block)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)[:size, :size]


def _jitter(base: np.ndarray, size: int, rng) -> np.ndarray:
    """One frame: the mosaic shifted (cells move), scaled in brightness, with noise."""
    dy, dx = rng.integers(0, base.shape[0] - size + 1, 2)
    frame = base[dy:dy + size, dx:dx + size] * rng.uniform(0.9, 1.1) + rng.normal(0, 2.0, (size, size))
    return np.clip(frame, 0, 65535).astype(np.uint16)


def _drawn_frame(size: int, rng, density: float = 2400 / 2048 ** 2) -> tuple[np.ndarray, np.ndarray]:
    """Clumps of touching disks: the image (uint16) and the true labels (later disks on top)."""
    truth = np.zeros((size, size), np.int32)
    n_target, k = max(1, int(density * size * size)), 0
    while k < n_target:
        cy, cx = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(3, 10))):
            r = rng.uniform(4.5, 8.0)
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2.2 * r)
            y, x = cy + dist * np.sin(ang), cx + dist * np.cos(ang)
            y0, y1 = int(max(0, y - r - 1)), int(min(size, y + r + 2))
            x0, x1 = int(max(0, x - r - 1)), int(min(size, x + r + 2))
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            k += 1
            truth[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    signal = ndi.gaussian_filter((truth > 0).astype(np.float32) * 150.0, 1.2)
    # a darker rim where two objects touch, as between real touching nuclei
    edges = ndi.morphological_gradient(truth, size=3) > 0
    image = signal * np.where(edges & (truth > 0), 0.8, 1.0) + 20 + rng.normal(0, 4.0, truth.shape)
    return np.clip(image, 0, 65535).astype(np.uint16), truth
