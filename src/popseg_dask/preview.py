"""A population's labels on one frame for edited settings, exactly as a run would write them.

:class:`Preview` opens the movie once; each call validates the edited population as the CLI
does (:func:`popseg_dask.config.parse_config`, so an error is the CLI's one line), builds its
segmenter, and segments the frame with :func:`popseg_dask.pipeline.segment_frame` — the run's tile
policy, halo, frame facts, merges and numbering. A run's frame holds the same objects with its ids
shifted by the frame's offset in the movie. The napari tuner is a view on this class.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, parse_config
from .errors import PopsegError

__all__ = ["Preview", "PreviewResult", "region_on", "segment_on"]

# Segmenters whose labels come only from these packages are previewed in this process; any other
# (a network on TensorFlow or PyTorch) in a child process: a GUI's process has an OpenGL context,
# and TensorFlow's LLVM crashes on import beside Mesa's (seen with napari under Xvfb), and a
# network's forward pass should not hold the viewer's interpreter.
IN_PROCESS_PACKAGES = frozenset({"numpy", "scipy", "scikit-image", "scikit_image"})


class PreviewResult(dict):
    """``labels`` (y, x), ``region`` (y0, y1, x0, x1: where they lie in the frame), ``objects``,
    ``seconds``, ``merged_regions`` and ``whole_frame`` of one preview."""


class Preview:
    """Preview a population of a config on single frames.

    Parameters
    ----------
    data : mapping
        The config as YAML gives it (``input``, ``populations``, ...).
    base_dir : path
        The config file's folder (relative paths resolve against it).
    """

    # a 4096² frame previews whole in a few seconds; beyond, in the viewer's process, the
    # visible region (a 16k² frame of two uint16 channels alone is 1 GiB)
    whole_frame_pixels: int = 1 << 24

    def __init__(self, data: dict[str, Any], base_dir: Path | str = "."):
        from .pipeline import plan_run

        self.data = copy.deepcopy(data)
        self.base_dir = Path(base_dir)
        self.config: RunConfig = parse_config(self.data, self.base_dir)
        self.plan = plan_run(self.config)
        self.movie = self.plan.movie
        self.channel_names = [str(c) for c in self.movie.c.values]
        self._frames: dict[int, np.ndarray] = {}
        self._stats: dict[str, Any] = {}
        self._pool = None
        self._filtered: dict[str, np.ndarray] = {}
        self._facts: dict[str, Any] = {}

    @property
    def populations(self) -> list[str]:
        return list(self.data["populations"])

    @property
    def n_frames(self) -> int:
        return int(self.movie.sizes["t"])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.movie.sizes["y"]), int(self.movie.sizes["x"])

    @property
    def too_big_to_preview_whole(self) -> bool:
        """Whether frames hold more than :attr:`whole_frame_pixels`: the tuner then previews the
        visible region (:meth:`labels` with ``region``)."""
        return self.frame_shape[0] * self.frame_shape[1] > self.whole_frame_pixels

    def settings(self, population: str) -> dict[str, Any]:
        """The population's keys as the config gives them (a copy to edit)."""
        self._known(population)
        return copy.deepcopy(self.data["populations"][population])

    def with_settings(self, population: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The whole config with ``population``'s keys replaced (what Save writes)."""
        self._known(population)
        out = copy.deepcopy(self.data)
        out["populations"][population] = copy.deepcopy(settings)
        return out

    def segmenter(self, population: str, settings: dict[str, Any]):
        """The population's segmenter for ``settings``, validated as a run validates it."""
        from .segmenters import build_segmenter

        cfg = parse_config(self.with_settings(population, settings), self.base_dir)
        spec = cfg.populations[population].model_copy(update={"cache": "none"})
        seg = build_segmenter(population, spec, self.channel_names, base_dir=self.base_dir,
                              pixel_size_um=self.movie.attrs["pixel_size_um"])
        return seg.on_device("cpu"), spec

    def frame(self, t: int) -> np.ndarray:
        """All channels of frame ``t`` (c, y, x), read once."""
        if not 0 <= t < self.n_frames:
            raise PopsegError(f"frame {t} is outside the movie (frames 0..{self.n_frames - 1})")
        if t not in self._frames:
            if len(self._frames) > 4:
                self._frames.pop(next(iter(self._frames)))
            self._frames[t] = np.asarray(self.movie.data[t].compute(scheduler="threads"))
        return self._frames[t]

    def labels(self, population: str, t: int, settings: dict[str, Any] | None = None,
               region: tuple[int, int, int, int] | None = None) -> PreviewResult:
        """Segment frame ``t`` with ``settings`` (default: the config's) as a run would.

        Parameters
        ----------
        population : str
        t : int
        settings : dict, optional
        region : (y0, y1, x0, x1), optional
            Segment only around this part of the frame (:func:`popseg_dask.pipeline.segment_region`:
            the frame's facts from every tile, then the tiles under the region): the objects a run
            writes there, cropped to it. For frames too big to preview whole; the facts are kept
            for the next region with the same settings, so panning costs only the new tiles.

        Returns
        -------
        PreviewResult
            ``labels`` with ids 1..n in the run's order (of the region, with ``region``);
            ``region`` the part of the frame they cover; ``seconds`` the time it took.
        """
        settings = self.settings(population) if settings is None else settings
        t0 = time.perf_counter()
        seg, spec = self.segmenter(population, settings)
        idx = [self.channel_names.index(c) for c in seg.channels]
        stats = self._movie_stats(seg, idx)
        in_process = set(seg.label_packages) <= IN_PROCESS_PACKAGES
        if region is None:
            args = (seg, self.frame(t)[idx], spec.tile, spec.halo, stats, spec.tile_memory_mb)
            labels, info = segment_on(*args) if in_process else self._child().submit(segment_on, *args).result()
            region = (0, labels.shape[0], 0, labels.shape[1])
        else:
            key = json.dumps([population, t, settings], default=str, sort_keys=True)
            args = (seg, self.movie.data[t][idx], region, spec.tile, spec.halo, stats, spec.tile_memory_mb,
                    self._facts.get(key))
            labels, info, facts, region = (region_on(*args) if in_process
                                           else self._child().submit(region_on, *args).result())
            self._facts = {key: facts}  # one frame's facts for one setting: what panning reuses
        return PreviewResult(labels=labels, objects=int(labels.max()), seconds=time.perf_counter() - t0,
                             merged_regions=int(info.regions), whole_frame=bool(info.whole_frame),
                             region=tuple(int(v) for v in region))

    def filtered(self, population: str, t: int, settings: dict[str, Any] | None = None,
                 region: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
        """The frame (or ``region`` of it) a threshold population thresholds, its filters applied,
        for a histogram; None for segmenters that do not threshold."""
        from .pipeline import clip_region
        from .segmenters.filters import apply_filters

        settings = self.settings(population) if settings is None else settings
        seg, _ = self.segmenter(population, settings)
        filters = getattr(getattr(seg, "params", None), "filters", None)
        if filters is None or not hasattr(seg.params, "thresholds"):
            return None
        idx = [self.channel_names.index(c) for c in seg.channels]
        key = json.dumps([t, idx, filters, region], default=str)  # a marker or threshold edit reuses it
        if key not in self._filtered:
            if region is None:
                pixels = self.frame(t)[idx][0]
            else:
                y0, y1, x0, x1 = clip_region(region, self.frame_shape)
                pixels = np.asarray(self.movie.data[t, idx[0], y0:y1, x0:x1].compute(scheduler="threads"))
            self._filtered = {key: apply_filters(pixels.astype(np.float32), filters)}
        return self._filtered[key]

    def _child(self):
        """One spawned process for network previews, kept: its loaded models stay loaded."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """End the child process of network previews, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _movie_stats(self, seg, idx: list[int]) -> Any:
        refs = seg.reference_frames()
        if not refs:
            return None  # what a run passes when the segmenter needs no reference frame
        key = json.dumps([seg.name, refs, idx])
        if key not in self._stats:
            self._stats[key] = seg.movie_stats({t: self.frame(t)[idx] for t in refs})
        return self._stats[key]

    def _known(self, population: str) -> None:
        if population not in self.data["populations"]:
            raise PopsegError(f"population {population!r} is not in the config; its populations are "
                              f"{self.populations}")


def segment_on(segmenter, pixels, tile, halo, stats, tile_memory_mb):
    """:func:`popseg_dask.pipeline.segment_frame` with positional arguments (what a child runs)."""
    from .pipeline import segment_frame

    return segment_frame(segmenter, pixels, tile=tile, halo=halo, stats=stats, tile_memory_mb=tile_memory_mb)


def region_on(segmenter, pixels, region, tile, halo, stats, tile_memory_mb, facts):
    """:func:`popseg_dask.pipeline.segment_region` with positional arguments (what a child runs);
    also returns the region clipped to the frame."""
    from .pipeline import clip_region, segment_region

    region = clip_region(region, pixels.shape[-2:])
    labels, info, facts = segment_region(segmenter, pixels, region, tile=tile, halo=halo, stats=stats,
                                         tile_memory_mb=tile_memory_mb, facts=facts)
    return labels, info, facts, region
