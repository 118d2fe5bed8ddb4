"""popseg_dask.segmenters.rowfilters: scipy's Gaussian and uniform filters, bit for bit."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from popseg_dask.segmenters import rowfilters


def _image(rng, shape):
    img = rng.random(shape) * 4000 - 200
    img[rng.random(shape) < 0.01] = 0
    return img.round(int(rng.integers(0, 4)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sigma", [0.7, 1, 1.5, 2, 3.3, 6])
def test_gaussian_filter_is_scipys_bit_for_bit(seed, sigma):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(40, 300)), int(rng.integers(1, 200)))  # taller and shorter than a row block
    img = _image(rng, shape)
    assert np.array_equal(rowfilters.gaussian_filter(img, sigma), ndi.gaussian_filter(img, sigma))
    assert np.array_equal(rowfilters.gaussian_filter(img, sigma, truncate=2.5), ndi.gaussian_filter(img, sigma, truncate=2.5))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9, 16])
@pytest.mark.parametrize("mode", ["wrap", "reflect", "nearest", "mirror"])
def test_uniform_filter_is_scipys_bit_for_bit(seed, size, mode):
    rng = np.random.default_rng(seed)
    img = _image(rng, (int(rng.integers(20, 200)), int(rng.integers(1, 90))))
    for x in (img, img ** 2):  # the std filter's two moments
        assert np.array_equal(rowfilters.uniform_filter(x, size, mode), ndi.uniform_filter(x, size, mode=mode))


def test_what_the_fast_pass_does_not_cover_is_scipys():
    rng = np.random.default_rng(3)
    img = _image(rng, (50, 40))
    nan = img.copy()
    nan[5, 5], nan[30, 7] = np.nan, np.inf
    cases = [
        (img[:6], 2), (img[:1], 1.5),               # columns shorter than the kernel
        (img.astype(np.float32), 2),                # another dtype
        (img, [1.0, 2.0]), (img, 0.0),              # a sigma per axis; no smoothing at all
        (nan, 1.5),                                 # NaN and inf spread as scipy spreads them
        (img[::2, ::3], 1.2),                       # a strided view
    ]
    for x, sigma in cases:
        assert np.array_equal(rowfilters.gaussian_filter(x, sigma), ndi.gaussian_filter(x, sigma), equal_nan=True)
    for x, size in ((img[:3], 4), (img.astype(np.float32), 3), (img, (3, 5)), (nan, 4)):
        assert np.array_equal(rowfilters.uniform_filter(x, size, "wrap"), ndi.uniform_filter(x, size, mode="wrap"),
                              equal_nan=True)


def test_arithmetic_that_differs_from_scipys_is_not_used(monkeypatch):
    """The self-check at first use: a row pass that rounds differently (the running sum scaled
    by 1/size, as another scipy might) is caught, and scipy's result comes back instead."""
    def scaled(img, size, mode):
        out = rowfilters.ndi.uniform_filter1d(img, size, axis=0, mode=mode)
        return out * (1 + 1e-15) if size == 5 else out

    rowfilters._uniform_ok.cache_clear()
    monkeypatch.setattr(rowfilters, "_running_mean_rows", scaled)
    try:
        img = _image(np.random.default_rng(0), (80, 60))
        assert not rowfilters._uniform_ok(5, "wrap")
        assert np.array_equal(rowfilters.uniform_filter(img, 5, "wrap"), ndi.uniform_filter(img, 5, mode="wrap"))
        assert rowfilters._uniform_ok(4, "wrap")
    finally:
        rowfilters._uniform_ok.cache_clear()
