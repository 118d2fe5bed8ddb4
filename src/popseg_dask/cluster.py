"""Where the work runs: an embedded LocalCluster, or an existing scheduler.

The embedded cluster uses worker *processes* (segmentation is numpy/scipy code that
holds the GIL for long stretches) with one thread each, one worker per core, and
splits the machine's memory between them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from .errors import PopsegError

__all__ = ["open_client", "default_workers"]

log = logging.getLogger(__name__)


def default_workers() -> int:
    """One worker per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def open_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    dashboard: bool = True,
    timeout: float = 10.0,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a connected ``distributed.Client``, closing what it started.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://...``). Without it an
        embedded ``LocalCluster`` is started and shut down on exit.
    n_workers : int, optional
        Workers of the embedded cluster (default: one per core). Ignored with ``scheduler``.
    threads_per_worker : int
        Threads per embedded worker.
    dashboard : bool
        Serve the dashboard of an embedded cluster (on a free local port).
    timeout : float
        Seconds to wait for a remote scheduler before giving up.
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise PopsegError(
                f"cannot reach the Dask scheduler at {scheduler} ({type(err).__name__}); "
                "check the address and that the scheduler is running, or omit --scheduler to run locally"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    # The scheduler of an embedded cluster lives in this process: keep its INFO chatter
    # out of the user's terminal (warnings and errors still show).
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    n = n_workers or default_workers()
    if n < 1:
        raise PopsegError(f"--workers must be at least 1, got {n}")
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address="127.0.0.1:0" if dashboard else None,
        host="127.0.0.1",
        # Task failures come back to the client (and the CLI says them in one line); the workers'
        # own copies would print tracebacks over the progress bar. --debug shows them.
        silence_logs=logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
