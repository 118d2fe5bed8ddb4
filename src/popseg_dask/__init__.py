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

from .config import RunConfig, load_config, parse_config
from .errors import PopsegError
from .io.movie import open_movie
from .pipeline import run, segment_frame, segment_region

__all__ = ["open_movie", "load_config", "parse_config", "RunConfig", "run", "segment_frame", "segment_region",
           "PopsegError"]
__version__ = "0.1.0"
