"""StarDist 2D segmenter (``segmenter: stardist``).

The model folder is StarDist's own (``config.json``, ``thresholds.json``, ``weights_best.h5`` or
``weights_last.h5``), as written by ``StarDist2D.train``, by ``popseg train stardist`` or by
Celldetective, optionally with Celldetective's ``config_input.json`` (channels, pixel size,
normalisation). The halo comes from the network's receptive field, computed from ``config.json``
without loading TensorFlow.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ..errors import PopsegError
from .model import ModelParams, ModelSegmenter, gpu_memory_growth, quiet_tensorflow

__all__ = ["StarDistSegmenter", "stardist_receptive_field"]


class StarDistParams(ModelParams):
    prob_thresh: float | None = Field(None, gt=0, lt=1, description="object probability threshold "
                                      "(default: the model's thresholds.json)")
    nms_thresh: float | None = Field(None, ge=0, lt=1, description="overlap threshold of non-maximum suppression")
    n_tiles: tuple[int, int] | None = Field(None, description="split each window into this many network "
                                            "tiles (bounds GPU memory for large tiles; one window per pass)")


def stardist_receptive_field(cfg: dict[str, Any]) -> tuple[int, int]:
    """Receptive-field radius and downsampling factor of a StarDist 2D network, from its config.

    Follows the layers StarDist builds: for a grid > 1, a convolution then a pooling per halving;
    a U-Net of ``unet_n_depth`` levels with ``unet_n_conv_per_depth`` convolutions each, down and up;
    an optional convolution after it. Each k-wide convolution at scale s widens the field by
    (k - 1) / 2 * s pixels and each 2x pooling at scale s by s. An upper bound: padding effects
    vanish beyond it.
    """
    k = max(cfg.get("unet_kernel_size", (3, 3)))
    r = (int(k) - 1) // 2
    grid = max(cfg.get("grid", (1, 1)))
    pool = max(cfg.get("unet_pool", (2, 2)))
    depth = int(cfg.get("unet_n_depth", 2))
    convs = int(cfg.get("unet_n_conv_per_depth", 2))
    radius, s = 0, 1
    while s < grid:
        radius += r * s + s  # conv, then pool
        s *= 2
    for level in range(depth):
        scale = s * pool**level
        radius += 2 * convs * r * scale + (pool - 1) * scale  # down and up convolutions, pooling
    radius += convs * r * s * pool**depth  # bottom
    if cfg.get("net_conv_after_unet", 0):
        radius += r * s
    return int(radius), int(grid * pool**depth)


class StarDistSegmenter(ModelSegmenter):
    """Star-convex polygons from a StarDist 2D model."""

    name = "stardist"
    kind = "stardist"
    Params = StarDistParams
    label_packages: ClassVar[tuple[str, ...]] = ("stardist", "csbdeep", "tensorflow")
    postprocess_keys: ClassVar[frozenset[str]] = frozenset({"prob_thresh", "nms_thresh"})
    labels_version: ClassVar[int] = 2  # 2: dense prediction, float16 outputs (cacheable)

    def _config(self) -> dict[str, Any]:
        path = self.model_path / "config.json"
        if not path.is_file():
            raise PopsegError(f"population '{self.population}': {self.model_path} is not a StarDist model folder "
                              "(no config.json); point 'model:' at the folder StarDist2D.train wrote")
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise PopsegError(f"cannot read {path}: {err}") from None

    def inspect_model(self) -> dict[str, Any]:
        cfg = self._config()
        if int(cfg.get("n_dim", 2)) != 2:
            raise PopsegError(f"population '{self.population}': {self.model_path} is a {cfg.get('n_dim')}D "
                              "StarDist model; popseg segments 2D frames")
        if not any((self.model_path / w).is_file() for w in ("weights_best.h5", "weights_last.h5")):
            raise PopsegError(f"population '{self.population}': {self.model_path} has no weights_best.h5 "
                              "or weights_last.h5; train the model first or copy its weights there")
        rf, div = stardist_receptive_field(cfg)
        return {"n_channels": int(cfg.get("n_channel_in", 1)), "receptive_field": rf, "align": div}

    def load_model(self) -> Any:
        if self.use_gpu:
            gpu_memory_growth()
        quiet_tensorflow()
        try:
            from stardist.models import StarDist2D
        except ImportError:
            raise PopsegError("segmenter stardist needs StarDist: pip install 'popseg-dask[stardist]'") from None
        with contextlib.redirect_stdout(io.StringIO()):  # StarDist prints what it loads
            # loads weights_best.h5 (else the newest weights file) and thresholds.json
            model = StarDist2D(None, name=self.model_path.name, basedir=str(self.model_path.parent))
        return model

    def network(self, model: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        """Dense object probabilities and ray distances (on the model's grid)."""
        n_tiles = (*self.p.n_tiles, 1) if self.p.n_tiles else None
        with _device("GPU" if self.use_gpu else "CPU"), contextlib.redirect_stdout(io.StringIO()):
            prob, dist = model.predict(image, axes="YXC", normalizer=None, n_tiles=n_tiles, show_tile_progress=False)
        return {"prob": np.asarray(prob), "dist": np.asarray(dist)}

    def network_batch(self, model: Any, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Several windows of one shape in one forward pass, padded and cropped as StarDist's own
        ``predict`` does one (so a batch of one is exactly that call). With ``n_tiles`` (StarDist's
        own tiling, per image) or a multi-class model, one image at a time."""
        if self.p.n_tiles or len(images) == 1 or model.config.n_classes is not None:
            return [self.network(model, image) for image in images]
        from stardist.models.base import StarDistPadAndCropResizer

        cfg = model.config
        axes = cfg.axes  # "YXC" for 2D models
        grid = dict(zip(axes.replace("C", ""), cfg.grid))
        div_by = dict(zip(axes.replace("C", ""), (p ** cfg.unet_n_depth * g for p, g in zip(cfg.unet_pool, cfg.grid))))
        resizer = StarDistPadAndCropResizer(grid=grid)
        x = np.stack([resizer.before(image, axes, tuple(div_by.get(a, 1) for a in axes)) for image in images])
        with _device("GPU" if self.use_gpu else "CPU"):
            prob, dist = model.keras_model.predict(x, batch_size=len(images), verbose=0)[:2]
        return [{"prob": resizer.after(p, axes)[..., 0], "dist": np.maximum(1e-3, resizer.after(d, axes))}
                for p, d in zip(prob, dist)]

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """StarDist's own dense path: non-maximum suppression, then polygons to labels."""
        from stardist.geometry import polygons_to_label
        from stardist.nms import non_maximum_suppression

        prob_thresh = self.p.prob_thresh if self.p.prob_thresh is not None else model.thresholds.prob
        nms_thresh = self.p.nms_thresh if self.p.nms_thresh is not None else model.thresholds.nms
        points, probi, disti = non_maximum_suppression(
            outputs["dist"].astype(np.float32), outputs["prob"].astype(np.float32), grid=model.config.grid,
            prob_thresh=prob_thresh, nms_thresh=nms_thresh, verbose=False)
        return polygons_to_label(disti, points, prob=probi, shape=tuple(shape))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(prob_thresh=self.p.prob_thresh, nms_thresh=self.p.nms_thresh)
        return d


@contextlib.contextmanager
def _device(kind: str):
    import tensorflow as tf

    if kind == "CPU" or not tf.config.list_logical_devices("GPU"):
        with tf.device("/CPU:0"):
            yield
    else:
        yield
