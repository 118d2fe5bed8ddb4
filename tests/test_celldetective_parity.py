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
