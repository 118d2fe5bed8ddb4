"""Same config + same frame => the same masks as Celldetective 1.6.5.

The expected label images were produced by Celldetective itself
(``tests/fixtures/celldetective/make_fixtures.py``, run in a throw-away venv); here
they are compared with popseg's threshold segmenter, up to a renumbering of ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from popseg_dask.segmenters import BuildContext
from popseg_dask.segmenters.threshold import FrameFacts, ThresholdSegmenter
from popseg_dask.stitch import canonical_relabel

FIXTURES = Path(__file__).parent / "fixtures" / "celldetective"
CASES = json.loads((FIXTURES / "cases.json").read_text())
ARRAYS = np.load(FIXTURES / "cases.npz")


def _segmenter_for(case: dict, tmp_path: Path, ties: str = "celldetective") -> tuple[ThresholdSegmenter, np.ndarray, object]:
    frame = ARRAYS[case["image_key"]]
    block = frame[None] if frame.ndim == 2 else np.moveaxis(frame, -1, 0)
    names = case["channel_names"] or [str(i) for i in range(block.shape[0])]
    # Celldetective's own JSON, read as a user's threshold_config file would be.
    (tmp_path / "threshold_config.json").write_text(json.dumps(case["config"]))
    params = {"threshold_config": "threshold_config.json", "watershed_ties": ties}
    kw = case["kwargs"]
    if "marker_footprint" in kw:
        params["marker_footprint"] = ARRAYS[kw["marker_footprint"]["npz_key"]].astype(int).tolist()
    for k in ("edge_exclusion",):
        if k in kw:
            params[k] = kw[k]
    seg = ThresholdSegmenter.from_config(params, BuildContext(tuple(names), tmp_path, case["name"]))
    stats = None
    ref = kw.get("equalize_reference")
    if isinstance(ref, dict):
        ref_img = ARRAYS[ref["npz_key"]]
        stats = FrameFacts(equalize_reference=ref_img)
    # The segmenter reads only the channels it needs, in its own order.
    block = block[[names.index(c) for c in seg.channels]]
    return seg, block, stats


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_same_masks_as_celldetective(case, tmp_path):
    seg, block, stats = _segmenter_for(case, tmp_path)
    original = block.copy()
    got = seg(block, stats)
    expected = ARRAYS[case["expected_key"]]
    assert np.array_equal(block, original, equal_nan=True), "the segmenter modified its input"
    assert got.shape == expected.shape
    np.testing.assert_array_equal(canonical_relabel(got)[0], canonical_relabel(expected)[0])


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_local_ties_differ_only_on_tied_boundaries(case, tmp_path):
    """The tile-invariant default moves only boundary pixels between touching objects."""
    from popseg_dask.metrics import f1_score

    seg, block, stats = _segmenter_for(case, tmp_path, ties="local")
    got = seg(block, stats)
    expected = ARRAYS[case["expected_key"]]
    n_exp = len(np.unique(expected)) - 1
    assert abs((len(np.unique(got)) - 1) - n_exp) <= max(1, n_exp // 50)
    assert ((got > 0) != (expected > 0)).sum() <= 0.001 * expected.size
    assert f1_score(got, expected, iou=0.9) >= 0.95


def test_fixtures_are_not_trivial():
    names = {c["image_key"] for c in CASES["cases"]}
    assert len(CASES["cases"]) >= 8 and len(names) >= 3
    for c in CASES["cases"]:
        assert len(np.unique(ARRAYS[c["expected_key"]])) - 1 == c["n_objects"] > 3


@pytest.mark.parametrize("seed", range(6))
def test_fill_holes_is_scipy_binary_fill_holes(seed):
    """The labelling fill gives scipy's pixels: holes of every size, rings, masks touching the border."""
    from scipy import ndimage as ndi

    from popseg_dask.segmenters.threshold import fill_holes

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 90)), int(rng.integers(1, 90)))
    mask = ndi.gaussian_filter(rng.random(shape), 1.5) > rng.uniform(0.4, 0.6)
    assert np.array_equal(fill_holes(mask), ndi.binary_fill_holes(mask))
    for m in (np.ones(shape, bool), np.zeros(shape, bool), ~mask):
        assert np.array_equal(fill_holes(m), ndi.binary_fill_holes(m))


