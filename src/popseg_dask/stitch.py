"""Pure functions that turn per-block label images into globally unique ids.

Invariants (tested in ``tests/test_stitch.py``):

* ``canonical_relabel`` numbers the objects of a label image 1..n in the raster order
  of each object's *anchor*, its first pixel in raster (row-major) order. The result
  depends only on the set of pixels of each object, never on the ids the segmenter
  happened to give, so two segmentations with the same masks give the same array.
* ``frame_offsets`` turns per-frame object counts into id offsets by a prefix sum in
  frame order, so frame t's objects get ids ``offset[t] + 1 .. offset[t] + count[t]``.
  Ids are therefore unique across the movie, dense, ordered by (frame, anchor), and
  independent of how frames were scheduled or how many workers ran them.
* No array is sized by a global id: look-up tables are sized by the largest *local* id
  of one block, which is bounded by the block's pixel count.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["canonical_relabel", "anchors_of", "frame_offsets", "label_dtype_for", "apply_offset"]


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
    labels = np.asarray(labels)
    if labels.dtype.kind not in "ui":
        raise TypeError(f"label image must be integer, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label image has negative ids")
    if labels.size and int(labels.max()) > labels.size:
        # Sparse ids (hashes, global ids): compact them so no table is sized by the largest.
        _, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape) + int(labels.min() > 0)
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


def apply_offset(local: np.ndarray, offset: int, dtype=np.uint32) -> np.ndarray:
    """Shift local ids 1..n to ``offset+1 .. offset+n``, keeping background 0."""
    dt = np.dtype(dtype)
    out = local.astype(dt, copy=True)
    if offset:
        np.add(out, dt.type(offset), out=out, where=out > 0)
    return out
