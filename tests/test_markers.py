"""Watershed markers as a frame fact (popseg_dask.segmenters.markers): the tiles' candidates,
spaced once per frame, are exactly the whole frame's peaks; what cannot be certified falls back."""

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from popseg_dask._engine.frame import segment_frame
from popseg_dask._engine.worker import window_context
from popseg_dask.dense import DENSE_CONFIG, dense_movie
from popseg_dask.segmenters.markers import clamp_safe, core_candidates, greedy_spacing, local_maxima, search_box
from popseg_dask.segmenters.memo import WindowMemo, digest
from popseg_dask.segmenters.threshold import FrameFacts, ThresholdSegmenter, distance_to_background
from popseg_dask.stitch import canonical_relabel
from popseg_dask.tiling import tile_policy

DENSE = {**{k: v for k, v in DENSE_CONFIG["populations"]["nuclei"].items() if k != "segmenter"}, "channel": 0}


def _tiled_markers(seg, frame, tile):
    """The frame's markers as the engine reduces them, round by round, tile by tile."""
    seg, plan = tile_policy(seg, frame.shape[-2:], tile)
    aux = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(1, *frame.shape[-2:]), chunks=(1, *plan.tile),
                            dtype=np.int32, fill_value=0)
    stats = None
    for r in range(seg.tile_stats_rounds):
        parts = []
        for t in plan:
            y0, y1, x0, x1 = t.window
            ctx = window_context(t.window, frame.shape[-2:], aux if r else None, 0)
            part, core_aux = seg.tile_stats(frame[:, y0:y1, x0:x1], stats, ctx, t.core_in_window)
            if core_aux is not None:
                c = t.core
                aux[0, c[0]:c[1], c[2]:c[3]] = core_aux
            parts.append(part)
        stats = seg.reduce_tile_stats(parts, stats, plan)
    return stats


def _whole_frame_peaks(seg, frame):
    ctx = window_context((0, frame.shape[1], 0, frame.shape[2]), frame.shape[-2:])
    unfilled = seg._binary(frame, FrameFacts(), ctx, fill=False)
    whole = (slice(0, unfilled.shape[0]), slice(0, unfilled.shape[1]))
    stats = seg.reduce_tile_stats([seg._partial(unfilled, ctx, whole, holes=False)[0]], FrameFacts())
    binary = seg._fill(unfilled, stats, ctx) if seg.params.fill_holes else unfilled
    peaks = seg._peaks(distance_to_background(binary), binary, stats, ctx)
    return np.argwhere(peaks)


@pytest.mark.parametrize("fill", [True, False])
@pytest.mark.parametrize("tile", [96, 160])
def test_tiles_find_exactly_the_whole_frames_markers(fill, tile):
    frame = dense_movie(1, 384, seed=5, source="drawn")[0]
    seg = ThresholdSegmenter.from_config({**DENSE, "thresholds": [60, float("inf")], "fill_holes": fill}, ["0"])
    assert seg.tile_stats_rounds == (2 if fill else 1)
    stats = _tiled_markers(seg, frame, tile)
    assert not stats.whole, "a dense field of small nuclei must not fall back to the whole frame"
    ref = _whole_frame_peaks(seg, frame)
    assert len(ref) > 20
    got = stats.markers[np.lexsort((stats.markers[:, 1], stats.markers[:, 0]))]
    assert np.array_equal(got, ref)


def test_a_real_dense_field_needs_small_merges_and_no_fallback():
    """The tile benchmark's real field (DSB 2018 nuclei from StarDist's package data, at the
    density it claims): tiled == untiled, and merges cover the clumps a cut crosses, not the field."""
    pytest.importorskip("stardist", reason="the dsb2018 image ships with the stardist extra")
    frame = dense_movie(1, 1024, seed=3)[0]
    seg = ThresholdSegmenter.from_config(DENSE, ["0"])
    ref = canonical_relabel(seg(frame))[0]
    assert ref.max() >= 500, "at least 2 000 nuclei per 2048² frame, i.e. 500 per 1024²"
    for tile in (256, 512):
        got, info = segment_frame(seg, frame, tile=tile)
        assert np.array_equal(got, ref), info
        assert not info.whole_frame and info.largest_merge_px < 0.02 * frame[0].size, info


def test_objects_wider_than_the_padding_fall_back_to_the_whole_frame_exactly():
    """A blob whose distance map reaches past the window cannot be certified: the frame runs whole."""
    frame = dense_movie(1, 384, seed=1, source="drawn")[0].copy()
    yy, xx = np.mgrid[:384, :384]
    frame[0][(yy - 190) ** 2 + (xx - 190) ** 2 < 70 ** 2] = 400
    seg = ThresholdSegmenter.from_config({**DENSE, "thresholds": [60, float("inf")], "max_object_px": 10}, ["0"])
    ref = canonical_relabel(seg(frame))[0]
    got, info = segment_frame(seg, frame, tile=96)
    assert info.whole_frame and np.array_equal(got, ref)
    # padded for it, the same frame stays tiled
    seg = ThresholdSegmenter.from_config({**DENSE, "thresholds": [60, float("inf")], "max_object_px": 150}, ["0"])
    got, info = segment_frame(seg, frame, tile=128)
    assert not info.whole_frame and np.array_equal(got, ref)


