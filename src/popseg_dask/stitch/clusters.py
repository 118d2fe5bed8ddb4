"""Clusters: groups of support pixels whose segmentation can depend on each other.

A segmenter run on a padded window is exact for a *cluster* — support pixels linked within the
segmenter's ``link`` (see :func:`clusters`) — whose pixels all lie at least ``margin`` pixels from
every artificial window edge (:func:`resolved_clusters`). :func:`group_boxes` unions
overlapping boxes; the merge no longer uses it (it re-segments piece by piece, see
:mod:`.resolve`: grouping by box chained unrelated clusters along a cut).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["clusters", "resolved_clusters", "cluster_boxes", "group_boxes", "present_ids"]


def present_ids(labels: np.ndarray, n: int) -> np.ndarray:
    """Nonzero ids present in ``labels`` (ids < n): a counting pass, not a sort."""
    found = np.flatnonzero(np.bincount(labels.ravel(), minlength=n))
    return found[found > 0]


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
