"""From labels to models: export paired training tiles, train StarDist or Cellpose, write model folders.

The loop the seed describes: segment a population with a traditional pipeline, correct the labels
(in napari, saved as TIFF or Zarr), export them with the movie's pixels as a training set, train a
network from scratch or fine-tune one, and use the model folder as ``model:`` in a population.

A dataset folder holds ``images/*.tif`` (``(c, y, x)``, raw intensities), ``masks/*.tif`` (instance
labels, ids 1..n per tile) and ``dataset.json``: channels, pixel size, the scaling rule and, per
tile, the intensity range of its *whole frame* — so training scales pixels exactly as a run will.

A model folder is the framework's own plus Celldetective's ``config_input.json`` (channels,
``spatial_calibration``, normalisation) with a ``popseg`` section (object size, validation F1).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import PopsegError
from .location import Location
from .metrics import f1_score
from .normalize import ChannelScaling, apply_scaling, scaling_from_pixels
from .segmenters.model import quiet_tensorflow

__all__ = ["export_training", "load_dataset", "train_model", "parse_frames"]

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
DEFAULT_SCALING = ChannelScaling("percentile", 1.0, 99.8, False)


def parse_frames(spec: str | None, n_frames: int) -> list[int]:
    """Frames from ``start:stop:step`` (Python slice syntax), a comma list, or all (None)."""
    if spec is None or spec == "":
        return list(range(n_frames))
    try:
        if ":" in spec:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
            if len(parts) > 3:
                raise ValueError
            frames = list(range(n_frames))[slice(*parts)]
        else:
            frames = [int(p) for p in spec.split(",")]
    except ValueError:
        raise PopsegError(f"--frames {spec!r} is not start:stop:step or a comma list of frame numbers") from None
    bad = [t for t in frames if not 0 <= t < n_frames]
    if bad:
        raise PopsegError(f"--frames: frame(s) {bad} outside the movie (frames 0..{n_frames - 1})")
    if not frames:
        raise PopsegError(f"--frames {spec!r} selects no frame of the {n_frames}")
    return frames


def read_label_image(path: "Location | Path | str") -> np.ndarray:
    """A label image ``(t, y, x)`` or ``(y, x)`` from TIFF, a Zarr array or a popseg label group."""
    import tifffile
    import zarr

    path = Location.of(path)
    if not path.exists() and not (path / "zarr.json").exists():
        raise PopsegError(f"labels {path} not found; give a TIFF or Zarr label image")
    if path.name.lower().endswith((".tif", ".tiff")):
        arr = tifffile.imread(io.BytesIO(path.read_bytes()) if not path.is_local else path.url)
    else:
        try:
            node = zarr.open(store=path.zarr_store(read_only=True), mode="r")
            arr = node if isinstance(node, zarr.Array) else node["0"]
        except Exception as err:
            raise PopsegError(f"cannot read labels {path}: {err}; give a TIFF or a Zarr array") from None
    arr = np.asarray(arr)
    if arr.dtype.kind not in "ui":
        raise PopsegError(f"labels {path} are {arr.dtype}, not integer ids")
    return arr[None] if arr.ndim == 2 else arr


def export_training(output: Path | str | None, population: str | None, out: Path | str, *,
                    frames: str | None = None, tiles: int = 1, labels: Path | str | None = None,
                    movie: Path | str | None = None, channels: Sequence[str] | None = None,
                    corrected: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Write paired image/mask tiles for training.

    Parameters
    ----------
    output : path, optional
        A popseg output: its run record gives the movie, and ``population`` its labels and channels.
    population : str, optional
        The population whose labels (and channels) are exported.
    out : path
        The dataset folder to create.
    frames : str, optional
        ``start:stop:step`` or ``0,5,9`` (default: all frames).
    tiles : int
        Cut each frame into ``tiles x tiles`` pieces (1: whole frames).
    labels : path, optional
        Corrected labels (TIFF or Zarr, ``(t, y, x)``) to export instead of the run's.
    movie, channels : optional
        The movie and its channels, when there is no popseg output to read them from.
    corrected : bool
        Export the population's proofread frames (``labels/<population>-corrected``, see
        :mod:`popseg_dask.corrections`); ``frames`` defaults to the corrected ones.
    overwrite : bool

    Returns
    -------
    dict
        The dataset's metadata (also written to ``out/dataset.json``).
    """
    out = Path(out)
    if tiles < 1:
        raise PopsegError(f"--tiles must be >= 1, got {tiles}")
    if corrected:
        if output is None or labels is not None:
            raise PopsegError("--corrected exports a popseg output's corrections: give the output and "
                              "--population, without --labels")
        labels, frames = _corrected_source(output, population, frames)
    mov, chans, lab_path = _training_sources(output, population, labels, movie, channels)
    names = [str(c) for c in mov.c.values]
    missing = [c for c in chans if c not in names]
    if missing:
        raise PopsegError(f"channel(s) {missing} are not in the movie; its channels are {names}")
    lab = read_label_image(lab_path)
    n_t = mov.sizes["t"]
    if lab.shape[1:] != (mov.sizes["y"], mov.sizes["x"]) or lab.shape[0] not in (1, n_t):
        raise PopsegError(f"labels {lab_path} have shape {lab.shape}, the movie {n_t}x{mov.sizes['y']}x"
                          f"{mov.sizes['x']}; export labels of this movie")
    picked = parse_frames(frames, lab.shape[0] if lab.shape[0] == 1 else n_t)
    if out.exists():
        if not overwrite:
            raise PopsegError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    items = _write_pairs(tmp, mov, lab, picked, [names.index(c) for c in chans], tiles)
    meta = {"channels": chans, "pixel_size_um": mov.attrs.get("pixel_size_um"),
            "normalization": {"mode": DEFAULT_SCALING.mode, "low": DEFAULT_SCALING.low,
                              "high": DEFAULT_SCALING.high, "clip": DEFAULT_SCALING.clip, "scope": "frame"},
            "source": {"labels": str(lab_path), "movie": str(mov.attrs["source"]["path"]),
                       "population": population, "corrected": corrected},
            "items": items}
    (tmp / DATASET_FILE).write_text(json.dumps(meta, indent=1))
    tmp.rename(out)  # a dataset appears only once complete
    return meta