def test_footprints_that_clamp_differently_run_whole_when_the_box_matters():
    assert clamp_safe(np.ones((9, 9))) and clamp_safe(np.ones((20, 20)))
    disc = np.hypot(*np.mgrid[-3:4, -3:4]) <= 3
    assert clamp_safe(disc) and clamp_safe(np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]))
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    assert not clamp_safe(ring)
    frame = np.full((1, 200, 200), 50, np.uint16)
    frame[0, 60:90, 60:100] = 300          # the foreground's box is far from the largest search box
    frame[0, 120:150, 110:160] = 300
    seg = ThresholdSegmenter.from_config({**DENSE, "thresholds": [100, float("inf")], "marker_footprint": ring.astype(int).tolist()}, ["0"])
    ref = canonical_relabel(seg(frame))[0]
    got, info = segment_frame(seg, frame, tile=64)
    assert info.whole_frame and np.array_equal(got, ref)


def _candidates_by_definition(distance, binary, ctx, core, footprint, min_distance, filter_reach):
    """core_candidates' rule computed over the whole window: every pixel's depth to a cut and
    need, the footprint minimum of exactness everywhere (what it computes only near the cuts)."""
    (Y, X), (oy, ox) = ctx.frame_shape, ctx.origin
    H, W = binary.shape
    b0, b1, c0, c1 = search_box((Y, X), min_distance)
    y0, y1, x0, x1 = max(b0 - oy, 0), min(b1 - oy, H), max(c0 - ox, 0), min(c1 - ox, W)
    cy, cx = core
    k = (slice(max(cy.start, y0) - y0, min(cy.stop, y1) - y0), slice(max(cx.start, x0) - x0, min(cx.stop, x1) - x0))
    img, mask = distance[y0:y1, x0:x1], binary[y0:y1, x0:x1]
    out = local_maxima(img, mask, footprint)
    rows, cols = np.mgrid[:H, :W]
    top, bottom, left, right = ctx.artificial
    big = H + W
    cut = np.minimum.reduce([rows if top else np.full((H, W), big), H - 1 - rows if bottom else np.full((H, W), big),
                             cols if left else np.full((H, W), big), W - 1 - cols if right else np.full((H, W), big)])
    need = np.where(mask, filter_reach + 2 + np.ceil(img).astype(np.int64), filter_reach)
    exact = (cut[y0:y1, x0:x1] >= need).view(np.uint8)
    certified = ndi.minimum_filter(exact, footprint=footprint, mode="nearest") > 0
    ys, xs = np.nonzero(out[k])
    flat = (ys + k[0].start + y0 + oy) * X + (xs + k[1].start + x0 + ox)
    return flat, img[k][out[k]], bool((mask[k] & ~certified[k]).any())


def test_core_candidates_near_the_cuts_equal_the_definition_over_the_window():
    """Candidates and the 'uncertain' verdict, looked at only where they can change (the core
    and its rim, strips along the cuts), are those of the whole window, for any window
    placement, footprint (odd, even, not square) and object sizes."""
    verdicts = []
    for seed in range(90):
        rng = np.random.default_rng(seed)
        Y, X = 300, 260
        frame = ndi.gaussian_filter(rng.normal(size=(Y, X)), rng.uniform(2, 8)) > rng.uniform(0, 0.05)
        fp = np.ones((int(rng.integers(1, 12)), int(rng.integers(1, 12))))
        wy0, wx0 = int(rng.integers(0, 120)), int(rng.integers(0, 100))
        wy1, wx1 = min(Y, wy0 + int(rng.integers(40, 200))), min(X, wx0 + int(rng.integers(40, 200)))
        ctx = window_context((wy0, wy1, wx0, wx1), (Y, X))
        binary = frame[wy0:wy1, wx0:wx1]
        distance = distance_to_background(binary)
        min_distance, reach = int(rng.integers(1, 8)), int(rng.integers(0, 6))
        # most cores end about where certainty does (a mask pixel's need plus the footprint's
        # reach from the cut): where a narrower look would go wrong
        deepest = reach + 2 + int(np.ceil(distance.max())) + max(fp.shape) // 2
        pad = int(rng.integers(0, 30)) if seed % 3 == 0 else max(0, deepest + int(rng.integers(-6, 3)))
        core = (slice(min(pad, wy1 - wy0 - 1), max(wy1 - wy0 - pad, pad + 1)),
                slice(min(pad, wx1 - wx0 - 1), max(wx1 - wx0 - pad, pad + 1)))
        got = core_candidates(distance, binary, ctx, core, fp, min_distance, reach)
        flat, values, uncertain = _candidates_by_definition(distance, binary, ctx, core, fp, min_distance, reach)
        assert np.array_equal(got["flat"], flat) and np.array_equal(got["values"], values), seed
        assert got["uncertain"] == uncertain, seed
        verdicts.append(uncertain)
    assert 10 <= sum(verdicts) <= 80, "both verdicts are exercised"


