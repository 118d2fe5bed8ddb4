"""What deep-learning segmenters share: model folders, channels, normalisation, rescaling, model cache.

A model folder holds the network's own files and, optionally, Celldetective's ``config_input.json``
(the file ``popseg train`` also writes)::

    {"channels": ["nuclei"], "spatial_calibration": 0.65,
     "normalization_percentile": [true], "normalization_values": [[1.0, 99.8]],
     "normalization_clip": [false], "popseg": {"object_size_px": 30}}

Keys in the population override the file. Everything here runs without importing TensorFlow or
torch: the client plans a run from the files alone, and only workers load networks — once per
process, through :func:`cached_model`.

Tiling contract for models (see :mod:`popseg_dask.segmenters.base`): a network's output at a pixel
depends on the input within its receptive field, so an object whose pixels all lie ``halo`` pixels
(receptive field + one object, for the competition between neighbouring candidates) from every cut
comes out of a window as from the whole frame, up to floating-point summation order. Objects are
resolved one by one (``objects_independent``): touching cells do not chain into one cluster.
Windows start on the network's downsampling grid (``align``), and a rescaled movie is resampled on
one global grid, so overlapping windows feed the network identical pixels.

A window goes through :meth:`ModelSegmenter.network` (the raw outputs), whose floating outputs are
rounded to float16, then :meth:`ModelSegmenter.postprocess` (thresholds, NMS, flows -> masks).
The rounding is always done, cached or not (``cache: model_outputs`` stores exactly those float16
arrays), so labels made from the cache equal those of a fresh run bitwise, and turning the cache
on or off changes no label. float16 keeps 11 significant bits: probabilities to 5e-4, distances of
40 px to 0.02 px, far below what thresholds and polygons resolve.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import threading
from abc import abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator
from scipy import ndimage as ndi

from ..config import Strict
from ..errors import PopsegError
from ..normalize import ChannelScaling, apply_scaling, scaling_from_pixels
from .base import BuildContext, Segmenter, WindowContext, resolve_channel
from .stream import ahead, batches

__all__ = ["ModelParams", "ModelSegmenter", "cached_model", "forward_lock", "model_loads", "network_passes", "read_model_metadata",
           "rounded"]

log = logging.getLogger(__name__)

METADATA_FILE = "config_input.json"

# --------------------------------------------------------------------------- per-process cache

_MODELS: dict[tuple, Any] = {}
_LOADS: Counter = Counter()
_LOCK = threading.Lock()
# One forward pass of a network at a time per process: Cellpose 3 converts its network to MKL-DNN
# (TorchScript) on every CPU call, which fails when two threads do it at once ("Can't redefine
# method: __getstate__", seen with two worker threads each streaming); and concurrent passes only
# compete for the same cores or device. Reading and post-processing still overlap with the pass.
_FORWARD_LOCKS: dict[tuple, threading.Lock] = {}


def cached_model(key: tuple, load: Callable[[], Any]) -> Any:
    """The model for ``key``, loaded by ``load()`` the first time this process asks for it."""
    model = _MODELS.get(key)
    if model is None:
        with _LOCK:  # worker threads share the process: load once, not once per thread
            model = _MODELS.get(key)
            if model is None:
                model = load()
                _MODELS[key] = model
                _LOADS[key] += 1
    return model


def forward_lock(key: tuple) -> threading.Lock:
    """The lock that serialises forward passes of the model ``key`` in this process."""
    with _LOCK:
        return _FORWARD_LOCKS.setdefault(key, threading.Lock())


_PASSES: Counter = Counter()


def network_passes() -> dict[str, int]:
    """Windows this process sent through each population's network (cache hits are not passes)."""
    return dict(_PASSES)


