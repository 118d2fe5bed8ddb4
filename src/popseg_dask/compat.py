"""Shims over the private third-party calls popseg relies on, each behind a check.

No public API does these two things: a SpecCluster adopting workers added to its spec after it
started, and Cellpose 3's network forward pass without its tiling and resampling. Each shim
checks that the private call still exists and, if a release removed it, stops with one line
that names the package, the version found and what works instead.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .errors import PopsegError

__all__ = ["adopt_new_workers", "cellpose_forward"]


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def adopt_new_workers(cluster) -> None:
    """Start the workers added to ``cluster.worker_spec`` after the cluster started.

    ``SpecCluster._correct_state`` is what ``scale()`` calls; checked on distributed 2024.8-2026.8.
    """
    correct = getattr(cluster, "_correct_state", None)
    if correct is None:
        raise PopsegError(f"distributed {_version('distributed')} has no SpecCluster._correct_state, which "
                          "pinned GPU workers need; install distributed<=2026.8 or start GPU workers yourself "
                          "('dask worker ... --resources GPU=1') and pass --scheduler")
    cluster.sync(correct)


def cellpose_forward(net: Any, x) -> Any:
    """Cellpose 3's raw network output for a batch ``x`` (n, c, y, x): ``(flows+prob, style)``.

    ``cellpose.core._forward`` runs the network on the model's device with its dtype handling;
    checked on cellpose 3.1.
    """
    from cellpose import core

    forward = getattr(core, "_forward", None)
    if forward is None:
        raise PopsegError(f"cellpose {_version('cellpose')} has no core._forward, which popseg's Cellpose 3 path "
                          "needs; install cellpose>=3.1,<4 or use Cellpose 4")
    return forward(net, x)
