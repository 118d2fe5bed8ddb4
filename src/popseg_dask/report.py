"""A QC report of a run: one HTML page with pictures a biologist can judge at a glance.

``<output>/report/index.html`` with PNGs beside it: objects per frame per population, area
distributions, an overlay montage of sample frames (each population's contours in its own colour
over the image), time per stage, and the config and versions used.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .io.labels import open_label_array
from .io.layout import OutputLayout
from .location import Location

__all__ = ["write_report", "overlay", "POPULATION_COLOURS"]

POPULATION_COLOURS = ["#ff3b30", "#34c759", "#0a84ff", "#ffd60a", "#bf5af2", "#ff9f0a", "#64d2ff"]


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], float) / 255.0


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, (1, 99.8))
    return np.clip((img.astype(float) - lo) / max(hi - lo, 1e-9), 0, 1)


def overlay(image: np.ndarray, labels: dict[str, np.ndarray], colours: dict[str, str]) -> np.ndarray:
    """RGB picture: the channels as grey (mean of normalised channels), each population's contours in colour."""
    from skimage.segmentation import find_boundaries

    grey = np.mean([_normalise(c) for c in np.atleast_3d(np.moveaxis(image, 0, -1)).transpose(2, 0, 1)], axis=0)
    rgb = np.repeat(grey[..., None], 3, axis=2) * 0.85
    for pop, lab in labels.items():
        edge = find_boundaries(lab, mode="inner")
        rgb[edge] = _rgb(colours[pop])
    return rgb


def write_report(output: "Location | Path | str", *, frames: int = 4, measurements: bool = True) -> Path | str:
    """Write ``<output>/report/index.html`` (and its PNGs) for a finished run; returns the HTML page
    (a path for a local output, a URL for a remote one).

    Parameters
    ----------
    output : path
        The run's output store.
    frames : int
        Frames in the overlay montage (spread over the movie).
    measurements : bool
        Use ``measurements.parquet`` for the area plots when present (else areas are counted here).
    """
    import matplotlib

    matplotlib.use("Agg")
    from .io.record import read_run_record

    output = Location.of(output)
    rec = read_run_record(output)
    pops = list(rec["populations"])
    colours = {p: POPULATION_COLOURS[i % len(POPULATION_COLOURS)] for i, p in enumerate(pops)}
    out = OutputLayout(output).report_dir
    areas = _areas(output, pops, measurements)
    _plot_counts(out / "objects_per_frame.png", rec, colours)
    _plot_areas(out / "areas.png", areas, colours)
    _plot_overlays(out / "overlay.png", output, rec, colours, frames)
    _plot_timings(out / "timings.png", rec)
    html_path = out / "index.html"
    html_path.write_bytes(_page(rec, pops, colours, areas).encode())
    return Path(html_path.url) if html_path.is_local else html_path.url


