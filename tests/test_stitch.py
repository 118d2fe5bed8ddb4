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


# --------------------------------------------------------------------------- the resolution algorithm
#
# In the manner of StarDist's test_big.py: a stub segmenter whose exact behaviour is known (8-connected
# components of the foreground, optionally dilated to couple neighbours), the numpy-only algorithm of
# popseg_dask.stitch driven by hand over a tile plan, and the result compared with the whole frame.

from popseg_dask.segmenters import WindowContext  # noqa: E402
from popseg_dask.stitch import (complete_frame, number_from_provisional, provisional_dtype,  # noqa: E402
                                resolvable_by_others, resolve_tile)
from popseg_dask.tiling import plan_tiles  # noqa: E402


class Components:
    """8-connected components of ``image > 0``: exact for clusters 1 px from every cut."""

    name = "components"
    halo, link, objects_independent = 1, 1, False

    def __init__(self, vote: bool = False):
        self.vote, self.calls = vote, []

    def segment_window(self, block, stats, ctx):
        from scipy import ndimage as ndi

        self.calls.append(block.shape[-2:])
        labels = ndi.label(block[0] > 0, structure=np.ones((3, 3)))[0]
        return labels, labels > 0, self.vote and not ctx.is_whole_frame


class Canvas:
    def __init__(self, shape, dtype):
        self.a = np.zeros(shape, dtype)

    def read(self, w):
        return self.a[w[0]:w[1], w[2]:w[3]].copy()

    def write(self, w, v):
        self.a[w[0]:w[1], w[2]:w[3]] = v


def context(window, frame_shape):
    y0, y1, x0, x1 = window
    return WindowContext(frame_shape, (y0, x0), (y0 > 0, y1 < frame_shape[0], x0 > 0, x1 < frame_shape[1]))


def stitch_by_hand(seg, image, tile, halo):
    """Every tile, then the merge, then numbering: what a run does for one frame, without Dask."""
    shape = image.shape[-2:]
    plan = plan_tiles(shape, tile, halo)
    dtype = provisional_dtype(shape)
    canvas = Canvas(shape, dtype)
    results = []
    for t in plan:
        y0, y1, x0, x1 = t.window
        core, res = resolve_tile(seg, image[:, y0:y1, x0:x1], None, context(t.window, shape), t, plan, dtype)
        canvas.write(t.core, core)
        results.append(res)
    frame = complete_frame(seg, lambda w: image[:, w[0]:w[1], w[2]:w[3]], lambda w: context(w, shape), None, results,
                           canvas, plan, dtype)
    return number_from_provisional(canvas.a, frame.anchors, 0), frame.info, results


def whole(image):
    from scipy import ndimage as ndi

    return canonical_relabel(ndi.label(image[0] > 0, structure=np.ones((3, 3)))[0])[0]


def blank(shape=(64, 64)):
    return np.zeros((1, *shape), np.uint8)


def test_objects_inside_cores_need_no_merge():
    img = blank()
    img[0, 3:6, 3:6] = img[0, 40:44, 40:44] = img[0, 5:8, 50:54] = 1
    got, info, results = stitch_by_hand(Components(), img, 32, 8)
    assert np.array_equal(got, whole(img)) and info.regions == 0 and info.count == 3
    assert sum(len(r.unresolved) for r in results) == 0


def test_object_cut_by_a_core_but_within_the_halo_is_resolved_by_a_tile():
    img = blank()
    img[0, 28:36, 10:14] = 1  # crosses the cut at y=32, 4 px each side; halo 8 sees it whole
    got, info, results = stitch_by_hand(Components(), img, 32, 8)
    assert np.array_equal(got, whole(img)) and info.regions == 0
    # both tiles above and below resolve it: each keeps it (same provisional id), nothing to re-segment
    assert sum(len(r.anchors) for r in results) == 2 and info.count == 1


def test_object_larger_than_the_halo_is_re_segmented_in_a_grown_window():
    img = blank((96, 96))
    img[0, 40:44, 2:94] = 1  # a bar across three tiles, far longer than the halo
    seg = Components()
    got, info, results = stitch_by_hand(seg, img, 32, 4)
    assert np.array_equal(got, whole(img))
    assert info.regions == 1 and sum(len(r.unresolved) for r in results) == 3
    # the merge window covers the group and its halo, not the whole frame
    assert not info.whole_frame and max(h * w for h, w in seg.calls) < 96 * 96


def test_a_chain_across_the_whole_frame_falls_back_to_the_frame_and_stays_exact():
    img = blank((64, 64))
    img[0, 1:63, 1:63] = np.eye(62, dtype=np.uint8)  # one diagonal object, corner to corner
    got, info, _ = stitch_by_hand(Components(), img, 16, 2)
    assert np.array_equal(got, whole(img)) and info.whole_frame and info.count == 1


def test_every_tile_voting_for_the_whole_frame_segments_it_whole():
    img = blank()
    img[0, 3:6, 3:6] = 1
    got, info, _ = stitch_by_hand(Components(vote=True), img, 32, 8)
    assert info.whole_frame and info.regions == 1 and np.array_equal(got, whole(img))


def test_touching_objects_of_an_independent_segmenter_do_not_chain():
    class Independent(Components):
        objects_independent = True

        def segment_window(self, block, stats, ctx):
            # two touching squares told apart by value, as a network tells touching cells apart
            from scipy import ndimage as ndi

            labels = np.zeros(block.shape[-2:], np.int32)
            for v in (1, 2):
                lab, n = ndi.label(block[0] == v)
                labels[lab > 0] = lab[lab > 0] + labels.max()
            return labels, labels > 0, False

    img = blank()
    img[0, 10:20, 28:32] = 1
    img[0, 10:20, 32:36] = 2  # touches the first across the cut at x=32
    got, info, results = stitch_by_hand(Independent(), img, 32, 8)
    assert info.regions == 0 and info.count == 2 and len(np.unique(got)) == 3
    assert sum(len(r.unresolved) for r in results) == 0


def test_resolvable_by_others_sees_the_neighbours_margins():
    plan = plan_tiles((64, 64), 32, 8)
    tiles = list(plan)
    # a box just below the cut, well inside the lower tile's window: the lower tile resolves it
    assert resolvable_by_others((33, 36, 4, 8), tiles[0], plan, 2)
    # a box reaching past the lower tile's window margin upwards cannot be resolved there
    assert not resolvable_by_others((20, 40, 4, 8), tiles[0], plan, 2)


def test_stitch_depends_on_numpy_and_scipy_only():
    import ast
    from pathlib import Path

    import popseg_dask.stitch as stitch

    for path in Path(stitch.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in {"numpy", "scipy", "time", "dataclasses", "typing", "__future__"}, (path, m)
