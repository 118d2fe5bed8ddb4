"""Run popseg: segment every population of a movie and write globally numbered labels.

The public face of the engine (:mod:`popseg_dask._engine`): :func:`plan_run` validates a config
into a :class:`RunPlan`, :func:`run` executes it on a Dask cluster (:func:`execute`: a plan, maybe
edited, on a connected client), :func:`segment_frame` runs one frame in this process through the
same tile policy and stitching, :func:`segment_region` a region of a frame too big to segment whole.
"""

from __future__ import annotations

from ._engine.frame import FrameFacts, clip_region, segment_frame, segment_region
from ._engine.plan import ClusterFacts, PopulationJob, RunPlan, default_output, plan_run
from ._engine.run import execute, run

__all__ = ["ClusterFacts", "FrameFacts", "clip_region", "PopulationJob", "RunPlan", "default_output", "execute", "plan_run", "run",
           "segment_frame", "segment_region"]