def rounded(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Floating outputs as float16 (see the module's note), others unchanged."""
    return {k: v.astype(np.float16) if np.issubdtype(v.dtype, np.floating) else v for k, v in outputs.items()}


# Default input of one forward pass: two 2048² frames or eight 1024² ones; a StarDist or Cellpose
# U-Net's activations at that size fit the 16 GB of common GPUs (batch_windows sets it explicitly).
BATCH_PIXELS = 1 << 23
MAX_BATCH = 8
# batches per segment task: the stages overlap only across batches of one task
STREAM_BATCHES = 4


@dataclass
class Prepared:
    """A window ready for the network: its image on the model's grid ``(y, x, c)`` (None when the
    grid holds no pixel of it), the map of labels back to the window, its shape and cache key."""

    image: np.ndarray | None
    back: Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, int]
    frame: int | None
    box: tuple[int, int, int, int]


def streaming() -> bool:
    """False when ``POPSEG_STREAM=0``: windows then go through the network one at a time, with no
    read-ahead thread (a switch for the benchmarks' A/B and for frameworks that misbehave in threads)."""
    return os.environ.get("POPSEG_STREAM", "1") != "0"


def model_loads() -> dict[str, int]:
    """How many times this process loaded each model (``"kind:path:device"`` -> count)."""
    return {":".join(map(str, k)): v for k, v in _LOADS.items()}


_DIGESTS: dict[tuple, str] = {}


def files_digest(paths: list[Path]) -> str:
    """SHA-256 of files' names and bytes (kept per process while their sizes and times stay)."""
    import hashlib

    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        for p in paths:
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def read_model_metadata(folder: Path) -> dict[str, Any]:
    """The folder's ``config_input.json`` (empty if absent); a broken file is a clear error."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PopsegError(f"cannot read {path}: {err}; fix or delete the file") from None
    if not isinstance(data, dict):
        raise PopsegError(f"{path} must hold a JSON object")
    return data


# --------------------------------------------------------------------------- parameters

class ModelParams(Strict):
    """Population keys common to model-based segmenters."""

    model: Path = Field(description="model folder (relative paths: from the config file's folder)")
    channel: str | int | None = Field(None, description="the one channel the model reads")
    channels: list[str | int] | None = Field(None, description="channels the model reads, in its input order")
    normalize: Literal["percentile", "absolute", "none"] | None = Field(
        None, description="per-channel scaling (default: config_input.json, else percentile)")
    percentiles: tuple[float, float] | list[tuple[float, float]] | None = Field(
        None, description="low/high percentiles, one pair or one per channel (default 1, 99.8)")
    values: tuple[float, float] | list[tuple[float, float]] | None = Field(
        None, description="low/high intensities for normalize: absolute")
    clip: bool | None = Field(None, description="clip scaled intensities to [0, 1]")
    normalize_frames: list[int] | None = Field(
        None, description="frames whose pixels set one scaling for the whole movie (default: each frame its own)")
    model_pixel_size_um: float | None = Field(
        None, gt=0, description="pixel size the model was trained at (default: config_input.json spatial_calibration)")
    object_size: int | None = Field(None, gt=0, description="largest object diameter in movie pixels")
    batch_windows: int | None = Field(
        None, ge=1, le=64, description="windows (frames or tiles) per forward pass (default: on a GPU up to 8, "
        "as many as fit 2^23 pixels; on the CPU 1)")

    @model_validator(mode="after")
    def _one_channel_key(self):
        if self.channel is not None and self.channels is not None:
            raise ValueError("give either 'channel' or 'channels', not both")
        for pair in _pairs(self.percentiles) + _pairs(self.values):
            if pair[0] >= pair[1]:
                raise ValueError(f"low must be below high, got {list(pair)}")
        for lo, hi in _pairs(self.percentiles):
            if lo < 0 or hi > 100:
                raise ValueError(f"percentiles must lie in [0, 100], got {[lo, hi]}")
        return self


def _pairs(v) -> list[tuple[float, float]]:
    if v is None:
        return []
    if isinstance(v, tuple):
        return [v]
    return list(v)


# --------------------------------------------------------------------------- the base class

class ModelSegmenter(Segmenter):
    """Base of network-based segmenters; subclasses load a model and predict one window.

    Subclasses set ``kind`` and implement :meth:`inspect_model` (read the folder's files: input
    channels, receptive field, grid), :meth:`load_model` and :meth:`predict`.
    """

    Params: ClassVar[type[Strict]] = ModelParams
    kind: ClassVar[str] = "model"
    devices = ("cpu", "gpu")
    objects_independent = True
    needs_frame_stats = True
    # the folder's path: its files' bytes are recorded instead (a moved config keeps its labels)
    label_neutral: ClassVar[frozenset[str]] = frozenset({"model", "batch_windows"})

    def __init__(self, params: ModelParams, context: BuildContext | Sequence[str]):
        ctx = BuildContext.of(context)
        channel_names, base_dir, population, pixel_size_um = (ctx.channel_names, ctx.base_dir, ctx.population,
                                                              ctx.pixel_size_um)
        self.p = self.params = params
        self.population = population
        folder = Path(params.model)
        self.model_path = (folder if folder.is_absolute() else Path(base_dir) / folder).resolve()
        if not self.model_path.exists():
            raise PopsegError(f"population '{population}': model {self.model_path} not found; "
                              f"point 'model:' at a model folder (e.g. one written by 'popseg train {self.name}')")
        meta_dir = self.model_path if self.model_path.is_dir() else self.model_path.parent
        self.meta = read_model_metadata(meta_dir)
        self.use_gpu = False
        self.resources = None
        info = self.inspect_model()  # n_channels, receptive_field, align
        self.n_channels = int(info["n_channels"])
        self.align = int(info.get("align", 1))
        self.channels = self._pick_channels(channel_names)
        self.scalings = self._pick_scalings()
        model_px = params.model_pixel_size_um or self.meta.get("spatial_calibration")
        self.scale = 1.0
        if model_px and pixel_size_um:
            self.scale = float(pixel_size_um) / float(model_px)
        elif model_px and not pixel_size_um:
            log.warning("population %s: the model was trained at %s um/px but the movie's pixel size is "
                        "unknown; set pixel_size_um to rescale", population, model_px)
        if params.object_size:
            self.object_size = int(params.object_size)
        else:
            size = (self.meta.get("popseg") or {}).get("object_size_px")
            self.object_size = int(math.ceil(size / self.scale)) if size else 64
        rf = float(info["receptive_field"])  # in model pixels
        self.halo = int(math.ceil(rf / self.scale)) + self.object_size
        self.needs_frame_stats = not self.p.normalize_frames and any(s.mode == "percentile" for s in self.scalings)

    # -- what subclasses provide
    @abstractmethod
    def inspect_model(self) -> dict[str, Any]:
        """From the folder's files: ``n_channels``, ``receptive_field`` (model px), ``align``."""

    @abstractmethod
    def load_model(self) -> Any:
        """Build the network (called once per worker process)."""

    @abstractmethod
    def network(self, model: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        """The network's raw outputs for a scaled image ``(y, x, c)`` float32 at the model's resolution."""

    @abstractmethod
    def postprocess(self, model: Any, outputs: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Labels of ``shape`` (the network input's y, x) from :meth:`network`'s outputs, rounded."""

    def predict(self, model: Any, image: np.ndarray) -> np.ndarray:
        """Labels ``(y, x)`` of a scaled image: network, rounding, post-processing."""
        with forward_lock(self._model_key()):
            outputs = rounded(self.network(model, image))
        return self.postprocess(model, outputs, image.shape[:2])

    def model_scale(self, model: Any) -> float:
        """Zoom from movie pixels to the network's input grid (default: pixel sizes' ratio)."""
        return self.scale

    def with_context(self, halo: int) -> "ModelSegmenter":
        """A copy that takes a user's ``halo`` as the context the network needs (plus one object).

        The receptive field is an upper bound; a smaller halo trades agreement with the untiled
        result near cuts for smaller windows. Threshold segmenters keep their exact margin instead.
        """
        new = copy.copy(self)
        new.halo = max(1, int(halo) - self.object_size) if halo > self.object_size else max(1, int(halo) // 2)
        return new

    # -- device
    def on_device(self, device: str) -> "ModelSegmenter":
        """A copy set to run on ``cpu`` or ``gpu`` (GPU tasks ask for a ``GPU`` resource)."""
        new = copy.copy(self)
        new.use_gpu = device == "gpu"
        new.resources = {"GPU": 1} if new.use_gpu else None
        return new

    @property
    def batch_windows(self) -> int:
        """Windows per forward pass, at most: as configured; else 8 on a GPU and 1 on the CPU,
        where a batch of eight 512² windows took 1.6-2x the time of one at a time (larger
        activations, worse cache use; benchmarks/RESULTS.md) while the overlap of reading,
        network and post-processing still pays."""
        if self.p.batch_windows is not None:
            return int(self.p.batch_windows)
        return MAX_BATCH if self.use_gpu else 1

    @property
    def window_stream(self) -> int:
        """Frames per :meth:`segment_windows` call: :data:`STREAM_BATCHES` batches (1 with
        ``POPSEG_STREAM=0``)."""
        return STREAM_BATCHES * self.batch_windows if streaming() else 1

    def model(self) -> Any:
        """The network, loaded once per worker process."""
        return cached_model(self._model_key(), self.load_model)

    def _model_key(self) -> tuple:
        return self.kind, str(self.model_path), "gpu" if self.use_gpu else "cpu"

    # -- channels and scaling
    def _pick_channels(self, channel_names: Sequence[str]) -> list[str]:
        wanted = self.p.channels if self.p.channels is not None else (
            [self.p.channel] if self.p.channel is not None else self.meta.get("channels"))
        if not wanted:
            raise PopsegError(f"population '{self.population}': name the channel(s) the model reads with "
                              f"'channel:' or 'channels:' (the movie has {list(channel_names)})")
        names = [resolve_channel(c, channel_names, self.population) for c in wanted]
        if len(names) != self.n_channels:
            raise PopsegError(f"population '{self.population}': the model at {self.model_path} reads "
                              f"{self.n_channels} channel(s) but {len(names)} are given ({names}); "
                              f"list {self.n_channels} in 'channels:'")
        return names

    def _pick_scalings(self) -> list[ChannelScaling]:
        n, p, m = self.n_channels, self.p, self.meta
        per_channel_pct = m.get("normalization_percentile")
        meta_vals = m.get("normalization_values")
        meta_clip = m.get("normalization_clip")
        out = []
        for c in range(n):
            if p.normalize is not None:
                mode = p.normalize
            elif isinstance(per_channel_pct, list) and c < len(per_channel_pct):
                mode = "percentile" if per_channel_pct[c] else "absolute"
            else:
                mode = "percentile"
            if mode == "absolute":
                pairs = _pairs(p.values) or (meta_vals if p.normalize is None else None) or []
                if not pairs:
                    raise PopsegError(f"population '{self.population}': normalize: absolute needs 'values: "
                                      "[low, high]' (one pair, or one per channel)")
            else:
                pairs = _pairs(p.percentiles) or (meta_vals if p.normalize is None and mode == "percentile"
                                                  and per_channel_pct else None) or [(1.0, 99.8)]
            lo, hi = pairs[c] if len(pairs) > 1 else pairs[0]
            clip = p.clip if p.clip is not None else bool(meta_clip[c]) if isinstance(meta_clip, list) \
                and c < len(meta_clip) else False
            out.append(ChannelScaling(mode, float(lo), float(hi), clip))
        return out

    def reference_frames(self) -> list[int]:
        return list(self.p.normalize_frames or [])

    def movie_stats(self, frames: dict[int, np.ndarray]) -> Any:
        if not frames:
            return None
        stack = np.stack([np.asarray(frames[t]) for t in sorted(frames)], axis=1)  # (c, t, y, x)
        return scaling_from_pixels(stack, self.scalings)

    def frame_stats(self, frame: np.ndarray, stats: Any) -> Any:
        if stats is not None:
            return stats
        return scaling_from_pixels(np.asarray(frame), self.scalings)

    # -- segmentation
    def __call__(self, block: np.ndarray, stats: Any = None) -> np.ndarray:
        labels, _, _ = self.segment_window(block, stats, WindowContext.whole(block.shape[-2:]))
        return labels

    def segment_window(self, block: np.ndarray, stats: Any, ctx: WindowContext):
        model = self.model()
        prep = self._prepare(model, block, stats, ctx)
        return self._finish(model, prep, self._outputs(model, [prep])[0])

    def segment_windows(self, windows: Iterable[tuple[np.ndarray, Any, WindowContext]]
                        ) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Windows in batches: the next batch is read and scaled (one thread) and the current one
        goes through the network (another) while the previous one is post-processed (here)."""
        if not streaming():
            yield from super().segment_windows(windows)
            return
        model = self.model()
        prepared = ahead((self._prepare(model, *w) for w in windows), depth=self.batch_windows)
        groups = batches(prepared, self._batch_size, lambda p: None if p.image is None else p.image.shape)
        computed = ahead(((g, self._outputs(model, g)) for g in groups), depth=1)
        # the network thread pulls from `prepared`: it is stopped first, then the reading thread
        with contextlib.closing(prepared), contextlib.closing(computed):
            for group, outputs in computed:
                for prep, out in zip(group, outputs):
                    yield self._finish(model, prep, out)

    def _batch_size(self, prep: "Prepared") -> int:
        """Windows per forward pass: as configured, else up to :data:`BATCH_PIXELS` input pixels."""
        if self.p.batch_windows is not None or prep.image is None:
            return self.batch_windows
        return max(1, min(self.batch_windows, BATCH_PIXELS // (prep.image.shape[0] * prep.image.shape[1])))

    def _prepare(self, model: Any, block: np.ndarray, stats: Any, ctx: WindowContext) -> "Prepared":
        """A window scaled and resampled onto the model's grid, ``(y, x, c)`` float32."""
        if stats is None:
            stats = scaling_from_pixels(np.asarray(block), self.scalings)
        x = apply_scaling(np.asarray(block), stats, self.scalings)
        image, back = _to_model_grid(x, ctx.origin, self.model_scale(model), self.align)
        shape = tuple(int(v) for v in block.shape[-2:])
        empty = image.shape[1] == 0 or image.shape[2] == 0
        return Prepared(None if empty else np.moveaxis(image, 0, -1), back, shape, ctx.frame, (*ctx.origin, *shape))

    def _finish(self, model: Any, prep: "Prepared", outputs: dict[str, np.ndarray] | None):
        if prep.image is None:
            labels = np.zeros(prep.shape, np.int32)
        else:
            labels = prep.back(np.asarray(self.postprocess(model, outputs, prep.image.shape[:2])))
        return labels, labels > 0, False

    def _outputs(self, model: Any, preps: list["Prepared"]) -> list[dict[str, np.ndarray] | None]:
        """The windows' rounded network outputs: from the cache when it has them, the others in
        one :meth:`network_batch` call (None for an empty window)."""
        use_cache = self.cache is not None
        outputs: list[dict[str, np.ndarray] | None] = [None] * len(preps)
        todo = []
        for i, p in enumerate(preps):
            if p.image is None:
                continue
            if use_cache and p.frame is not None:
                outputs[i] = self.cache.load(p.frame, p.box)
            if outputs[i] is None:
                todo.append(i)
        fresh = []
        if todo:
            with forward_lock(self._model_key()):
                fresh = self.network_batch(model, [preps[i].image for i in todo])
        for i, out in zip(todo, fresh):
            outputs[i] = rounded(out)
            _PASSES[self.population] += 1
            if use_cache and preps[i].frame is not None:
                self.cache.save(preps[i].frame, preps[i].box, outputs[i])
        return outputs

    def network_batch(self, model: Any, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """:meth:`network` of several images of one shape, in one forward pass where the framework
        allows it. Default: one pass per image."""
        return [self.network(model, image) for image in images]

    def model_files(self) -> list[Path]:
        """The files whose bytes decide the network's output: a folder's own files (not its
        subfolders: training logs), or the weights file and its folder's metadata file."""
        if self.model_path.is_file():
            meta = self.model_path.parent / METADATA_FILE
            return [self.model_path] + ([meta] if meta.is_file() else [])
        return sorted(p for p in self.model_path.iterdir() if p.is_file())

    def label_inputs(self) -> dict[str, Any]:
        """The default's, plus a digest of the model's files and the zoom to its pixel size."""
        return {**super().label_inputs(), "model": files_digest(self.model_files()), "scale": self.scale}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(model=str(self.model_path), device="gpu" if self.use_gpu else "cpu", scale=self.scale,
                 object_size=self.object_size,
                 normalize=[dict(mode=s.mode, low=s.low, high=s.high, clip=s.clip) for s in self.scalings])
        return d


def _to_model_grid(x: np.ndarray, origin: tuple[int, int], scale: float, align: int):
    """Resample a window ``(c, h, w)`` onto the model's global pixel grid.

    The model grid has pixel ``j`` at frame coordinate ``j / scale``; the window's part of it starts
    at the first grid pixel inside the window that is a multiple of ``align`` (so the network's
    pooling sees the same blocks in every window). Returns the resampled image and a function
    mapping labels on it back to the window (nearest grid pixel; 0 where the grid part is cropped).
    """
    c, h, w = x.shape
    oy, ox = origin

    def start(o):
        z = math.ceil(o * scale - 1e-9)
        return -(-z // align) * align if o > 0 else 0

    zy0, zx0 = start(oy), start(ox)
    # up to the model pixel nearest to the window's last pixel (the window's own edge, or the frame's)
    zy1 = math.floor((oy + h - 1) * scale + 0.5) + 1
    zx1 = math.floor((ox + w - 1) * scale + 0.5) + 1
    if scale == 1.0:
        image = x[:, zy0 - oy:, zx0 - ox:]
    else:
        gy = np.arange(zy0, zy1) / scale - oy
        gx = np.arange(zx0, zx1) / scale - ox
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        image = np.stack([ndi.map_coordinates(ch, [yy, xx], order=3, prefilter=False, mode="nearest")
                          for ch in x]).astype(np.float32)

    def back(labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels)
        if scale == 1.0:
            out = np.zeros((h, w), labels.dtype)
            out[zy0 - oy:, zx0 - ox:] = labels
            return out
        # frame pixel i sits at model coordinate i * scale: take the nearest model pixel
        ry = np.floor(np.arange(oy, oy + h) * scale + 0.5).astype(np.int64) - zy0
        rx = np.floor(np.arange(ox, ox + w) * scale + 0.5).astype(np.int64) - zx0
        vy = (ry >= 0) & (ry < labels.shape[0])
        vx = (rx >= 0) & (rx < labels.shape[1])
        out = labels[np.clip(ry, 0, labels.shape[0] - 1)][:, np.clip(rx, 0, labels.shape[1] - 1)]
        out = out * (vy[:, None] & vx[None, :])
        return out

    return image, back


def gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it instead of all of it (models share a GPU).

    The variable works when TensorFlow is not imported yet; otherwise each visible GPU is set
    directly (which TensorFlow refuses once the GPU is in use: then it stays as it was).
    """
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    import sys

    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                log.debug("TensorFlow already uses %s; its memory setting stays", gpu)


def torch_memory_bound(device) -> None:
    """Cap this process's share of its GPU at ``POPSEG_GPU_MEMORY_FRACTION`` (default: no cap)."""
    frac = os.environ.get("POPSEG_GPU_MEMORY_FRACTION")
    if not frac or getattr(device, "type", "cpu") != "cuda":
        return
    import torch

    try:
        value = float(frac)
    except ValueError:
        raise PopsegError(f"POPSEG_GPU_MEMORY_FRACTION={frac!r} is not a number in (0, 1]") from None
    if not 0 < value <= 1:
        raise PopsegError(f"POPSEG_GPU_MEMORY_FRACTION={frac!r} is not a number in (0, 1]")
    torch.cuda.set_per_process_memory_fraction(value, device)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up chatter off the terminal (before it is imported).

    oneDNN's custom CPU kernels are also turned off unless the user chose otherwise: they pick
    summation orders by input shape, so overlapping windows of different sizes would disagree in
    the last bits more often.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