@pytest.mark.parametrize("seed", range(4))
def test_distance_keeps_scipys_order_and_ties(seed, monkeypatch):
    """The fast distance transform orders and ties pixels exactly as scipy's; without the edt
    package (or for distances too long for float32) scipy's own values are used."""
    import sys

    from scipy import ndimage as ndi

    from popseg_dask.segmenters import threshold

    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random((120, 150)), 2 + seed) > 0.5
    ref = ndi.distance_transform_edt(mask)
    fast = threshold.distance_to_background(mask)
    assert fast.shape == ref.shape and np.allclose(fast, ref, rtol=1e-6, atol=0)
    a, b = ref[mask], fast[mask]
    assert np.array_equal(np.argsort(a, kind="stable"), np.argsort(b, kind="stable"))
    assert np.array_equal(a[:, None] == a[None, :200], b[:, None] == b[None, :200])
    monkeypatch.setattr(threshold, "_EDT_FLOAT32_EXACT", 0.5)
    assert np.array_equal(threshold.distance_to_background(mask), ref)
    monkeypatch.setitem(sys.modules, "edt", None)  # as if not installed
    assert np.array_equal(threshold.distance_to_background(mask), ref)


def _fill_label_holes_one_by_one(labels):
    """StarDist's ``fill_label_holes`` (Celldetective's), written out: every object in id order."""
    from scipy import ndimage as ndi

    out = np.zeros_like(labels)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        inner = [(s.start > 0, s.stop < n) for s, n in zip(box, labels.shape)]
        grown = tuple(slice(s.start - int(a), s.stop + int(b)) for s, (a, b) in zip(box, inner))
        crop = tuple(slice(int(a), -1 if b else None) for a, b in inner)
        out[box][ndi.binary_fill_holes(labels[grown] == i)[crop]] = i
    return out


