"""Instance-segmentation accuracy: object matching at an IoU threshold."""

from __future__ import annotations

import numpy as np

__all__ = ["match_counts", "f1_score"]


def match_counts(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """Matched pairs, predicted objects and true objects in one 2D frame.

    A pair matches when its intersection over union exceeds ``iou``; for ``iou >= 0.5``
    each object can match at most one other, so no assignment problem arises. For lower
    thresholds the pairs are matched greedily by decreasing IoU.

    Returns
    -------
    tp, n_pred, n_true : int
    """
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    # Compact ids first: nothing here is sized by the largest (global) id.
    p_ids, p = np.unique(pred, return_inverse=True)
    t_ids, t = np.unique(truth, return_inverse=True)
    p_bg = int(p_ids[0] == 0)
    t_bg = int(t_ids[0] == 0)
    n_pred, n_true = len(p_ids) - p_bg, len(t_ids) - t_bg
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    p_area = np.bincount(p, minlength=len(p_ids))
    t_area = np.bincount(t, minlength=len(t_ids))
    both = (pred != 0) & (truth != 0)
    pairs, inter = np.unique(np.stack([p[both], t[both]]), axis=1, return_counts=True)
    union = p_area[pairs[0]] + t_area[pairs[1]] - inter
    scores = inter / union
    keep = scores > iou
    if iou >= 0.5:
        return int(keep.sum()), n_pred, n_true
    order = np.argsort(-scores[keep], kind="stable")
    used_p, used_t, tp = set(), set(), 0
    for a, b in pairs[:, keep].T[order]:
        if a not in used_p and b not in used_t:
            used_p.add(a)
            used_t.add(b)
            tp += 1
    return tp, n_pred, n_true


def f1_score(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> float:
    """F1 over all frames of ``(t, y, x)`` (or one ``(y, x)``) label arrays, matched per frame."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    frames = zip(pred, truth) if pred.ndim == 3 else [(pred, truth)]
    tp = n_p = n_t = 0
    for a, b in frames:
        m, x, y = match_counts(a, b, iou)
        tp, n_p, n_t = tp + m, n_p + x, n_t + y
    if n_p + n_t == 0:
        return 1.0
    return 2.0 * tp / (n_p + n_t)
