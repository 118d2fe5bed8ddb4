"""``popseg tune``: search one population's settings on frames with known labels.

Every setting of a grid (or a random sample of it) is scored on the same frames, against labels
taken as the truth (corrected labels, or any label image), by matching objects at IoU 0.5, 0.75
and 0.9: F1 = 2 TP / (2 TP + FP + FN), counts pooled over the frames. Frames are segmented exactly
as a run segments them (the population's tiles, halo and statistics, through ``segment_frame``),
one Dask task per frame on the run's cluster, every setting inside that task.

Settings that differ only in post-processing keys (the segmenter's ``postprocess_keys``: StarDist
``prob_thresh``/``nms_thresh``, Cellpose ``cellprob_threshold``/``flow_threshold``/``min_size``)
share one network pass per window: the task keeps the window's network outputs in memory and each
setting post-processes them — the same float16 outputs a run would compute, so each setting's
labels are the labels a run with it would write.

The best setting (highest mean F1 over the three IoUs; the first in the table on ties) is written
into a copy of the config, beside the table (CSV, JSON) and a PNG of F1 per setting.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import PopsegError
from .metrics import match_counts

__all__ = ["FrameMemo", "default_space", "evaluate_frame", "expand_space", "tune"]

IOUS = (0.5, 0.75, 0.9)


class FrameMemo:
    """One frame's network outputs by window, in memory, shared by the settings of one task.

    It follows the segmenters' ``cache`` protocol; ``frame_local`` tells ``segment_frame`` that it
    holds one frame's windows only, so keeping it for a frame outside a movie is safe.
    """

    frame_local = True

    def __init__(self):
        self.windows: dict[tuple, dict[str, np.ndarray]] = {}

    def load(self, frame, box):
        return self.windows.get(tuple(box))

    def save(self, frame, box, arrays):
        self.windows[tuple(box)] = arrays


def default_space(segmenter_name: str, params: dict[str, Any]) -> dict[str, list]:
    """A small grid around a population's settings when no ``--space`` is given."""
    if segmenter_name == "stardist":
        return {"prob_thresh": [0.3, 0.4, 0.5, 0.6, 0.7], "nms_thresh": [0.3, 0.4, 0.5]}
    if segmenter_name == "cellpose":
        return {"cellprob_threshold": [-1.0, 0.0, 1.0], "flow_threshold": [0.2, 0.4, 0.6]}
    if segmenter_name == "threshold" and params.get("thresholds"):
        lo, hi = params["thresholds"]
        return {"thresholds": [[round(float(lo) * f, 6), hi] for f in (0.8, 0.9, 1.0, 1.1, 1.2)]}
    raise PopsegError(f"no default search space for segmenter {segmenter_name}; give --space space.yaml "
                      "(a mapping of keys to lists of values)")


