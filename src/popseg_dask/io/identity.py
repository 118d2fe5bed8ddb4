"""What an input frame was computed from: one token per frame that changes when its stored bytes do.

A run records the tokens of its input when it starts (in the ledger) and a resumed run compares
them with the input as it is now: frames whose token changed would be mixed with frames of the
old input, so the run refuses to resume and names them (``--overwrite`` starts again). A run
also checks the tokens once more before it marks the output complete, so an input replaced
while it ran is caught too.

Tokens come from what is cheap and sound per store, without reading pixels:

* Zarr (local, s3://, gs://): the array's metadata document, plus, per frame, the name, size
  and modification time (locally) or ETag (object stores) of every chunk or shard that holds
  the frame — one listing of the array, not one request per frame;
* TIFF: the file's size and modification time (any change changes every frame);
* stores that cannot be listed (plain HTTPS): no tokens. A fresh run works; a resume is refused,
  since nothing could show that the input is unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Any

from ..location import Location

__all__ = ["frame_tokens", "changed_frames"]

_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _listing(array: Location) -> dict[str, tuple] | None:
    """Every object under a Zarr array: relative key -> (size, mtime or ETag)."""
    if array.is_local:
        out = {}
        for folder, _, files in os.walk(array.url):
            for name in files:
                full = os.path.join(folder, name)
                st = os.stat(full)
                out[os.path.relpath(full, array.url).replace(os.sep, "/")] = (st.st_size, st.st_mtime_ns)
        return out
    if array.read_only:
        return None
    found = array.fs().find(array.path, detail=True)
    prefix = array.path.rstrip("/") + "/"
    return {k[len(prefix):]: (v.get("size"), v.get("ETag") or v.get("etag") or v.get("LastModified") or v.get("mtime"))
            for k, v in found.items() if k.startswith(prefix)}


def _block_of(key: str, t_axis: int) -> int | None:
    """The t-block index of a chunk key (``c/3/0/0/0`` or ``3.0.0.0``, nested or not)."""
    rest = key[2:] if key.startswith("c/") else key
    parts = rest.replace(".", "/").split("/")
    if not all(p.isdigit() for p in parts) or t_axis >= len(parts):
        return None
    return int(parts[t_axis])


def frame_tokens(source: dict[str, Any], n_frames: int, storage_options: dict[str, Any] | None = None
                 ) -> list[str] | None:
    """One token per frame of a movie's input (``movie.attrs["source"]``), or None if unknowable.

    ``storage_options``: how to reach a remote input (the run's ``storage:`` options).
    """
    if source.get("format") == "tiff":
        loc = Location.of(source["path"])
        token = hashlib.sha256(repr(loc.signature()).encode()).hexdigest()[:16]
        return [token] * n_frames
    array = Location.of(source.get("array") or source["path"], storage_options)
    listing = _listing(array)
    if listing is None:
        return None
    meta = sorted((k, v) for k, v in listing.items() if k.rsplit("/", 1)[-1] in _METADATA)
    t_axis, t_block = source.get("t_axis"), max(1, int(source.get("t_block") or 1))
    per_block: dict[int, list] = defaultdict(list)
    for key, sig in listing.items():
        if key.rsplit("/", 1)[-1] in _METADATA:
            continue
        block = 0 if t_axis is None else _block_of(key, t_axis)
        if block is None:
            return None  # a key layout this cannot read: better no tokens than wrong ones
        per_block[block].append((key, sig))
    tokens = []
    for t in range(n_frames):
        h = hashlib.sha256(repr(meta).encode())
        h.update(repr(sorted(per_block.get(t // t_block, []))).encode())
        tokens.append(h.hexdigest()[:16])
    return tokens


def changed_frames(recorded: list[str] | None, current: list[str] | None) -> list[int] | None:
    """Frames whose tokens differ (None: unknown, nothing can be verified)."""
    if recorded is None or current is None or len(recorded) != len(current):
        return None
    return [t for t, (a, b) in enumerate(zip(recorded, current)) if a != b]
