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

__all__ = ["compact_ids", "canonical_relabel", "anchors_of", "frame_offsets", "label_dtype_for", "clusters",
           "resolved_clusters", "cluster_boxes", "group_boxes", "provisional_ids", "number_from_provisional"]


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


# --------------------------------------------------------------------------- tiles
#
# Stitching by resolution, not by matching. A segmenter run on a padded window is exact for a
# *cluster* — a group of support pixels linked within ``link`` pixels (see ``clusters``) — whose
# pixels all lie at least ``margin`` pixels from every artificial window edge: everything the
# segmentation of that cluster depends on is then inside the window and exact. Such a cluster is
# *resolved*; every tile that resolves a cluster computes the same labels for it. Objects get a
# provisional id, the global raster index of their first pixel plus one, which any window that
# resolves them computes identically, so tiles write their cores without talking to each other.
# Clusters no tile resolves (cut by tiles, larger than the halo) are re-segmented per frame in a
# window grown around the union of their pieces until they are resolved (at worst, the frame).

def clusters(support: np.ndarray, link: int) -> tuple[np.ndarray, int]:
    """Label the clusters of a support mask: pixels joined when within ``link`` (Chebyshev).

    Two support pixels belong to the same cluster when a chain of support pixels joins them with
    steps of Chebyshev length at most ``2 * ceil(link / 2) + 1`` (>= ``link`` + 1).

    Returns
    -------
    labels : int32 array
        Cluster id at support pixels, 0 elsewhere.
    n : int
    """
    support = np.asarray(support, dtype=bool)
    h = -(-int(link) // 2)
    # a square dilation, done as a separable maximum filter (fast for wide squares)
    grown = ndi.maximum_filter(support.view(np.uint8), size=2 * h + 1) > 0 if h else support
    lab, n = ndi.label(grown, structure=np.ones((3, 3), bool))
    lab = lab.astype(np.int32, copy=False)
    lab[~support] = 0
    return lab, int(n)


def resolved_clusters(cluster_labels: np.ndarray, n: int, artificial: tuple[bool, bool, bool, bool],
                      margin: int) -> np.ndarray:
    """Which clusters are at least ``margin`` pixels from every artificial window edge.

    Returns a boolean array indexed by cluster id (index 0, background, is True).
    """
    H, W = cluster_labels.shape
    ok = np.ones(n + 1, dtype=bool)
    top, bottom, left, right = artificial
    bands = []
    if top:
        bands.append(cluster_labels[:margin, :])
    if bottom:
        bands.append(cluster_labels[max(0, H - margin):, :])
    if left:
        bands.append(cluster_labels[:, :margin])
    if right:
        bands.append(cluster_labels[:, max(0, W - margin):])
    for band in bands:
        ok[np.bincount(band.ravel(), minlength=n + 1) > 0] = False
    ok[0] = True
    return ok


def cluster_boxes(cluster_labels: np.ndarray, ids) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the given cluster ids, in the array's coordinates."""
    boxes = ndi.find_objects(cluster_labels)
    out = []
    for i in ids:
        b = boxes[i - 1]
        out.append((b[0].start, b[0].stop, b[1].start, b[1].stop))
    return out


def group_boxes(boxes) -> list[tuple[int, int, int, int]]:
    """Union-find over boxes that overlap or touch; returns the bounding box of each group.

    Groups are returned in a deterministic order (by their top-left corner).
    """
    boxes = [tuple(int(v) for v in b) for b in boxes]
    parent = list(range(len(boxes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # boxes are few (one per cut cluster piece); sort-and-sweep keeps it near-linear
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][0])
    active: list[int] = []
    for i in order:
        y0, y1, x0, x1 = boxes[i]
        active = [j for j in active if boxes[j][1] >= y0]
        for j in active:
            b = boxes[j]
            if b[2] <= x1 and x0 <= b[3]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
        active.append(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(find(i), []).append(i)
    out = []
    for members in groups.values():
        ys0, ys1, xs0, xs1 = zip(*(boxes[m] for m in members))
        out.append((min(ys0), max(ys1), min(xs0), max(xs1)))
    return sorted(out)


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