def _holey_labels(rng, shape):
    """Objects with holes, rings around other objects (either id larger), objects in two pieces,
    pieces touching diagonally only, ids with gaps, objects on the border."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(ndi.gaussian_filter(rng.random(shape), 1.2) > rng.uniform(0.45, 0.55))
    labels = np.where(labels > 0, labels * 2 + 1, 0).astype(np.int32)  # gaps in the ids
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(int(rng.integers(1, 6))):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(2, 9)
        d = np.hypot(yy - cy, xx - cx)
        labels[(d >= r) & (d < r + rng.integers(1, 3))] = rng.integers(1, 2 * n + 40)  # a ring, maybe cut
        labels[d < rng.uniform(0, r - 1)] = rng.integers(0, 2 * n + 40)  # something (or nothing) inside
    for _ in range(int(rng.integers(0, 4))):  # single pixels and diagonal pairs of one id
        y, x = rng.integers(0, shape[0] - 1), rng.integers(0, shape[1] - 1)
        labels[y, x] = labels[y + 1, x + 1] = rng.integers(1, 2 * n + 40)
    return labels


@pytest.mark.parametrize("seed", range(12))
def test_fill_label_holes_is_stardists_loop(seed):
    """popseg's per-object fill gives the pixels of StarDist's loop (Celldetective's): rings
    around others of larger and smaller ids, objects in several pieces, borders, empty and
    one-pixel images."""
    from popseg_dask.segmenters.threshold import fill_label_holes

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80))) if seed % 3 else (64, 64)
    labels = _holey_labels(rng, shape)
    expected = _fill_label_holes_one_by_one(labels)
    got = fill_label_holes(labels)
    assert got.dtype == labels.dtype and np.array_equal(got, expected)
    if shape == (64, 64):  # these have rings: the fill changes something
        assert not np.array_equal(expected, labels)
    for other in (np.zeros(shape, np.int32), np.ones(shape, np.uint16), labels.astype(np.int64) * 1000):
        assert np.array_equal(fill_label_holes(other), _fill_label_holes_one_by_one(other))


def _simple_labels(rng, shape):
    """``_holey_labels`` made what a watershed of a hole-filled mask gives: each piece of an
    object an object of its own (ids shuffled), each enclosed background component an object."""
    from scipy import ndimage as ndi
    from skimage.measure import label

    labels = label(_holey_labels(rng, shape), background=0, connectivity=1)
    enclosed = ndi.binary_fill_holes(labels > 0) & (labels == 0)
    holes, _ = ndi.label(enclosed)
    labels = np.where(enclosed, holes + labels.max(), labels)
    perm = np.r_[0, rng.permutation(int(labels.max())) + 1]
    return perm[labels].astype(np.int32)


@pytest.mark.parametrize("seed", range(16))
def test_fill_label_holes_of_simple_labels_fills_only_enclosing_objects(seed):
    """With the watershed's guarantees (objects in one piece, background open), filling only
    the objects next to an enclosed one gives the loop's pixels: rings of smaller and larger
    ids around others, rings within rings, objects on the border."""
    from popseg_dask.segmenters.threshold import enclosing_objects, fill_label_holes

    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80))) if seed % 4 else (64, 64)
    labels = _simple_labels(rng, shape)
    expected = _fill_label_holes_one_by_one(labels)
    got = fill_label_holes(labels, simple=True)
    assert got.dtype == labels.dtype and np.array_equal(got, expected)
    changed = np.unique(expected[expected != labels])
    assert set(changed) <= set(enclosing_objects(labels))  # every id the fill wrote was a candidate
    if shape == (64, 64):
        assert len(changed)  # the rings enclose something: the fast path had work to do


def test_fill_label_holes_simple_on_a_ring_within_a_ring():
    from popseg_dask.segmenters.threshold import enclosing_objects, fill_label_holes

    yy, xx = np.mgrid[:41, :41]
    d = np.hypot(yy - 20, xx - 20)
    for outer, middle, core in ((1, 2, 3), (3, 2, 1), (2, 3, 1)):
        labels = np.zeros((41, 41), np.int32)
        labels[d < 18] = outer
        labels[d < 12] = middle
        labels[d < 5] = core
        # middle and core touch no background; every object touches one of them
        assert list(enclosing_objects(labels)) == [1, 2, 3]
        assert np.array_equal(fill_label_holes(labels, simple=True), _fill_label_holes_one_by_one(labels))
    free = np.zeros((20, 20), np.int32)
    free[2:8, 2:8], free[10:15, 3:9] = 1, 2  # nothing enclosed: nothing to fill, labels returned as they are
    assert len(enclosing_objects(free)) == 0
    assert np.array_equal(fill_label_holes(free, simple=True), free)


def test_fill_label_holes_matches_stardist_when_installed():
    stardist = pytest.importorskip("stardist", reason="the stardist extra is not installed")
    rng = np.random.default_rng(7)
    from popseg_dask.segmenters.threshold import fill_label_holes

    for _ in range(5):
        labels = _holey_labels(rng, (70, 90))
        assert np.array_equal(fill_label_holes(labels), stardist.fill_label_holes(labels))


@pytest.mark.parametrize("query", ["area < 30", "area >= 12 and label > 3", "label == 5 or area / 2 > 40",
                                   "not area < 5", "10 < area < 80"])
def test_queries_on_counts_remove_what_regionprops_would(query, tmp_path):
    """Queries that need only ``area`` and ``label`` are answered from pixel counts; they remove
    exactly the objects skimage's regionprops table makes them remove (Celldetective's way)."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops_table

    from popseg_dask.segmenters.base import WindowContext
    from popseg_dask.segmenters.query import parse_query

    seg = ThresholdSegmenter.from_config({"channel": "a", "thresholds": [0.5, 1.0], "feature_queries": [query]},
                                         BuildContext(("a",), tmp_path, "p"))
    rng = np.random.default_rng(len(query))
    removed = kept = 0
    for shape in ((90, 70), (1, 40), (5, 5)):
        labels, _ = ndi.label(ndi.gaussian_filter(rng.random(shape), 1.0) > 0.5)
        labels = (labels * 3).astype(np.int32)  # gaps in the ids
        table = regionprops_table(labels, properties=["label", "area"])
        gone = table["label"][parse_query(query).matches(table, len(table["label"]))]
        expected = np.where(np.isin(labels, gone), 0, labels)
        got = seg._remove_matching(labels, labels[None].astype(float), WindowContext.whole(shape))
        assert got.dtype == labels.dtype and np.array_equal(got, expected)
        removed, kept = removed + len(gone), kept + len(table["label"]) - len(gone)
    assert removed and kept  # the query had something to decide
