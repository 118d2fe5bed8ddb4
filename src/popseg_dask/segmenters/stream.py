"""Iterators that run ahead in a thread of their own, and grouping of windows into batches.

A network segmenter's windows go through three stages: read and scale (CPU, I/O), the forward
pass (the device), post-processing (CPU). Chained with :func:`ahead`, each stage works on the
next item while the one after it works on the current one, so a GPU is not left idle while the
CPU reads, normalises and post-processes. NumPy, TensorFlow and torch release the GIL in their
heavy calls, which is what lets the threads overlap.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Hashable, Iterable, Iterator, TypeVar

__all__ = ["ahead", "batches"]

T = TypeVar("T")

_END = object()


def ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Parameters
    ----------
    items : iterable
        Pulled in the background thread (a generator's body runs there).
    depth : int
        Items produced and not yet consumed, at most (bounds memory).

    Yields
    ------
    object
        The items, in order. An exception raised while producing an item is raised here, at
        that item. Closing this generator (or an exception in the consumer) stops the thread
        after the item it is producing, and waits for it: no stage outlives its consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _END))
        except BaseException as err:  # handed to the consumer, raised there
            put((False, err))

    thread = threading.Thread(target=work, name="popseg-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def batches(items: Iterable[T], size: Callable[[T], int], key: Callable[[T], Hashable]) -> Iterator[list[T]]:
    """Consecutive items grouped into lists of one ``key`` (e.g. a shape), order kept.

    A group closes when the next item's key differs, when it holds ``size(first item)`` items,
    or when the items end.
    """
    group: list[T] = []
    for item in items:
        if group and (key(item) != key(group[0]) or len(group) >= size(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