def _corrected_source(output, population, frames):
    """The corrected label image of ``population`` and the frames to export (default: the corrected)."""
    from .corrections import open_corrections

    corr = open_corrections(output, population)
    if corr is None or not corr.frames:
        raise PopsegError(f"population {population!r} of {output} has no corrected frames; proofread some "
                          "(napari: Proofread, Save) or drop --corrected")
    if frames is None:
        return corr.location, ",".join(str(t) for t in corr.frames)
    n_t = corr.array().shape[0]
    extra = sorted(set(parse_frames(frames, n_t)) - set(corr.frames))
    if extra:
        raise PopsegError(f"--frames {frames!r} names frames {extra} that have no correction; corrected frames: "
                          f"{corr.frames}")
    return corr.location, frames


def _training_sources(output, population, labels, movie, channels):
    """The movie, the channels and the label image to export: from a run's output, or given."""
    from .io.movie import open_movie, open_run_input

    if output is None:
        if movie is None or labels is None or not channels:
            raise PopsegError("without a popseg output, give --movie, --labels and --channels")
        return open_movie(Path(movie)), list(channels), Path(labels)
    from .io.layout import OutputLayout
    from .io.record import read_run_record

    record = read_run_record(output)
    pops = record.get("populations", {})
    if population not in pops:
        raise PopsegError(f"population {population!r} is not in {output}; it has {sorted(pops)}")
    lab_path = Location.of(labels) if labels else OutputLayout(output).label_array(population)
    return open_run_input(record), list(channels or pops[population]["channels"]), lab_path


