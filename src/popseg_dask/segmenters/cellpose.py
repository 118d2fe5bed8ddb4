"""Cellpose segmenter (``segmenter: cellpose``), for cellpose 3 and cellpose 4 models.

``model`` is a weights file or a folder holding one (Celldetective's layout: ``NAME/NAME`` plus
``config_input.json``; ``popseg train cellpose`` writes the same). Which API to call is decided on
the worker from the installed cellpose: 3.x takes ``channels``, 4.x (cpsam-style) reads up to
three channels as given. Intensities are scaled by popseg (whole-frame statistics) and cellpose's
own per-image normalisation is turned off, so every tile sees the same scaling.

Cellpose 3 models are run directly, not through ``CellposeModel.eval``: ``eval`` cuts a window
into 224-px tiles placed by the window's size and blends them, and zooms by a ratio of window
sizes, so two overlapping windows would see different network inputs. Here the window is zoomed
by ``diam_mean / diameter`` on one global grid (see :mod:`.model`), starts on the network's
16-px pooling grid, and goes through the network in one pass; flows become masks with cellpose's
own ``compute_masks``. What still differs between windows is cellpose's *style* vector, an
average over the whole input: tiled and untiled results agree to about F1 0.99 at IoU 0.9, not
bitwise. Cellpose 4 models go through ``eval`` (its API, three channels, ``batch_size`` tiles
per forward pass).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
from pydantic import Field

from ..compat import cellpose_forward
from ..errors import PopsegError
from .base import resolve_channel
from .model import ModelParams, ModelSegmenter, torch_memory_bound

__all__ = ["CellposeSegmenter", "cellpose_api"]

log = logging.getLogger(__name__)

# Receptive-field radius of cellpose 3's U-Net, in network pixels: four 3x3 convolutions per level
# down and up at scales 1, 2, 4, 8 (4 * 15 * 2) plus the poolings (7). The style vector is global
# and not covered by any radius (see the module docstring).
_REACH = 128


class CellposeParams(ModelParams):
    diameter: float | None = Field(None, gt=0, description="typical object diameter in movie pixels "
                                   "(default: config_input.json, else the model's own)")
    cellprob_threshold: float | None = Field(None, ge=-6, le=6, description="cell probability threshold")
    flow_threshold: float | None = Field(None, ge=0, description="flow error threshold (0: off)")
    min_size: int = Field(15, ge=0, description="smallest object kept, in pixels")
    batch_size: int = Field(8, ge=1, description="224-px network tiles per forward pass")


def cellpose_api(model: Any = None) -> int:
    """3 or 4: the API to call, from the installed cellpose (or a model object's own ``eval``)."""
    if model is not None and hasattr(model, "eval"):
        if "channels" not in inspect.signature(model.eval).parameters:
            return 4
    try:
        major = int(importlib.metadata.version("cellpose").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        raise PopsegError("segmenter cellpose needs cellpose: pip install 'popseg-dask[cellpose]'") from None
    return 4 if major >= 4 else 3


class CellposeSegmenter(ModelSegmenter):
    """Flow-based instance segmentation with a Cellpose model."""

    name = "cellpose"
    kind = "cellpose"
    Params = CellposeParams
    label_neutral: ClassVar[frozenset[str]] = ModelSegmenter.label_neutral | {"batch_size"}  # tiles per pass
    label_packages: ClassVar[tuple[str, ...]] = ("cellpose", "torch")
    postprocess_keys: ClassVar[frozenset[str]] = frozenset({"cellprob_threshold", "flow_threshold", "min_size"})
    labels_version: ClassVar[int] = 2  # 2: float16 network outputs (cacheable)

    def weights(self) -> Path:
        """The weights file: the path itself, or ``folder/folder.name``, or the folder's only file."""
        p = self.model_path
        if p.is_file():
            return p
        named = p / p.name
        if named.is_file():
            return named
        files = [f for f in p.iterdir() if f.is_file() and f.suffix not in (".json", ".txt", ".md", ".csv")]
        if len(files) == 1:
            return files[0]
        raise PopsegError(f"population '{self.population}': cannot tell the weights file in {p} "
                          f"(found {[f.name for f in files]}); name it {p.name} or point 'model:' at the file")

    def inspect_model(self) -> dict[str, Any]:
        self.weights()
        wanted = self.p.channels or ([self.p.channel] if self.p.channel is not None else self.meta.get("channels"))
        n = len(wanted) if wanted else 1
        if n > 3:
            raise PopsegError(f"population '{self.population}': cellpose reads at most 3 channels, got {n}")
        self.diameter = float(self.p.diameter or self.meta.get("diameter") or 30.0)
        diam_mean = float((self.meta.get("popseg") or {}).get("diam_mean") or 30.0)
        # _REACH is in the network's pixels; windows are zoomed by diam_mean / diameter first
        return {"n_channels": n, "receptive_field": _REACH * self.diameter / diam_mean, "align": 16}

    def model_scale(self, model: Any) -> float:
        if cellpose_api(model) == 4:
            return self.scale  # eval zooms by the diameter itself
        return self.scale * float(getattr(model, "diam_mean", 30.0)) / self.diameter

    def _pick_channels(self, channel_names: Sequence[str]) -> list[str]:
        wanted = self.p.channels or ([self.p.channel] if self.p.channel is not None else self.meta.get("channels"))
        if not wanted:
            raise PopsegError(f"population '{self.population}': name the channel(s) the model reads with "
                              f"'channel:' or 'channels:' (the movie has {list(channel_names)})")
        return [resolve_channel(c, channel_names, self.population) for c in wanted]

    def load_model(self) -> Any:
        try:
            import torch
            from cellpose import models
        except ImportError:
            raise PopsegError("segmenter cellpose needs cellpose: pip install 'popseg-dask[cellpose]'") from None
        device = torch.device("cuda") if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")
        if self.use_gpu and device.type == "cpu":
            log.warning("population %s: device gpu but torch sees no CUDA device on this worker; running on "
                        "the CPU", self.population)
        torch_memory_bound(device)
        kwargs = dict(gpu=device.type == "cuda", device=device, pretrained_model=str(self.weights()))
        if cellpose_api() == 3:
            kwargs["nchan"] = int((self.meta.get("popseg") or {}).get("nchan") or 2)
        return models.CellposeModel(**kwargs)

    def _thresholds(self) -> tuple[float, float]:
        cp = self.p.cellprob_threshold if self.p.cellprob_threshold is not None else \
            self.meta.get("cellprob_threshold", 0.0)
        ft = self.p.flow_threshold if self.p.flow_threshold is not None else self.meta.get("flow_threshold", 0.4)
        return float(cp), float(ft)

    def network(self, model: Any, image: np.ndarray) -> dict[str, np.ndarray]:
        """Cellpose 3: flows and cell probability. Cellpose 4 (``eval``): its masks."""
        if cellpose_api(model) == 4:
            if self.cache is not None:
                raise PopsegError(f"population '{self.population}': cache: model_outputs needs Cellpose 3 "
                                  "(Cellpose 4 runs through eval, which keeps its flows); remove 'cache:'")
            cellprob_threshold, flow_threshold = self._thresholds()
            masks = model.eval(image, channel_axis=-1, normalize=False, diameter=self.diameter * self.scale,
                               batch_size=self.p.batch_size, min_size=self.p.min_size,
                               cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold)[0]
            return {"masks": np.asarray(masks)}
        return self.network_batch(model, [image])[0]

    def network_batch(self, model: Any, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Cellpose 3: several windows of one shape in one forward pass (the style vector is still
        each window's own). Cellpose 4: ``eval`` on each."""
        if cellpose_api(model) == 4:
            return [self.network(model, image) for image in images]
        Y, X, c = images[0].shape
        nchan = int(getattr(model.net, "nchan", None) or (self.meta.get("popseg") or {}).get("nchan") or 2)
        # the network pools 4 times: pad the far edges to a multiple of 16 (the near ones are aligned)
        x = np.zeros((len(images), nchan, -(-Y // 16) * 16, -(-X // 16) * 16), np.float32)
        for i, image in enumerate(images):
            x[i, :min(c, nchan), :Y, :X] = np.moveaxis(image, -1, 0)[:nchan]
        y, _ = cellpose_forward(model.net, x)
        y = np.asarray(y[:, :, :Y, :X])
        return [{"flows": yi[:2], "cellprob": yi[2]} for yi in y]

    def postprocess(self, model: Any, outputs: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Cellpose's own ``compute_masks`` (Cellpose 4: the masks ``eval`` made)."""
        if "masks" in outputs:
            return outputs["masks"]
        from cellpose import dynamics

        cellprob_threshold, flow_threshold = self._thresholds()
        min_size = int(round(self.p.min_size * self.model_scale(model) ** 2))  # movie px -> network px
        # max_size_fraction=1: cellpose drops objects over 40 % of *its input*, which would make the
        # result depend on the window; objects are judged whole, after stitching, instead.
        masks = dynamics.compute_masks(outputs["flows"].astype(np.float32), outputs["cellprob"].astype(np.float32),
                                       niter=200, cellprob_threshold=cellprob_threshold,
                                       flow_threshold=flow_threshold, min_size=min_size, max_size_fraction=1.0,
                                       device=getattr(model, "device", None) or _cpu())
        return np.asarray(masks)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(diameter=self.diameter, cellprob_threshold=self.p.cellprob_threshold,
                 flow_threshold=self.p.flow_threshold)
        return d


def _cpu():
    import torch

    return torch.device("cpu")
