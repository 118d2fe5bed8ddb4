"""PNG plots of the benchmark results: ``python benchmarks/plots.py [--results DIR] [--out DIR]``.

Reads ``benchmarks/results/*.json`` (written by ``benchmarks/run.py``) and draws what each
result has: the scaling curve (core), the tile sweep (tiles), memory against movie length
(memory), the worker environment comparison (malloc) and the peer comparisons (celldetective,
cellpose-distributed, daskimage). A missing result is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

HERE = Path(__file__).parent


def _footer(fig, res: dict) -> None:
    m = res.get("machine", {})
    fig.text(0.01, 0.01, f"{res.get('command', '')}  |  {m.get('date', '')}, {m.get('cpus', '?')} cores, "
             f"commit {m.get('commit', '?')}", fontsize=6, color="0.4")


def scaling(res: dict, out: Path) -> Path:
    """Throughput against cores: processes (1, 2 workers), threads (1 worker x 2) and ideal."""
    fps = res["frames_per_s"]
    one = fps["popseg 1 worker"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([1, 2], [one, 2 * one], "--", color="0.6", label="ideal (from 1 worker)")
    ax.plot([1, 2], [one, fps["popseg 2 workers"]], "o-", label="worker processes x 1 thread")
    if "popseg 1 worker x 2 threads" in fps:
        ax.plot([1, 2], [one, fps["popseg 1 worker x 2 threads"]], "s-", label="1 worker x threads")
    pair = "2 serial loops at once (each the whole movie)"
    if pair in fps:
        ax.plot([1, 2], [fps["serial loop"], fps[pair]], "^:", color="C3",
                label="independent serial loops (the machine's ceiling)")
    else:
        ax.axhline(fps["serial loop"], color="C3", lw=1, label="plain serial loop (1 core)")
    mv = res["movie"]
    ax.set(xlabel="cores", ylabel="frame-populations / s", xticks=[1, 2],
           title=f"core: {mv['frames']} frames of {mv['size']}², 2 populations")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    _footer(fig, res)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out / "scaling.png")


def tile_sweep(res: dict, out: Path) -> Path:
    rows = res["variants"]
    names = list(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
    x = range(len(names))
    a1.bar(x, [rows[n]["wall_vs_untiled"] for n in names], color="C0")
    a1.set(xticks=list(x), xticklabels=names, xlabel="tile (px)", ylabel="wall time / untiled",
           title="time")
    for i, n in enumerate(names):
        share = 100 * rows[n]["median_stitch_share"]
        a1.text(i, rows[n]["wall_vs_untiled"], f"stitch {share:.1f}%", ha="center", va="bottom", fontsize=7)
    a2.bar(x, [rows[n]["median_peak_rss_mb"] for n in names], color="C1")
    a2.set(xticks=list(x), xticklabels=names, xlabel="tile (px)", ylabel="peak MB per worker", title="memory")
    mv = res["movie"]
    fig.suptitle(f"tiles: {mv['frames']} frames of {mv['size']}², 2 workers; every tiled output == untiled: "
                 f"{all(r.get('equal_to_untiled', True) for r in rows.values())}", fontsize=9)
    _footer(fig, res)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out / "tiles.png")


def memory(res: dict, out: Path) -> Path:
    n = [int(k) for k in res["lengths"]]
    peak = [v["peak_rss_mb_per_worker"] for v in res["lengths"].values()]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(n, peak, "o-")
    ax.axhspan(peak[0], peak[0] * 1.10, color="C2", alpha=0.15, label="within 10 % of the shortest")
    ax.set(xlabel="frames in the movie", ylabel="peak MB per worker", title=f"memory: frames of {res['size']}²")
    ax.set_ylim(0, max(peak) * 1.3)
    ax.legend(fontsize=7)
    _footer(fig, res)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, out / "memory.png")


def versus(res: dict, out: Path, name: str) -> Path:
    """Median seconds of every variant of a side-by-side benchmark, as horizontal bars, each
    labelled with the first variant's time over its own (speed relative to the first)."""
    med = res["median_s"]
    labels = list(med)
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.5 * len(labels)))
    ax.barh(range(len(labels)), [med[k] for k in labels], color=[f"C{i}" for i in range(len(labels))])
    first = med[labels[0]]
    for i, k in enumerate(labels):
        ax.text(med[k], i, f"  {med[k]:.1f} s" + (f", {first / med[k]:.2f}x" if i else ""), va="center", fontsize=8)
    ax.set(yticks=range(len(labels)), yticklabels=labels, xlabel="seconds (median); x: speed against the top bar")
    ax.set_xlim(0, max(med.values()) * 1.35)
    ax.invert_yaxis()
    ax.set_title(name, fontsize=9)
    _footer(fig, res)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out / f"{name}.png")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--out", type=Path, default=HERE / "plots")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    drawers = {"core": scaling, "tiles": tile_sweep, "memory": memory}
    for name in ("core", "tiles", "memory", "malloc", "celldetective", "cellpose-distributed", "daskimage"):
        path = a.results / f"{name}.json"
        if not path.exists():
            print(f"no {path.name}: run `python benchmarks/run.py {name}` first; skipped")
            continue
        res = json.loads(path.read_text())
        if name == "daskimage":  # seconds only, under another key
            res = {**res, "median_s": res["seconds"]}
        written = drawers[name](res, a.out) if name in drawers else versus(res, a.out, name)
        print(f"written {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