def test_greedy_spacing_keeps_in_order_and_spaces():
    pts = np.array([[0, 0], [0, 3], [0, 6], [10, 10], [10, 12]])
    assert greedy_spacing(pts, 4).tolist() == [[0, 0], [0, 6], [10, 10]]
    # a chain: the second suppresses nothing once the first has suppressed it
    assert greedy_spacing(np.array([[0, 3], [0, 0], [0, 6]]), 4).tolist() == [[0, 3]]


def test_window_memo_is_bounded_read_only_and_keyed_by_content():
    memo = WindowMemo(max_bytes=4 * 800)
    a = np.arange(100, dtype=np.int64)
    k = digest(a, (0, 0))
    first = memo.get(k, lambda: a * 2)
    assert not first.flags.writeable
    assert memo.get(k, lambda: pytest.fail("a hit must not recompute")) is first
    assert digest(a, (0, 1)) != k and digest(a + 1, (0, 0)) != k
    for i in range(8):  # 800 bytes each: the oldest are evicted
        memo.get(digest(i), lambda: np.zeros(100))
    calls = []
    memo.get(k, lambda: calls.append(1) or a * 2)
    assert calls == [1]


def test_a_run_says_which_population_fell_back_and_what_keeps_it_tiled(tmp_path, client2):
    """A real run on 2 workers: frames with objects wider than the padding are segmented whole,
    counted in the record, equal to the untiled run, and the run names the key to raise."""
    from conftest import read_labels

    from popseg_dask.config import parse_config
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.pipeline import run

    movie = dense_movie(2, 384, seed=1, source="drawn").copy()
    yy, xx = np.mgrid[:384, :384]
    movie[1, 0][(yy - 190) ** 2 + (xx - 190) ** 2 < 70 ** 2] = 400   # frame 1 only
    write_ome_zarr_image(tmp_path / "m.ome.zarr", movie, ("nuclei",), pixel_size_um=0.5)
    pop = {**DENSE, "segmenter": "threshold", "channel": "nuclei", "thresholds": [60, float("inf")],
           "max_object_px": 30}
    said: list[str] = []
    recs = {}
    for tile in (96, "none"):
        cfg = parse_config({"input": "m.ome.zarr", "output": f"out-{tile}.zarr",
                            "populations": {"nuclei": {**pop, "tile": tile}}}, tmp_path)
        recs[tile] = run(cfg, client=client2, echo=said.append)
    assert recs[96]["populations"]["nuclei"]["whole_frame_fallbacks"] == 1
    hint = [m for m in said if "segmented whole" in m]
    assert len(hint) == 1 and "population nuclei: 1 frame(s)" in hint[0] and "max_object_px" in hint[0]
    assert np.array_equal(read_labels(tmp_path / "out-96.zarr", "nuclei"), read_labels(tmp_path / "out-none.zarr", "nuclei"))


@pytest.mark.parametrize("ties", ["celldetective", "local"])
@pytest.mark.parametrize("tile", [None, 96])
def test_watershed_labels_meet_the_hole_fill_shortcuts_guarantees(ties, tile, monkeypatch):
    """The segmenter fills label holes with ``simple=True``, trusting that a watershed of a
    hole-filled mask has objects in one piece and open background, in whole frames and in tile
    windows (where the frame's holes are filled). Each call is checked against the full loop."""
    from popseg_dask.segmenters import threshold

    loop = threshold.fill_label_holes
    seen = []

    def checked(labels, *, simple=False):
        got = loop(labels, simple=simple)
        assert simple and np.array_equal(got, loop(labels))
        seen.append(len(threshold.enclosing_objects(labels)))
        return got

    monkeypatch.setattr(threshold, "fill_label_holes", checked)
    rng = np.random.default_rng(11)
    frame = dense_movie(1, 384, seed=5, source="drawn")[0].astype(np.float64)
    # dark pits inside the nuclei: holes in the mask for the fill to close
    pits = ndi.binary_dilation(rng.random(frame.shape[1:]) < 0.002, iterations=2)
    frame[0][pits] = 0
    seg = ThresholdSegmenter.from_config({**DENSE, "thresholds": [60, float("inf")], "watershed_ties": ties}, ["0"])
    labels, _ = segment_frame(seg, frame, tile=tile)
    # Celldetective's ties are not tile-exact: such a population runs whole whatever the tile
    assert labels.max() > 20 and len(seen) >= (4 if tile and ties == "local" else 1)