def _save(fig, path: Location) -> None:
    """A figure as PNG at ``path`` (a local file or an object), then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def _plot_counts(path: Location, rec, colours: dict[str, str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for p in colours:
        ax.plot(rec["populations"][p]["objects_per_frame"], marker="o", ms=3, color=colours[p], label=p)
    ax.set_xlabel("frame")
    ax.set_ylabel("objects")
    ax.set_title("Objects per frame")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _plot_areas(path: Location, areas: dict[str, np.ndarray], colours: dict[str, str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for p in colours:
        if len(areas[p]):
            ax.hist(areas[p], bins=40, histtype="stepfilled", alpha=0.45, color=colours[p], label=f"{p} (n={len(areas[p])})")
    ax.set_xlabel("area (px)")
    ax.set_ylabel("objects")
    ax.set_title("Object areas, all frames")
    ax.legend(frameon=False)
    fig.tight_layout()
    _save(fig, path)


def _plot_overlays(path: Location, output: Location, rec, colours: dict[str, str], frames: int) -> None:
    """Contours of every population over a few frames spread through the movie."""
    import matplotlib.pyplot as plt

    from .io.movie import open_run_input

    pops = list(colours)
    movie = open_run_input(rec)
    n_t = len(rec["populations"][pops[0]]["objects_per_frame"])
    picks = sorted(set(np.linspace(0, n_t - 1, min(frames, n_t)).round().astype(int).tolist()))
    arrays = {p: open_label_array(output, p) for p in pops}
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.6), dpi=110, squeeze=False)
    for ax, t in zip(axes[0], picks):
        # read here, not on a Dask client this process may hold: its workers may lack this
        # process's credentials (an AWS_* environment set after they started)
        image = np.asarray(movie.data[t].compute(scheduler="threads"))
        labs = {p: arrays[p][t] for p in pops}
        ax.imshow(overlay(image, labs, colours), interpolation="nearest")
        ax.set_title(f"frame {t}: " + ", ".join(f"{p} {len(np.unique(labs[p])) - 1}" for p in pops), fontsize=9)
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colours[p], lw=3, label=p) for p in pops]
    fig.legend(handles=handles, loc="lower center", ncol=len(pops), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    _save(fig, path)


def _plot_timings(path: Location, rec) -> None:
    import matplotlib.pyplot as plt

    timings = {k.removesuffix("_s"): v for k, v in rec.get("timings", {}).items() if k != "total_s"}
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=110)
    ax.barh(list(timings), list(timings.values()), color="#8e8e93")
    ax.set_xlabel("seconds")
    ax.set_title(f"Time per stage (total {rec['timings'].get('total_s', 0):.1f} s on {rec.get('n_workers')} worker(s))")
    fig.tight_layout()
    _save(fig, path)


def _areas(output: Location, pops: list[str], use_table: bool) -> dict[str, np.ndarray]:
    table = OutputLayout(output).measurements
    if use_table and table.exists():
        import pandas as pd

        df = pd.read_parquet(table.url, columns=["population", "area_px"], storage_options=table.io_options)
        return {p: df.loc[df["population"] == p, "area_px"].to_numpy() for p in pops}

    out = {}
    for p in pops:
        arr = open_label_array(output, p)
        sizes = []
        for t in range(arr.shape[0]):
            lab = arr[t]
            _, counts = np.unique(lab[lab > 0], return_counts=True)
            sizes.append(counts)
        out[p] = np.concatenate(sizes) if sizes else np.zeros(0)
    return out


def _page(rec: dict[str, Any], pops: list[str], colours: dict[str, str], areas: dict[str, np.ndarray]) -> str:
    rows = "".join(
        f"<tr><td><span class=sw style='background:{colours[p]}'></span>{html.escape(p)}</td>"
        f"<td>{rec['populations'][p].get('segmenter', '')}</td><td>{rec['populations'][p]['n_objects']}</td>"
        f"<td>{np.median(areas[p]) if len(areas[p]) else float('nan'):.0f}</td>"
        f"<td>{rec['populations'][p].get('tiles_per_frame', 1)}</td>"
        f"<td>{rec['populations'][p].get('merged_regions', 0)}</td></tr>"
        for p in pops
    )
    config = html.escape(json.dumps(rec.get("config", {}), indent=2))
    versions = html.escape(json.dumps(rec.get("versions", {}), indent=2))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>popseg QC report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
img{{max-width:100%;border:1px solid #ddd;margin:.5em 0}} td,th{{padding:.2em .8em;text-align:left}}
.sw{{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}}
pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}}</style></head><body>
<h1>popseg QC report</h1>
<p>Input <code>{html.escape(str(rec.get('input')))}</code>, run finished {html.escape(str(rec.get('finished')))},
{rec.get('n_workers')} worker(s), {rec['timings'].get('total_s', 0):.1f} s.</p>
<table><tr><th>population</th><th>segmenter</th><th>objects</th><th>median area (px)</th>
<th>tiles/frame</th><th>merged regions</th></tr>{rows}</table>
<h2>Contours over the image</h2><img src="overlay.png" alt="overlay montage">
<h2>Objects per frame</h2><img src="objects_per_frame.png" alt="objects per frame">
<h2>Areas</h2><img src="areas.png" alt="area distributions">
<h2>Time per stage</h2><img src="timings.png" alt="timings">
<h2>Configuration</h2><pre>{config}</pre>
<h2>Versions</h2><pre>{versions}</pre>
</body></html>
"""
