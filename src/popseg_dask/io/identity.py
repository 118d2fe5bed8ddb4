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


def _blocks_of(key: str, t_axis: int | None, c_axis: int | None) -> tuple[int, int] | None:
    """The (t-block, c-block) of a chunk key (``c/3/0/0/0`` or ``3.0.0.0``, nested or not)."""
    rest = key[2:] if key.startswith("c/") else key
    parts = rest.replace(".", "/").split("/")
    if not all(p.isdigit() for p in parts) or max(t_axis or 0, c_axis or 0) >= len(parts):
        return None
    return (0 if t_axis is None else int(parts[t_axis]), 0 if c_axis is None else int(parts[c_axis]))


def frame_tokens(source: dict[str, Any], n_frames: int, storage_options: dict[str, Any] | None = None
                 ) -> list[list[str]] | None:
    """Tokens of a movie's input (``movie.attrs["source"]``): ``tokens[t][b]`` for frame ``t`` and
    channel block ``b`` (channel ``c`` lies in block ``c // source["c_block"]``), or None if unknowable.

    ``storage_options``: how to reach a remote input (the run's ``storage:`` options).
    """
    if source.get("format") == "tiff":
        loc = Location.of(source["path"])
        token = hashlib.sha256(repr(loc.signature()).encode()).hexdigest()[:16]
        return [[token]] * n_frames
    array = Location.of(source.get("array") or source["path"], storage_options)
    listing = _listing(array)
    if listing is None:
        return None
    meta = sorted((k, v) for k, v in listing.items() if k.rsplit("/", 1)[-1] in _METADATA)
    t_block = max(1, int(source.get("t_block") or 1))
    per_block: dict[tuple[int, int], list] = defaultdict(list)
    for key, sig in listing.items():
        if key.rsplit("/", 1)[-1] in _METADATA:
            continue
        blocks = _blocks_of(key, source.get("t_axis"), source.get("c_axis"))
        if blocks is None:
            return None  # a key layout this cannot read: better no tokens than wrong ones
        per_block[blocks].append((key, sig))
    n_cb = max([cb for _, cb in per_block] + [0]) + 1
    tokens = []
    for t in range(n_frames):
        row = []
        for cb in range(n_cb):
            h = hashlib.sha256(repr(meta).encode())
            h.update(repr(sorted(per_block.get((t // t_block, cb), []))).encode())
            row.append(h.hexdigest()[:16])
        tokens.append(row)
    return tokens


def changed_frames(recorded: list | None, current: list | None, channel_blocks: list[int] | None = None
                   ) -> list[int] | None:
    """Frames whose tokens differ, in the given channel blocks (default: any); None: unknowable."""
    if recorded is None or current is None or len(recorded) != len(current):
        return None
    out = []
    for t, (a, b) in enumerate(zip(recorded, current)):
        if len(a) != len(b):
            return None
        picks = range(len(a)) if channel_blocks is None else [cb for cb in channel_blocks if cb < len(a)]
        if any(a[cb] != b[cb] for cb in picks):
            out.append(t)
    return out