def expand_space(space: Any, samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every combination of a ``{key: [values]}`` grid, or ``samples`` of them drawn at random."""
    if not isinstance(space, dict) or not space:
        raise PopsegError("the search space must be a mapping of population keys to lists of values, "
                          "e.g. {prob_thresh: [0.4, 0.5], nms_thresh: [0.3, 0.4]}")
    for key, values in space.items():
        if not isinstance(values, list) or not values:
            raise PopsegError(f"search space key {key!r}: give a non-empty list of values, got {values!r}")
    keys = list(space)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    if samples is not None:
        if samples < 1:
            raise PopsegError(f"--samples must be >= 1, got {samples}")
        if samples < len(grid):
            grid = random.Random(seed).sample(grid, samples)
    return grid


def _network_key(overrides: dict[str, Any], postprocess_keys: frozenset[str]) -> str:
    return json.dumps({k: v for k, v in sorted(overrides.items()) if k not in postprocess_keys}, default=str)


def evaluate_frame(segmenters: list, frame: np.ndarray, truth: np.ndarray, stats: Any, tile, halo,
                   tile_memory_mb: float) -> list[list[tuple[int, int, int]]]:
    """Per setting, ``(tp, n_pred, n_true)`` at each IoU of :data:`IOUS` on one frame.

    ``segmenters``: ``(network_key, segmenter)`` per setting; those with one key share the
    network outputs of each window (one :class:`FrameMemo` per key).
    """
    from .pipeline import segment_frame

    memos: dict[str, FrameMemo] = {}
    out = []
    for key, seg in segmenters:
        if seg.postprocess_keys:
            seg = copy.copy(seg)
            seg.cache = memos.setdefault(key, FrameMemo())
        labels, _ = segment_frame(seg, frame, tile=tile, halo=halo, stats=stats, tile_memory_mb=tile_memory_mb)
        out.append([match_counts(labels, truth, iou) for iou in IOUS])
    return out


@dataclass
class TuneResult:
    """The table of a search: one row per setting."""

    population: str
    frames: list[int]
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def best(self) -> dict[str, Any]:
        return max(self.rows, key=lambda r: (r["mean_f1"], -r["index"]))


def _f1(tp: int, n_pred: int, n_true: int) -> float:
    return 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0


def truth_frames(truth: np.ndarray, n_frames: int, frames: "list[int] | str | None") -> tuple[np.ndarray, list[int]]:
    """The truth labels of the frames to score, and those frames.

    ``frames``: a list, a ``--frames`` text (``start:stop:step`` or ``0,5,9``) or None (the
    first ``len(truth)`` frames). ``truth`` holds either the whole movie's frames or exactly
    those frames, in order.
    """
    from .train import parse_frames

    if frames is None:
        frames = list(range(min(n_frames, truth.shape[0])))
    elif isinstance(frames, str):
        frames = parse_frames(frames, n_frames)
    if truth.shape[0] == n_frames:
        return truth[frames], list(frames)
    if truth.shape[0] != len(frames):
        raise PopsegError(f"the truth labels hold {truth.shape[0]} frame(s): give the movie's {n_frames}, or exactly "
                          f"the {len(frames)} of --frames, in order")
    return truth, list(frames)


def tune(config: RunConfig, population: str, truth: np.ndarray, frames: "list[int] | str | None",
         grid: list[dict[str, Any]], *, client) -> TuneResult:
    """Score every setting of ``grid`` on ``frames`` of the movie against ``truth`` (t, y, x per frame).

    Parameters
    ----------
    config : RunConfig
    population : str
        The population to tune (its other keys stay as configured).
    truth : array (t, y, x)
        The known labels: of the whole movie, or of ``frames`` in their order.
    frames : list of int, str or None
        The frames to score (see :func:`truth_frames`).
    grid : list of dict
        The settings: keys of the population and their values.
    client : distributed.Client

    Returns
    -------
    TuneResult
    """
    from .config import PopulationSpec
    from .pipeline import plan_run
    from .segmenters import build_segmenter

    if population not in config.populations:
        raise PopsegError(f"--population {population!r} is not in the config; its populations are "
                          f"{list(config.populations)}")
    t0 = time.perf_counter()
    plan = plan_run(config)
    job = next(j for j in plan.jobs if j.name == population)
    movie, spec = plan.movie, config.populations[population]
    truth, frames = truth_frames(truth, int(movie.sizes["t"]), frames)
    if truth.shape[1:] != tuple(plan.frame_shape):
        raise PopsegError(f"the truth labels are {truth.shape[1]}x{truth.shape[2]} but the movie's frames are "
                          f"{plan.frame_shape[0]}x{plan.frame_shape[1]}")
    names = [str(c) for c in movie.c.values]
    segs = []
    for overrides in grid:
        s = PopulationSpec(**{**spec.model_dump(), **overrides, "cache": "none"})
        seg = build_segmenter(population, s, names, base_dir=config.base_dir, pixel_size_um=movie.attrs["pixel_size_um"])
        segs.append((_network_key(overrides, seg.postprocess_keys), seg.on_device("cpu")))
    refs = job.segmenter.reference_frames()
    stats = job.segmenter.movie_stats({t: np.asarray(movie.data[t, job.channel_index]) for t in refs}) if refs else None
    futures = []
    for i, t in enumerate(frames):
        pixels = np.asarray(movie.data[t, job.channel_index].compute(scheduler="threads"))
        futures.append(client.submit(evaluate_frame, segs, pixels, np.asarray(truth[i]), stats, spec.tile, spec.halo,
                                     spec.tile_memory_mb, key=f"tune-{population}-t{t}-{time.time_ns()}", pure=False))
    per_frame = client.gather(futures)
    result = TuneResult(population, list(frames), seconds=0.0)
    for k, overrides in enumerate(grid):
        sums = np.sum([np.asarray(f[k]) for f in per_frame], axis=0)  # (iou, [tp, n_pred, n_true])
        f1 = [_f1(*map(int, row)) for row in sums]
        result.rows.append({"index": k, "settings": overrides, **{f"f1@{iou}": v for iou, v in zip(IOUS, f1)},
                            "mean_f1": float(np.mean(f1))})
    result.seconds = time.perf_counter() - t0
    return result


def write_outputs(result: TuneResult, config_data: dict[str, Any], out: Path) -> dict[str, Path]:
    """The table (CSV, JSON), a PNG of F1 per setting, and the config with the best setting."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    keys = list(result.rows[0]["settings"]) if result.rows else []
    lines = [",".join(["index", *keys, *(f"f1@{i}" for i in IOUS), "mean_f1"])]
    for r in result.rows:
        vals = [json.dumps(r["settings"][k]).replace(",", ";") for k in keys]
        lines.append(",".join([str(r["index"]), *vals, *(f"{r[f'f1@{i}']:.4f}" for i in IOUS), f"{r['mean_f1']:.4f}"]))
    paths = {"table": out / "tune.csv", "json": out / "tune.json", "plot": out / "tune.png", "config": out / "best.yaml"}
    paths["table"].write_text("\n".join(lines) + "\n")
    best = result.best()
    paths["json"].write_text(json.dumps({"population": result.population, "frames": result.frames,
                                         "best": best, "rows": result.rows, "seconds": result.seconds}, indent=1))
    _plot(result, paths["plot"])
    cfg = copy.deepcopy(config_data)
    cfg["populations"][result.population].update(copy.deepcopy(best["settings"]))
    paths["config"].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def _plot(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n + 2), 4))
    x = np.arange(n)
    for iou in IOUS:
        ax.plot(x, [r[f"f1@{iou}"] for r in result.rows], marker="o", label=f"IoU {iou}")
    best = result.best()["index"]
    ax.axvline(best, color="grey", linestyle=":", label=f"best: #{best}")
    ax.set_xticks(x)
    ax.set_xticklabels([str(i) for i in x], fontsize=7)
    ax.set_xlabel("setting (see tune.csv)")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"popseg tune: population {result.population}, {len(result.frames)} frame(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table_lines(result: TuneResult) -> list[str]:
    """The table as printed: one line per setting, best marked."""
    best = result.best()["index"]
    out = [f"{'':2}{'#':>3}  {'F1@0.5':>6}  {'F1@0.75':>7}  {'F1@0.9':>6}  {'mean':>5}  settings"]
    for r in result.rows:
        mark = "* " if r["index"] == best else "  "
        out.append(f"{mark}{r['index']:>3}  {r['f1@0.5']:6.3f}  {r['f1@0.75']:7.3f}  {r['f1@0.9']:6.3f}  "
                   f"{r['mean_f1']:5.3f}  {json.dumps(r['settings'])}")
    return out
