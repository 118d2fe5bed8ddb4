"""Edge cases of the id-numbering functions, one by one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popseg_dask.stitch import anchors_of, canonical_relabel, frame_offsets, label_dtype_for


def test_empty_frame_has_no_objects():
    out, n = canonical_relabel(np.zeros((5, 7), np.int32))
    assert n == 0 and out.dtype == np.uint32 and not out.any()


def test_ids_follow_raster_order_of_first_pixel():
    lab = np.zeros((6, 6), np.int32)
    lab[4:6, 0:2] = 7   # first pixel (4, 0)
    lab[0:2, 4:6] = 3   # first pixel (0, 4)
    lab[1:3, 1:2] = 9   # first pixel (1, 1)
    out, n = canonical_relabel(lab)
    assert n == 3
    assert out[0, 4] == 1 and out[1, 1] == 2 and out[4, 0] == 3


def test_anchor_is_first_pixel_even_for_concave_objects():
    lab = np.zeros((4, 6), np.int32)
    lab[0, 5] = 2          # object 2 starts on row 0 at the far right ...
    lab[1, 0:6] = 2        # ... and spans the next row
    lab[0, 2] = 1
    ids, anchors = anchors_of(lab)
    assert ids.tolist() == [1, 2]
    assert anchors.tolist() == [[0, 2], [0, 5]]


def test_huge_sparse_ids_are_compacted_not_tabulated():
    lab = np.zeros((3, 3), np.uint64)
    lab[0, 0] = 2**40      # a table indexed by this id would need terabytes
    lab[2, 2] = 5
    lab[1, 1] = 2**40
    out, n = canonical_relabel(lab)
    assert n == 2 and out[0, 0] == out[1, 1] == 1 and out[2, 2] == 2


def test_negative_and_float_labels_are_rejected():
    with pytest.raises(ValueError):
        canonical_relabel(np.array([[0, -1]]))
    with pytest.raises(TypeError):
        canonical_relabel(np.array([[0.0, 1.0]]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 12))
def test_relabel_is_invariant_to_the_segmenters_ids(seed, n):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n + 1, size=(16, 16))
    perm = np.concatenate([[0], rng.permutation(np.arange(1, n + 1)) * 3 + 11])
    a, na = canonical_relabel(lab)
    b, nb = canonical_relabel(perm[lab])
    assert na == nb == len(np.unique(lab[lab > 0]))
    np.testing.assert_array_equal(a, b)
    # same partition of pixels
    assert ((a > 0) == (lab > 0)).all()


def test_frame_offsets_prefix_sum():
    assert frame_offsets([3, 0, 2, 5]).tolist() == [0, 3, 3, 5]
    assert frame_offsets([]).tolist() == []
    with pytest.raises(ValueError):
        frame_offsets([1, -1])


def test_uint64_only_when_needed():
    assert label_dtype_for(2**32 - 1) == np.uint32
    assert label_dtype_for(2**32) == np.uint64
