"""Stitching: from windows segmented independently to one exact, canonically numbered frame.

Numpy only (no Dask, no Zarr): :mod:`~popseg_dask.stitch.ids` (provisional, canonical and final
ids), :mod:`~popseg_dask.stitch.clusters` (clusters, resolution, boxes) and
:mod:`~popseg_dask.stitch.resolve` (the algorithm: what a tile keeps, what it hands to its
neighbours, how a merge grows its window). Tested edge case by edge case in
``tests/test_stitch.py`` with a stub segmenter.

Why the result is exact — stitching by *resolution*, not by matching:

1. A segmenter declares a ``halo``: a *cluster* (support pixels linked within its ``link``)
   whose pixels all lie ``halo`` pixels or more from every artificial edge of a window comes out
   of that window exactly as from the whole frame. Such a cluster is *resolved* by the window.
2. An object gets a *provisional id*: the raster index of its first pixel in the frame, plus one.
   Every window that resolves an object computes the same pixels and the same id, so tiles write
   their own cores without talking to each other, and a pixel's value never depends on which
   tile wrote it.
3. A tile keeps only the objects it resolves. A cluster cut by a core edge is either resolved by
   some other tile (its pixels are copied from that tile's result) or by none (larger than the
   halo, or chained across cuts): then each of its pieces is re-segmented in a window grown
   around it until the clusters holding the piece are resolved (only those: a neighbour the
   window also cuts does not make it grow). The whole frame always resolves (nothing is cut), so
   the loop ends, and its result is the untiled result. How large a merge grows is therefore
   bounded by the cluster, and a cluster by what the segmenter links (for the threshold
   segmenter, a connected component of its mask: its watershed markers are a frame fact).
4. Final ids: frame ``t``'s objects, ranked by provisional id, get ``offset[t] + rank + 1``,
   where ``offset`` is the prefix sum of the counts of earlier frames. The label image therefore
   depends only on the masks, never on tile size, worker count or task order: bitwise equal for
   deterministic segmenters.

Exact whenever the segmenter's ``halo`` is honest; the tiled == untiled property tests
(``tests/test_tiling.py``) hold it to that.
"""

from .clusters import cluster_boxes, clusters, group_boxes, present_ids, resolved_clusters
from .ids import (anchors_of, canonical_relabel, compact_ids, frame_offsets, label_dtype_for, number_from_provisional,
                  provisional_dtype, provisional_ids)
from .resolve import (Canvas, FrameInfo, FrameResult, TileResult, WindowLabels, complete_frame, resolvable_by_others,
                      resolve_tile, segment_window, write_pixels)

__all__ = ["anchors_of", "canonical_relabel", "compact_ids", "frame_offsets", "label_dtype_for",
           "number_from_provisional", "provisional_dtype", "provisional_ids", "cluster_boxes", "clusters",
           "group_boxes", "present_ids", "resolved_clusters", "Canvas", "FrameInfo", "FrameResult", "TileResult",
           "WindowLabels", "complete_frame", "resolvable_by_others", "resolve_tile", "segment_window",
           "write_pixels"]
