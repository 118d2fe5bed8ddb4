"""What makes model segmenters tileable, edge case by edge case (no network needed)."""

from __future__ import annotations

import numpy as np
import pytest

from popseg_dask.normalize import ChannelScaling, apply_scaling, scaling_from_pixels
from popseg_dask.segmenters.model import _to_model_grid
from popseg_dask.tiling import plan_tiles


@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0, 0.65 / 0.3, 0.8])
@pytest.mark.parametrize("align", [1, 8, 16])
def test_windows_resample_onto_one_global_grid(scale, align):
    """Any window, resampled, equals the matching part of the whole frame resampled: overlapping
    windows feed a network identical pixels, away from their edges."""
    rng = np.random.default_rng(1)
    frame = rng.random((2, 250, 270)).astype(np.float32)
    whole, back_whole = _to_model_grid(frame, (0, 0), scale, align)
    for origin in [(0, 0), (37, 0), (0, 53), (64, 96), (101, 7), (170, 180)]:
        oy, ox = origin
        win = frame[:, oy:oy + 80, ox:ox + 90]
        img, back = _to_model_grid(win, origin, scale, align)
        zy0 = int(np.ceil(oy * scale - 1e-9))
        zx0 = int(np.ceil(ox * scale - 1e-9))
        zy0 = -(-zy0 // align) * align if oy else 0
        zx0 = -(-zx0 // align) * align if ox else 0
        assert zy0 % align == 0 and zx0 % align == 0
        inner = whole[:, zy0:zy0 + img.shape[1], zx0:zx0 + img.shape[2]]
        # interpolation reads up to 2 px around each sample: compare away from the window's own edges
        m = int(np.ceil(2 * scale)) + 1
        np.testing.assert_allclose(img[:, m:-m, m:-m], inner[:, m:-m, m:-m], rtol=0, atol=1e-5)
        # labels drawn on the global model grid map back to the same frame pixels from any window
        glob = np.arange(whole.shape[1] * whole.shape[2]).reshape(whole.shape[1:]) + 1
        part = glob[zy0:zy0 + img.shape[1], zx0:zx0 + img.shape[2]]
        got = back(part)
        want = back_whole(glob)[oy:oy + 80, ox:ox + 90]
        covered = got > 0
        assert covered.mean() > 0.4  # the start snaps to the grid: up to align / scale px are dropped
        assert (back_whole(glob) > 0).all()  # every frame pixel has its model pixel
        if (oy, ox) == (170, 180):  # a window on the frame's far edges keeps them
            for edge in (covered[-1], covered[:, -1]):  # covered from the snapped start to the end
                assert edge.any() and edge[np.argmax(edge):].all()
        assert np.array_equal(got[covered], want[covered])


def test_scaling_uses_the_whole_frame_not_the_tile():
    rng = np.random.default_rng(0)
    frame = rng.normal(100, 10, (1, 64, 64))
    frame[0, :8, :8] = 1000  # a bright corner only one tile sees
    s = [ChannelScaling("percentile", 1, 99.8, False)]
    lohi = scaling_from_pixels(frame, s)
    tiles = [apply_scaling(frame[:, y:y + 32, x:x + 32], lohi, s) for y in (0, 32) for x in (0, 32)]
    whole = apply_scaling(frame, lohi, s)
    assert np.array_equal(np.block([[tiles[0][0], tiles[1][0]], [tiles[2][0], tiles[3][0]]]), whole[0])


def test_scaling_edge_cases():
    s = ChannelScaling("percentile", 0, 100, True)
    frame = np.zeros((3, 8, 8), np.uint16)
    frame[1] = 7  # constant channel
    frame[2, 0, 0] = 10
    frame = frame.astype(float)
    frame[2, 1, 1] = np.nan
    lohi = scaling_from_pixels(frame, [s, s, s])
    assert np.isnan(lohi[0]).all()  # all zero: left at zero
    out = apply_scaling(frame, lohi, [s, s, s])
    assert not np.isnan(out).any() and (out[0] == 0).all()
    assert (out[1] == 0).all()  # constant: (x - lo) / eps clipped, no inf
    a = ChannelScaling("absolute", 0, 20, False)
    assert np.allclose(apply_scaling(frame[2:], scaling_from_pixels(frame[2:], [a]), [a])[0, 0, 0], 0.5)


@pytest.mark.parametrize("align", [1, 8, 16])
def test_tile_plans_start_windows_on_the_network_grid(align):
    plan = plan_tiles((1000, 777), 100, 45, align=align)
    assert plan.halo % align == 0 and plan.halo >= 45
    for t in plan:
        assert t.window[0] % align == 0 and t.window[2] % align == 0
    clamped = plan_tiles((1000, 777), 64, 200, align=align, clamp_halo=True)
    assert clamped.halo < 64 and clamped.halo % align == 0
