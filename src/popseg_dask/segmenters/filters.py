"""Celldetective's pre-segmentation filters, re-implemented with the same semantics.

Each filter is written ``[name, arg1, arg2, ...]`` in a config, exactly as in a
Celldetective threshold config; positional arguments bind to the parameters listed in
:data:`FILTERS` in order. Behaviour deliberately follows Celldetective 1.6.5, quirks
included, so that the same config gives the same masks:

* dtypes flow as there: ``median`` and ``abs`` keep integer images integer, ``ln``
  truncates logs of an integer image, ``multiotsu`` thresholds the unconverted image;
* ``variance``/``std`` use wrap-around windows at the frame edge;
* ``dog`` and ``log`` take ``blob_size`` first (``log``'s blob size is then unused);
* ``local``, ``niblack``, ``sauvola``, ``otsu``, ``abs`` and ``laplace`` take no
  arguments there; extra arguments are ignored, as there, with a warning;
* NaN pixels are filled by nearest-neighbour interpolation before most filters.

The edge width that Celldetective masks after filtering (``edge_width``) is the sum of
the *integer* first arguments of the filters, ``invert`` excluded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from scipy import ndimage as ndi

from . import rowfilters

log = logging.getLogger(__name__)

__all__ = ["FILTERS", "FilterSpec", "validate_filters", "apply_filters", "edge_width", "interpolate_nan"]

_REQUIRED = object()


def interpolate_nan(img: np.ndarray) -> np.ndarray:
    """Fill NaN pixels with the value of the nearest valid pixel (whole image)."""
    from scipy.interpolate import griddata

    if np.all(img == 0):
        return img
    nan = img != img
    if not nan.any():
        return img
    yy, xx = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    valid = ~nan
    points = np.stack([xx[valid], yy[valid]], axis=1)
    return griddata(points, img[valid], (xx, yy), method="nearest")


def _fix_nan(img: np.ndarray, interpolate: Any) -> np.ndarray:
    if interpolate and np.any(img != img):
        return interpolate_nan(img.astype(float))
    return img


def _gauss(img, sigma, interpolate=True):
    return rowfilters.gaussian_filter(_fix_nan(img, interpolate).astype(float), sigma)


def _median(img, size, interpolate=True):
    return ndi.median_filter(_fix_nan(img, interpolate), int(size))


def _maximum(img, size, interpolate=True):
    return ndi.maximum_filter(_fix_nan(img, interpolate).astype(float), size)


def _minimum(img, size, interpolate=True):
    return ndi.minimum_filter(_fix_nan(img, interpolate).astype(float), size)


def _percentile(img, percentile, size, interpolate=True):
    return ndi.percentile_filter(_fix_nan(img, interpolate).astype(float), percentile, size)


def _subtract(img, value):
    return img.astype(float) - value


def _abs(img):
    return np.abs(img)


def _ln(img, interpolate=True):
    img = _fix_nan(img, interpolate).copy()
    # Two passes on purpose: values in (0, 1] have a non-positive log and are zeroed by the second.
    pos = img > 0.0
    img[pos] = np.log(img[pos])
    img[img <= 0.0] = 0.0
    return img


def _window_moments(img, size):
    img = img.astype(float)
    mean = rowfilters.uniform_filter(img, size, mode="wrap")
    sqr = rowfilters.uniform_filter(img**2, size, mode="wrap")
    return mean, sqr


def _variance(img, size, interpolate=True):
    mean, sqr = _window_moments(_fix_nan(img, interpolate), int(size))
    return sqr - mean**2


def _std(img, size, interpolate=True):
    mean, sqr = _window_moments(_fix_nan(img, interpolate), int(size))
    sqr[sqr <= 0.0] = 0.0
    var = np.subtract(sqr, mean**2)
    var[var <= 0.0] = 0.0
    return np.sqrt(var)


def _laplace(img, output=float, interpolate=True):
    return ndi.laplace(_fix_nan(img, interpolate).astype(float))


def _dog(img, blob_size=None, sigma_low=1, sigma_high=2, interpolate=True):
    from skimage.filters import difference_of_gaussians

    img = _fix_nan(img, interpolate)
    if blob_size is not None:
        sigma_low = 1.0 / (1.0 + np.sqrt(2)) * blob_size
        sigma_high = np.sqrt(2) * sigma_low
    return difference_of_gaussians(img.astype(float), sigma_low, sigma_high)


def _log(img, blob_size=None, sigma=1, interpolate=True):
    return ndi.gaussian_laplace(_fix_nan(img, interpolate).astype(float), sigma)


def _tophat(img, size, connectivity=4, interpolate=True):
    structure = ndi.generate_binary_structure(rank=2, connectivity=connectivity)
    return ndi.white_tophat(_fix_nan(img, interpolate).astype(float), structure=structure, size=size)


def _invert(img, value=65535):
    img = img.astype(float)
    fill = np.full_like(img, value)
    # NaN pixels stay NaN (Celldetective leaves them uninitialised).
    return np.subtract(fill, img, out=img.copy(), where=img == img)


def _otsu_threshold(img):
    from skimage.filters import threshold_otsu

    return threshold_otsu(img.astype(float))


def _otsu(img, *, _frame=None):
    thresh = _otsu_threshold(img) if _frame is None else _frame
    return (img >= thresh).astype(float)


def _multiotsu_thresholds(img, classes=3):
    from skimage.filters import threshold_multiotsu

    return threshold_multiotsu(img, classes=classes)


def _multiotsu(img, classes=3, *, _frame=None):
    bins = _multiotsu_thresholds(img, classes) if _frame is None else _frame
    return np.digitize(img, bins=bins).astype(float)


def _local(img):
    from skimage.filters import threshold_local

    return (img >= threshold_local(img.astype(float))).astype(float)


def _niblack(img):
    from skimage.filters import threshold_niblack

    return (img >= threshold_niblack(img)).astype(float)


def _sauvola(img):
    from skimage.filters import threshold_sauvola

    return (img >= threshold_sauvola(img)).astype(float)


@dataclass(frozen=True)
class FilterSpec:
    """A filter: its function and its positional parameters (name, default)."""

    func: Callable[..., np.ndarray]
    params: tuple[tuple[str, Any], ...]
    doc: str

    @property
    def n_required(self) -> int:
        return sum(1 for _, d in self.params if d is _REQUIRED)


def _spec(func, doc, *params):
    return FilterSpec(func, tuple((p, _REQUIRED) if isinstance(p, str) else p for p in params), doc)


_I = ("interpolate", True)
FILTERS: dict[str, FilterSpec] = {
    "gauss": _spec(_gauss, "Gaussian blur", "sigma", _I),
    "median": _spec(_median, "median filter (keeps the dtype)", "size", _I),
    "maximum": _spec(_maximum, "maximum filter", "size", _I),
    "minimum": _spec(_minimum, "minimum filter", "size", _I),
    "percentile": _spec(_percentile, "percentile filter", "percentile", "size", _I),
    "variance": _spec(_variance, "local variance, wrap-around edges", "size", _I),
    "std": _spec(_std, "local standard deviation, wrap-around edges", "size", _I),
    "laplace": _spec(_laplace, "Laplacian", ("output", None), _I),
    "dog": _spec(_dog, "difference of Gaussians", ("blob_size", None), ("sigma_low", 1), ("sigma_high", 2), _I),
    "log": _spec(_log, "Laplacian of Gaussian", ("blob_size", None), ("sigma", 1), _I),
    "tophat": _spec(_tophat, "white top-hat", "size", ("connectivity", 4), _I),
    "subtract": _spec(_subtract, "subtract a constant", "value"),
    "abs": _spec(_abs, "absolute value"),
    "ln": _spec(_ln, "natural log of positive pixels, 0 elsewhere", _I),
    "invert": _spec(_invert, "value minus image", ("value", 65535)),
    "otsu": _spec(_otsu, "binary mask above the Otsu threshold of the frame"),
    "multiotsu": _spec(_multiotsu, "class index from multi-Otsu thresholds of the frame", ("classes", 3)),
    "local": _spec(_local, "binary mask above a local (Gaussian, 3 px) threshold"),
    "niblack": _spec(_niblack, "binary mask above Niblack's threshold (15 px window)"),
    "sauvola": _spec(_sauvola, "binary mask above Sauvola's threshold (15 px window)"),
}


def validate_filters(filters: Any) -> list[list[Any]]:
    """Check a filter list; return it as lists ``[name, *args]``.

    Raises
    ------
    ValueError
        For an unknown filter name, a missing required argument or a non-numeric argument.
    """
    if filters is None:
        return []
    if not isinstance(filters, (list, tuple)):
        raise ValueError(f"filters must be a list like [[gauss, 2], [std, 4]], got {filters!r}")
    out = []
    for f in filters:
        if isinstance(f, str):
            f = [f]
        if not isinstance(f, (list, tuple)) or not f or not isinstance(f[0], str):
            raise ValueError(f"each filter must be [name, args...], got {f!r}")
        name, args = f[0], list(f[1:])
        spec = FILTERS.get(name.removesuffix("_filter"))
        if spec is None:
            raise ValueError(f"unknown filter {name!r}; known filters: {', '.join(FILTERS)}")
        if len(args) < spec.n_required:
            need = ", ".join(p for p, d in spec.params if d is _REQUIRED)
            raise ValueError(f"filter {name!r} needs {spec.n_required} argument(s) ({need}), got {args}")
        for a in args[: len(spec.params)]:  # extra arguments are ignored, as in Celldetective
            if a is not None and not isinstance(a, (int, float, bool)):
                raise ValueError(f"filter {name!r}: arguments must be numbers, got {a!r}")
        out.append([name.removesuffix("_filter"), *args])
    return out


# Filters whose parameters come from the whole frame (computed once per frame, then given to tiles).
FRAME_GLOBAL = {"otsu": _otsu_threshold, "multiotsu": _multiotsu_thresholds}
# Filters computed with running sums (scipy's uniform filter, skimage's integral images): their
# rounding depends on a pixel's position in the frame, so a tile cannot reproduce them bit for bit.
POSITION_DEPENDENT = frozenset({"variance", "std", "niblack", "sauvola"})


def _bound_args(name: str, args: list) -> list:
    spec = FILTERS[name]
    if len(args) > len(spec.params):
        log.warning("filter %s: arguments %s beyond %s are ignored (as in Celldetective)",
                    name, args[len(spec.params):], [p for p, _ in spec.params])
        args = args[: len(spec.params)]
    return args


def apply_filters(img: np.ndarray, filters: list[list[Any]], frame_params: dict[int, Any] | None = None
                  ) -> np.ndarray:
    """Apply filters in order; the input array is never modified.

    ``frame_params`` maps the index of a frame-global filter (Otsu, multi-Otsu) to its
    thresholds computed on the whole frame (:func:`frame_filter_params`); without it they are
    computed on ``img`` itself, which is right only when ``img`` is the whole frame.
    """
    for k, (name, *args) in enumerate(filters):
        args = _bound_args(name, args)
        if frame_params is not None and k in frame_params:
            img = FILTERS[name].func(img, *args, _frame=frame_params[k])
        else:
            img = FILTERS[name].func(img, *args)
    return img


def frame_filter_params(img: np.ndarray, filters: list[list[Any]]) -> dict[int, Any]:
    """Thresholds of the frame-global filters of a chain, computed on the whole frame."""
    out: dict[int, Any] = {}
    last = max((k for k, (name, *_) in enumerate(filters) if name in FRAME_GLOBAL), default=-1)
    for k, (name, *args) in enumerate(filters[: last + 1]):
        args = _bound_args(name, args)
        if name in FRAME_GLOBAL:
            out[k] = FRAME_GLOBAL[name](img, *args)
            img = FILTERS[name].func(img, *args, _frame=out[k])
        else:
            img = FILTERS[name].func(img, *args)
    return out


def _gauss_radius(sigma) -> int:
    return int(max(np.atleast_1d(np.asarray(sigma, dtype=float))) * 4.0 + 0.5)


def filter_reach(name: str, args: list) -> int:
    """Pixels of input beyond which a filter's output at a pixel cannot depend."""
    args = list(args) + [None] * 4
    half = lambda v: int(np.ceil(float(v))) // 2 + 1  # noqa: E731 - windows, rounded up, even sizes
    if name == "gauss":
        return _gauss_radius(args[0])
    if name in ("median", "maximum", "minimum", "variance", "std"):
        return half(args[0])
    if name == "percentile":
        return half(args[1])
    if name == "laplace":
        return 1
    if name == "dog":
        blob, lo, hi = args[0], args[1] if args[1] is not None else 1, args[2] if args[2] is not None else 2
        if blob is not None:
            hi = np.sqrt(2) / (1.0 + np.sqrt(2)) * blob
        return _gauss_radius(max(lo, hi))
    if name == "log":
        return _gauss_radius(args[1] if args[1] is not None else 1) + 1
    if name == "tophat":
        return 2
    if name == "local":
        return 2
    if name in ("niblack", "sauvola"):
        return 8
    return 0


def filter_support(filters: list[list[Any]]) -> int:
    """Reach of a whole chain: the sum of its filters' reaches."""
    return sum(filter_reach(name, args) for name, *args in filters)


def edge_width(filters: list[list[Any]]) -> int | None:
    """Width of the frame border Celldetective treats as unreliable after these filters.

    The sum of each filter's first argument when it is an ``int`` (not a float; a bool
    counts, as in Python), ``invert`` excluded; None without filters.
    """
    if not filters:
        return None
    edge = 0
    for name, *args in filters:
        if args and isinstance(args[0], (int, np.integer)) and name != "invert":
            edge += int(args[0])
    return edge
