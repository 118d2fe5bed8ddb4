"""A synthetic co-culture movie with ground truth, for the demo and the tests.

Two populations in two channels, overlapping freely in 2D as real effector/target
co-cultures do:

* **targets** (channel ``nuclei``): small, bright, round nuclei that drift and
  sometimes divide (a mother becomes two daughters moving apart);
* **effectors** (channel ``cfse``): larger, dimmer cells with irregular outlines that
  crawl faster.

Both channels have an uneven background (a gradient plus broad blobs), blur and noise.
Objects of one population never overlap each other, so the ground truth is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticMovie", "make_movie", "write_demo", "DEMO_CONFIG"]

CHANNELS = ("nuclei", "cfse")


@dataclass
class SyntheticMovie:
    """Pixels ``(t, c, y, x)`` uint16 and the true labels of each population ``(t, y, x)``."""

    image: np.ndarray
    truth: dict[str, np.ndarray]
    channels: tuple[str, ...] = CHANNELS
    pixel_size_um: float = 0.65


def _window(cy, cx, reach, size):
    """Slices of a square window around (cy, cx) and its coordinate grids."""
    # clipped to the frame (an object that drifted out of a long movie leaves an empty window)
    y0 = min(size, max(0, int(cy - reach) - 1))
    x0 = min(size, max(0, int(cx - reach) - 1))
    y1, x1 = max(y0, min(size, int(cy + reach) + 2)), max(x0, min(size, int(cx + reach) + 2))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(float)
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _disk(cy, cx, r, size):
    win, yy, xx = _window(cy, cx, r, size)
    return win, (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _star(cy, cx, radius, wobble, phases, size):
    win, yy, xx = _window(cy, cx, radius * (1 + sum(wobble)), size)
    ang = np.arctan2(yy - cy, xx - cx)
    r = radius * (1.0 + sum(w * np.sin(k * ang + p) for k, (w, p) in enumerate(zip(wobble, phases), start=2)))
    return win, (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _place(rng, n, radius_range, size, margin, existing=()):
    """Centres and radii, each object at least 3 px from the others over the whole movie."""
    out = list(existing)
    new = []
    tries = 0
    while len(new) < n and tries < 20000:
        tries += 1
        r = rng.uniform(*radius_range)
        c = rng.uniform(margin + r, size - margin - r, size=2)
        if all(np.hypot(*(c - o[0])) > r + o[1] + 3 for o in out):
            out.append((c, r))
            new.append((c, r))
    return new


def _background(rng, shape, level):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    bg = level * (1.0 + 0.6 * x / shape[1] + 0.3 * y / shape[0])
    blobs = np.zeros(shape)
    for _ in range(6):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        blobs += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (shape[0] / 5) ** 2))
    return bg + 0.25 * level * blobs


def make_movie(n_frames: int = 6, size: int = 384, n_targets: int = 30, n_effectors: int = 10,
               seed: int = 0) -> SyntheticMovie:
    """Draw a synthetic two-population movie.

    Parameters
    ----------
    n_frames, size : int
        Frames and frame edge length (square frames).
    n_targets, n_effectors : int
        Objects of each population in the first frame (divisions add targets).
    seed : int
        Random seed; the same seed gives the same movie.
    """
    rng = np.random.default_rng(seed)
    shape = (size, size)
    speed = {"targets": 0.8, "effectors": 1.5}
    # Celldetective's marker search ignores peaks near the frame edge: keep cells off it.
    margin = 14 + max(speed.values()) * n_frames
    targets = _place(rng, n_targets, (5.0, 7.5), size, margin)
    effectors = _place(rng, n_effectors, (13.0, 18.0), size, margin)
    tracks = {
        "targets": [dict(c=c, r=r, v=rng.normal(0, speed["targets"], 2),
                         divide=int(rng.integers(1, n_frames)) if rng.random() < 0.25 and n_frames > 1 else None,
                         axis=rng.normal(size=2)) for c, r in targets],
        "effectors": [dict(c=c, r=r, v=rng.normal(0, speed["effectors"], 2),
                           wobble=rng.uniform(0.05, 0.15, 3), phases=rng.uniform(0, 2 * np.pi, 3))
                      for c, r in effectors],
    }
    bg = [_background(rng, shape, 120.0), _background(rng, shape, 110.0)]
    image = np.zeros((n_frames, 2, size, size), np.uint16)
    truth = {k: np.zeros((n_frames, size, size), np.uint32) for k in tracks}
    for t in range(n_frames):
        for pop in ("targets", "effectors"):
            lab = truth[pop][t]
            nid = 0
            for tr in tracks[pop]:
                centre = tr["c"] + tr["v"] * t
                if pop == "targets":
                    d = tr["divide"]
                    if d is not None and t >= d:
                        # A division: two daughters of half the area, moving apart along one axis.
                        u = tr["axis"] / np.linalg.norm(tr["axis"])
                        rd = tr["r"] / np.sqrt(2)
                        sep = rd + 2.0 + 1.5 * (t - d)
                        parts = [(centre + u * sep, rd), (centre - u * sep, rd)]
                    else:
                        parts = [(centre, tr["r"])]
                    shapes = [_disk(cy, cx, r, size) for (cy, cx), r in parts]
                else:
                    shapes = [_star(*centre, tr["r"], tr["wobble"], tr["phases"], size)]
                for win, m in shapes:
                    nid += 1
                    sub = lab[win]
                    sub[m & (sub == 0)] = nid
        sig_t = ndi.gaussian_filter((truth["targets"][t] > 0) * 900.0, 1.2)
        sig_e = ndi.gaussian_filter((truth["effectors"][t] > 0) * 450.0, 1.5)
        nuc = bg[0] + sig_t + 0.05 * sig_e + rng.normal(0, 18, shape)
        cfse = bg[1] + sig_e + 0.05 * sig_t + rng.normal(0, 18, shape)
        image[t, 0] = np.clip(nuc, 0, 65535).astype(np.uint16)
        image[t, 1] = np.clip(cfse, 0, 65535).astype(np.uint16)
    return SyntheticMovie(image, truth)


DEMO_CONFIG = {
    "input": "movie.ome.zarr",
    "pixel_size_um": 0.65,
    "output": "movie.popseg.zarr",
    "populations": {
        "targets": {
            "segmenter": "threshold",
            "channel": "nuclei",
            "filters": [["gauss", 1.5]],
            "thresholds": [600, float("inf")],
            "marker_min_distance": 5,
            "marker_footprint_size": 9,
            "feature_queries": ["area < 30"],
            "do_watershed": True,
            "fill_holes": True,
        },
        "effectors": {
            "segmenter": "threshold",
            "channel": "cfse",
            "filters": [["gauss", 2]],
            "thresholds": [400, float("inf")],
            "marker_min_distance": 12,
            "marker_footprint_size": 25,
            "feature_queries": ["area < 200"],
            "do_watershed": True,
            "fill_holes": True,
        },
    },
}


def write_demo(folder: Path | str, **kwargs) -> tuple[Path, Path, SyntheticMovie]:
    """Write the synthetic movie as OME-Zarr (ground truth as its labels) and a config.

    Returns the movie path, the config path and the movie.
    """
    import yaml

    from .io.images import write_ome_zarr_image
    from .io.labels import LabelStore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    movie = make_movie(**kwargs)
    path = write_ome_zarr_image(folder / "movie.ome.zarr", movie.image, movie.channels,
                                pixel_size_um=movie.pixel_size_um)
    store = LabelStore(path, "0.5")
    for pop, lab in movie.truth.items():
        arr = store.create_labels(f"{pop}_truth", lab.shape, np.dtype(np.uint32), source_image="../../",
                                  scale={"y": movie.pixel_size_um, "x": movie.pixel_size_um}, unit_to_um=1.0)
        import zarr

        zarr.open_array(store=arr.zarr_store(), mode="r+")[...] = lab
    cfg = folder / "demo.yaml"
    cfg.write_text(yaml.safe_dump(DEMO_CONFIG, sort_keys=False))
    return path, cfg, movie
