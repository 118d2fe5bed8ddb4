"""A per-process memo of window arrays, keyed by digests of everything they depend on.

A tiled frame's window is looked at up to three times (the rounds of frame facts, then the
segmentation), usually by the same worker process: the filtered mask and the distance map need
not be computed again. Keys are digests of the inputs' *contents* (pixels, frame facts,
position), never object identities, so a hit is always the array the computation would give; a
miss (another worker, an evicted entry) only recomputes. Cached arrays are read-only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import xxhash

__all__ = ["WindowMemo", "digest"]


def digest(*parts: Any) -> bytes:
    """A 128-bit digest of arrays (dtype, shape and bytes) and plain values (their repr).

    XXH3-128: the keys live only in this process's memo, so a fast non-cryptographic hash with
    a 128-bit result is enough (an accidental collision is ~2^-64 likely over 2^32 keys), and a
    tiled frame hashes each window five times: 0.3 ms per 1085² int32 window here, against
    2.7 ms with SHA-256 and 5.2 with BLAKE2b.
    """
    h = xxhash.xxh3_128()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.digest()


class WindowMemo:
    """Least-recently-used arrays (or tuples of arrays), bounded in bytes; thread-safe.

    64 MiB by default: a frame whose tiles run in one task needs only its own windows (about
    28 MB for a 2048² frame in 1024² tiles), and arrays held past their frame only make every
    later frame take fresh memory. With 256 MiB, a dense 24-frame run in 1024² tiles took 1.43x
    the untiled run and 840 MB per worker; with 64 MiB 1.21-1.33x and 650 MB (benchmarks/RESULTS.md,
    "Tiled frames in one task"). Tiles in tasks of their own lose hits with it (frames in flight
    share it), a cost that path, now kept for frames too large for one task, pays.
    """

    def __init__(self, max_bytes: int = 64 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes, compute: Callable[[], Any]) -> Any:
        """The value stored under ``key``, or ``compute()`` stored there (made read-only)."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        value = compute()
        arrays = value if isinstance(value, tuple) else (value,)
        size = sum(a.nbytes for a in arrays)
        for a in arrays:
            a.flags.writeable = False
        if size > self.max_bytes // 4:  # a window this large is not worth holding
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