def _write_pairs(tmp: Path, mov, lab: np.ndarray, picked: list[int], idx: list[int], tiles: int) -> list[dict]:
    """Image and mask TIFFs of each picked frame, cut into ``tiles x tiles``; one item per pair."""
    import tifffile

    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    ys = np.linspace(0, mov.sizes["y"], tiles + 1).astype(int)
    xs = np.linspace(0, mov.sizes["x"], tiles + 1).astype(int)
    items = []
    for t in picked:
        # read in this process, not on a default client whose workers may lack its credentials
        frame = np.asarray(mov.data[t if lab.shape[0] > 1 else 0][idx].compute(scheduler="threads"))
        lohi = scaling_from_pixels(frame, [DEFAULT_SCALING] * len(idx))
        for i in range(tiles):
            for j in range(tiles):
                img = frame[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
                msk = _sequential(lab[t if lab.shape[0] > 1 else 0, ys[i]:ys[i + 1], xs[j]:xs[j + 1]])
                stem = f"t{t:05d}_{i:02d}_{j:02d}"
                tifffile.imwrite(tmp / "images" / f"{stem}.tif", img)
                tifffile.imwrite(tmp / "masks" / f"{stem}.tif", msk)
                items.append({"name": stem, "frame": t, "origin": [int(ys[i]), int(xs[j])],
                              "objects": int(msk.max()), "scaling": np.nan_to_num(lohi).tolist()})
    return items


def _sequential(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    out = relabel_sequential(np.asarray(labels))[0]
    return out.astype(np.uint16 if out.max() < 2**16 else np.uint32)


def load_dataset(folder: Path | str) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Scaled images ``(y, x, c)`` float32, masks ``(y, x)`` and the metadata of a dataset folder."""
    import tifffile

    folder = Path(folder)
    meta_path = folder / DATASET_FILE
    if not meta_path.is_file():
        raise PopsegError(f"{folder} is not a training set (no {DATASET_FILE}); make one with 'popseg export-training'")
    meta = json.loads(meta_path.read_text())
    n = meta.get("normalization", {})
    scaling = ChannelScaling(n.get("mode", "percentile"), float(n.get("low", 1)), float(n.get("high", 99.8)),
                             bool(n.get("clip", False)))
    images, masks = [], []
    for item in meta["items"]:
        img = tifffile.imread(folder / "images" / f"{item['name']}.tif")
        img = img[None] if img.ndim == 2 else img
        lohi = np.asarray(item["scaling"], dtype=float)
        lohi[(lohi[:, 0] == 0) & (lohi[:, 1] == 0)] = np.nan  # an empty channel stays zero
        images.append(np.moveaxis(apply_scaling(img, lohi, [scaling] * img.shape[0]), 0, -1))
        masks.append(tifffile.imread(folder / "masks" / f"{item['name']}.tif").astype(np.int32))
    if not images:
        raise PopsegError(f"{folder} holds no training tiles")
    return images, masks, meta


def _split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise PopsegError(f"a training set needs at least 2 tiles (one for validation), found {n}; "
                          "export more frames or more --tiles")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _object_size(masks: list[np.ndarray]) -> int:
    from scipy import ndimage as ndi

    size = 0
    for m in masks:
        for box in ndi.find_objects(m):
            if box is not None:
                size = max(size, box[0].stop - box[0].start, box[1].stop - box[1].start)
    return int(size)


def train_model(kind: str, dataset: Path | str, out: Path | str, *, base: Path | str | None = None,
                epochs: int | None = None, steps: int | None = None, size: str = "small", patch: int | None = None,
                val_fraction: float = 0.2, seed: int = 0, overwrite: bool = False,
                echo: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Train (or fine-tune, with ``base``) a model on a dataset folder and write a model folder.

    Parameters
    ----------
    kind : "stardist" or "cellpose"
    dataset : path
        A folder written by :func:`export_training`.
    out : path
        The model folder to create (its name is the model's name).
    base : path, optional
        A model folder to start from (transfer learning); default: from scratch.
    epochs, steps : int, optional
        Training length (defaults depend on ``kind``).
    size : "tiny", "small" or "default"
        Network width/depth when training from scratch (``tiny`` trains in seconds on a CPU).
    patch : int, optional
        Side of the training crops (default: 256 for StarDist, 224 for Cellpose, capped by the tiles).
    val_fraction : float
        Share of tiles held out to report validation F1.

    Returns
    -------
    dict
        ``validation_f1`` (IoU 0.5), ``validation_f1_09`` (IoU 0.9), ``train_s``, tile counts, ``model``.
    """
    if kind not in ("stardist", "cellpose"):
        raise PopsegError(f"unknown model kind {kind!r}; use stardist or cellpose")
    if size not in ("tiny", "small", "default"):
        raise PopsegError(f"--size must be tiny, small or default, got {size!r}")
    out = Path(out)
    if base is not None and not Path(base).exists():
        raise PopsegError(f"base model {base} not found; give a model folder to fine-tune (or drop --from)")
    images, masks, meta = load_dataset(dataset)
    if out.exists():
        if not overwrite:
            raise PopsegError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    train_idx, val_idx = _split(len(images), val_fraction, seed)
    X = [images[i] for i in train_idx]
    Y = [masks[i] for i in train_idx]
    Xv = [images[i] for i in val_idx]
    Yv = [masks[i] for i in val_idx]
    echo(f"training {kind} ({'fine-tuning ' + str(base) if base else 'from scratch, ' + size}) on "
         f"{len(X)} tiles, validating on {len(Xv)}")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    trainer = _train_stardist if kind == "stardist" else _train_cellpose
    predict, extra = trainer(X, Y, Xv, Yv, tmp, out.name, Path(base) if base else None, epochs, steps, size, seed,
                             patch)
    train_s = time.perf_counter() - t0
    f1 = [f1_score(predict(x), y, 0.5) for x, y in zip(Xv, Yv)]
    f1_9 = [f1_score(predict(x), y, 0.9) for x, y in zip(Xv, Yv)]
    result = {"model": str(out), "kind": kind, "train_s": round(train_s, 1), "train_tiles": len(X),
              "validation_tiles": len(Xv), "validation_f1": float(np.mean(f1)),
              "validation_f1_09": float(np.mean(f1_9)), "base": str(base) if base else None}
    config_input = _model_metadata(kind, meta, masks, dataset, extra, result)
    (tmp / "config_input.json").write_text(json.dumps(config_input, indent=1))
    tmp.rename(out)  # a model folder appears only once complete
    return result


def _model_metadata(kind: str, meta: dict, masks, dataset, extra: dict, result: dict) -> dict[str, Any]:
    """The model folder's Celldetective-style ``config_input.json``: channels, scaling, and popseg's facts."""
    n = meta["normalization"]
    c = len(meta["channels"])
    config_input = {
        "channels": meta["channels"], "model_type": kind,
        "spatial_calibration": meta.get("pixel_size_um"),
        "normalization_percentile": [n["mode"] == "percentile"] * c,
        "normalization_values": [[n["low"], n["high"]]] * c,
        "normalization_clip": [bool(n.get("clip", False))] * c,
        "popseg": {"object_size_px": _object_size(masks), "dataset": str(Path(dataset).resolve()), **extra,
                   **{k: result[k] for k in ("train_s", "validation_f1", "validation_f1_09", "base")}},
    }
    if kind == "cellpose":
        config_input["diameter"] = extra["diameter"]
    return config_input


def _augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90-degree rotations (labels move with the pixels)."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _train_stardist(X, Y, Xv, Yv, folder: Path, name: str, base: Path | None, epochs, steps, size, seed, patch):
    import contextlib
    import io

    quiet_tensorflow()
    try:
        from stardist.models import Config2D, StarDist2D
    except ImportError:
        raise PopsegError("popseg train stardist needs StarDist: pip install 'popseg-dask[stardist]'") from None
    np.random.seed(seed)
    smallest = min(min(x.shape[:2]) for x in X + Xv)
    epochs = epochs or 40
    steps = steps or 20
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if base is not None:
            shutil.copytree(base, folder)
            for f in ("config_input.json",):
                (folder / f).unlink(missing_ok=True)
            model = StarDist2D(None, name=folder.name, basedir=str(folder.parent))
            if int(model.config.n_channel_in) != X[0].shape[-1]:
                raise PopsegError(f"base model {base} reads {model.config.n_channel_in} channel(s), the dataset "
                                  f"has {X[0].shape[-1]}")
            side = min(patch or 10**6, smallest) // 16 * 16
            model.config.train_patch_size = tuple(min(p, side) for p in model.config.train_patch_size)
            if (folder / "weights_best.h5").is_file():
                model.load_weights("weights_best.h5")
        else:
            depth, filters = {"tiny": (2, 16), "small": (3, 32), "default": (3, 32)}[size]
            div = 2 * 2**depth
            patch = min(patch or 256, smallest) // div * div
            if patch < div * 2:
                raise PopsegError(f"training tiles of {smallest} px are too small for StarDist; export fewer --tiles")
            conf = Config2D(n_rays=32 if size != "tiny" else 16, grid=(2, 2), n_channel_in=X[0].shape[-1],
                            unet_n_depth=depth, unet_n_filter_base=filters, train_patch_size=(patch, patch),
                            train_batch_size=4, train_epochs=epochs, train_steps_per_epoch=steps,
                            train_tensorboard=False, use_gpu=False)
            model = StarDist2D(conf, name=folder.name, basedir=str(folder.parent))
        model.train(X, Y, validation_data=(Xv, Yv), augmenter=_augment, epochs=epochs, steps_per_epoch=steps)
        model.optimize_thresholds(Xv, Yv)

    def predict(x):
        with contextlib.redirect_stdout(io.StringIO()):
            return model.predict_instances(x, axes="YXC", normalizer=None, show_tile_progress=False, verbose=False)[0]

    return predict, {"epochs": epochs, "steps_per_epoch": steps}


def _train_cellpose(X, Y, Xv, Yv, folder: Path, name: str, base: Path | None, epochs, steps, size, seed, patch):
    try:
        import torch
        from cellpose import models, train
    except ImportError:
        raise PopsegError("popseg train cellpose needs cellpose: pip install 'popseg-dask[cellpose]'") from None
    from .segmenters.cellpose import cellpose_api

    if cellpose_api() != 3:
        raise PopsegError("popseg train cellpose supports cellpose 3; train cellpose 4 models with cellpose itself "
                          "and point 'model:' at the result")
    torch.manual_seed(seed)
    np.random.seed(seed)
    epochs = epochs or 100
    nchan = 2
    diam = [2 * np.sqrt(np.bincount(y.ravel())[1:][np.bincount(y.ravel())[1:] > 0] / np.pi) for y in Y]
    diameter = float(np.median(np.concatenate(diam))) if any(len(d) for d in diam) else 30.0
    weights = str(base / base.name) if base is not None and (base / base.name).is_file() else (
        str(base) if base is not None else False)
    model = models.CellposeModel(gpu=False, pretrained_model=weights, nchan=nchan, diam_mean=30.0)

    def chw(x):  # (y, x, c) -> (2, y, x), a missing second channel left at zero
        out = np.zeros((nchan, *x.shape[:2]), np.float32)
        out[: min(nchan, x.shape[-1])] = np.moveaxis(x, -1, 0)[:nchan]
        return out

    smallest = min(min(x.shape[:2]) for x in X)
    bsize = int(min(patch or 224, smallest) // 16 * 16)
    folder.mkdir(parents=True)
    path = train.train_seg(model.net, train_data=[chw(x) for x in X], train_labels=Y, channels=None, channel_axis=0,
                           normalize=False, n_epochs=epochs, learning_rate=0.01, batch_size=8, bsize=bsize,
                           save_path=str(folder), model_name=name, min_train_masks=1, rescale=True,
                           test_data=[chw(x) for x in Xv], test_labels=Yv)
    path = Path(path[0] if isinstance(path, tuple) else path)
    shutil.move(str(path), folder / name)
    shutil.rmtree(folder / "models", ignore_errors=True)
    trained = models.CellposeModel(gpu=False, pretrained_model=str(folder / name), nchan=nchan)

    def predict(x):
        return trained.eval(chw(x), channel_axis=0, channels=None, normalize=False, diameter=diameter)[0]

    return predict, {"epochs": epochs, "diameter": diameter, "nchan": nchan, "diam_mean": 30.0}
