"""Ids: canonical numbering, provisional ids of a frame, and the movie's final ids.

Invariants (tested in ``tests/test_stitch.py``):

* ``canonical_relabel`` numbers the objects of a label image 1..n in the raster order
  of each object's *anchor*, its first pixel in raster (row-major) order. The result
  depends only on the set of pixels of each object, never on the ids the segmenter
  happened to give, so two segmentations with the same masks give the same array.
* ``provisional_ids`` gives an object the raster index of its anchor in the *frame* plus one:
  any window that sees the object whole computes the same id, so windows need not talk.
* ``frame_offsets`` turns per-frame object counts into id offsets by a prefix sum in
  frame order, so frame t's objects get ids ``offset[t] + 1 .. offset[t] + count[t]``
  (``number_from_provisional``). Ids are therefore unique across the movie, dense, ordered by
  (frame, anchor), and independent of how frames were scheduled or how many workers ran them.
* No array is sized by a global id: look-up tables are sized by the largest *local* id
  of one block, which is bounded by the block's pixel count.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["compact_ids", "canonical_relabel", "anchors_of", "frame_offsets", "label_dtype_for",
           "provisional_dtype", "provisional_ids", "number_from_provisional"]


def anchors_of(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids present in a 2D label image and the (row, col) of each one's first pixel.

    Parameters
    ----------
    labels : (Y, X) integer array
        0 is background.

    Returns
    -------
    ids : (n,) array
        Present ids, in increasing id order.
    anchors : (n, 2) int64 array
        Row and column of each id's first pixel in raster order.
    """
    if labels.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {labels.shape}")
    # find_objects is one C pass; each object's first pixel lies on the top row of its box,
    # so the search below costs the boxes' widths, not the image.
    boxes = ndi.find_objects(labels)
    ids, anchors = [], []
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        r = box[0].start
        row = labels[r, box[1]]
        c = box[1].start + int(np.argmax(row == i))
        ids.append(i)
        anchors.append((r, c))
    return np.asarray(ids, dtype=np.int64), np.asarray(anchors, dtype=np.int64).reshape(-1, 2)


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Check a label image and bound its ids by its size (sparse ids are compacted).

    Returns the labels (the same array unless compacted) and the largest id.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise TypeError(f"label image must be integer, got {labels.dtype}")
    if not labels.size:
        return labels, 0
    if labels.min() < 0:
        raise ValueError("label image has negative ids")
    top = int(labels.max())
    if top > labels.size:
        # Sparse ids (hashes, global ids): compact them so no table is sized by the largest.
        _, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape) + int(labels.min() > 0)
        top = int(labels.max())
    return labels, top


def canonical_relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber a label image 1..n in raster order of the objects' first pixels.

    Parameters
    ----------
    labels : (Y, X) non-negative integer array

    Returns
    -------
    relabelled : (Y, X) uint32 array
    n : int
        Number of objects.
    """
    labels, _ = compact_ids(labels)
    ids, anchors = anchors_of(labels)
    n = len(ids)
    if n == 0:
        return np.zeros(labels.shape, np.uint32), 0
    order = np.lexsort((anchors[:, 1], anchors[:, 0]))
    lut = np.zeros(int(ids[-1]) + 1, dtype=np.uint32)
    lut[ids[order]] = np.arange(1, n + 1, dtype=np.uint32)
    return lut[labels], n


def frame_offsets(counts) -> np.ndarray:
    """Id offset of each frame: exclusive prefix sum of per-frame counts, in frame order."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative integers")
    return np.cumsum(counts) - counts


def label_dtype_for(total: int) -> np.dtype:
    """uint32 unless the movie has more objects than uint32 can number."""
    return np.dtype(np.uint32) if total <= np.iinfo(np.uint32).max else np.dtype(np.uint64)


def provisional_dtype(frame_shape: tuple[int, int]) -> np.dtype:
    """Smallest unsigned dtype that holds every provisional id of a frame (its pixel count + 1)."""
    Y, X = frame_shape
    return np.dtype(np.uint32) if Y * X < np.iinfo(np.uint32).max else np.dtype(np.uint64)


def provisional_ids(labels: np.ndarray, keep: np.ndarray, origin: tuple[int, int], frame_width: int,
                    dtype=np.uint32) -> tuple[np.ndarray, np.ndarray]:
    """Replace each kept object's id by its provisional global id (raster index of its first pixel + 1).

    Parameters
    ----------
    labels : (H, W) int array
        Objects of a window, ids bounded by its size (see ``compact_ids``), any order, gaps allowed.
    keep : (n + 1,) bool array
        Which ids to keep (index 0 ignored); others become 0.
    origin : (y0, x0)
        The window's position in the frame.
    frame_width : int

    Returns
    -------
    prov : (H, W) array of ``dtype``
    anchors : (k,) int64 array
        Sorted provisional ids of the kept objects.
    """
    ids, anchors = anchors_of(labels)
    lut = np.zeros(int(ids[-1]) + 1 if len(ids) else 1, dtype=dtype)
    if len(ids):
        sel = keep[ids]
        glob = (anchors[sel, 0] + origin[0]) * frame_width + (anchors[sel, 1] + origin[1]) + 1
        lut[ids[sel]] = glob.astype(dtype)
        return lut[labels], np.sort(glob.astype(np.int64))
    return lut[labels], np.zeros(0, np.int64)


def number_from_provisional(prov: np.ndarray, anchors: np.ndarray, offset: int, dtype=np.uint32) -> np.ndarray:
    """Final ids from provisional ones: rank among the frame's sorted anchors + 1 + ``offset``."""
    out = np.zeros(prov.shape, dtype=dtype)
    fg = prov > 0
    if fg.any():
        rank = np.searchsorted(anchors, prov[fg].astype(np.int64))
        if (rank >= len(anchors)).any() or (anchors[np.minimum(rank, len(anchors) - 1)] != prov[fg]).any():
            raise RuntimeError("a provisional id has no anchor: the stitching invariants were violated")
        out[fg] = (rank + 1 + offset).astype(dtype)
    return out
