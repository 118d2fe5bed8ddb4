"""popseg_dask: population-specific segmentation of microscopy movies on Dask.

Public API
----------
open_movie
    Open a movie lazily as an ``xarray.DataArray`` with dims (t, c, y, x).
load_config, parse_config
    Read and validate a run configuration.
run
    Segment every population of a movie and write globally numbered labels.
segment_frame
    Segment one frame as a run would (tiles and stitching included), in this process.
segment_region
    What a run writes in one region of a frame, segmenting only around it (frames too big to
    segment whole in this process).
PopsegError
    The error raised for user mistakes and unusable inputs.
"""

from importlib import import_module

from .errors import PopsegError

# Imported on first use (PEP 562): the command line starts its cluster's worker processes
# before it imports dask.array, xarray and the segmenters (1.1 s), so they start together.
_LAZY = {"RunConfig": "config", "load_config": "config", "parse_config": "config", "open_movie": "io.movie",
         "run": "pipeline", "segment_frame": "pipeline", "segment_region": "pipeline"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["open_movie", "load_config", "parse_config", "RunConfig", "run", "segment_frame", "segment_region",
           "PopsegError"]
__version__ = "0.1.0"
