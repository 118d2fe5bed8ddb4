"""The engine behind :func:`popseg_dask.pipeline.run` (internal: plain names, no stable API).

The data flow reads top to bottom, one module a step:

* :mod:`.plan` — config -> a complete :class:`~.plan.RunPlan`: movie, segmenters placed on their
  device, tile plans, batches, scratch arrays, the statistics to compute first;
* :mod:`.graph` — the small per-frame Dask graphs and their key names;
* :mod:`.worker` — the tasks workers run: read -> :mod:`popseg_dask.stitch` -> write scratch and
  ledger, and the final numbering;
* :mod:`.submit` — the bounded window of graphs in flight, and progress;
* :mod:`.run` — prepare the output -> segment pass -> number pass -> finish;
* :mod:`.frame` — one frame in this process, through the same steps (``segment_frame``).
"""
