"""What each population's labels were computed from, and what a re-run must recompute.

A population's labels depend on its segmenter's :meth:`~popseg_dask.segmenters.Segmenter.label_inputs`
(settings but the plugin's ``label_neutral`` keys, a model's file digest, ...), the versions of its
``label_packages``, the input (URL, shape, dims, the channels it reads, pixel size) and the stored
bytes of the channel blocks it reads (the tokens of :mod:`popseg_dask.io.identity`), and — for
segmenters without ``exact_tiles`` — its tile plan. Together that is the population's
``labels_from``; its hash is its ``fingerprint``, recorded in the run record and, once the
population is complete, in its label group.

A re-run of an existing output then decides per population (:func:`decide`):

* **kept**: its label group is complete with the same fingerprint — nothing of it is touched;
* **resumed**: an interrupted run was computing it from the same ``labels_from``; its recorded
  frames are kept (and refused if their input changed since: ``prepare.same_input``);
* **recomputed**: anything else that holds its name (other settings, model, versions, input bytes,
  or an input that cannot be listed and so cannot be shown unchanged);
* **new**; and populations of the output that the config no longer names are **removed** from
  the config but kept, or deleted with ``prune``.

Settings that only decide how the work is done (workers, ``device``, ``tile_memory_mb``, batch
sizes; tile size and halo for exact segmenters) are not part of it. A network's output may differ
by float rounding between devices or batch sizes; that is not treated as a change.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..io.record import RunRecord

__all__ = ["Decision", "decide", "labels_from", "network_from", "package_version", "population_fingerprint"]


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str | None:
    """The installed version of a distribution (None: not installed); read from disk once per process."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def input_digest(tokens: list[list[str]] | None, blocks: list[int]) -> str | None:
    """One hash of the tokens of every frame in the given channel blocks (None: unknowable)."""
    if tokens is None:
        return None
    h = hashlib.sha256()
    for row in tokens:
        h.update("|".join(row[b] if b < len(row) else "" for b in blocks).encode() + b"\n")
    return h.hexdigest()[:16]


def labels_from(plan, job, tokens: list[list[str]] | None) -> dict[str, Any]:
    """What ``job``'s labels are computed from in ``plan`` (JSON values; see the module's rules)."""
    seg = job.segmenter
    movie = plan.movie
    c_block = max(1, int(movie.attrs["source"].get("c_block") or 1))
    blocks = sorted({c // c_block for c in job.channel_index})
    out = {
        **seg.label_inputs(),
        "versions": {d: package_version(d) for d in seg.label_packages},
        "input": {"url": plan.input.url, "shape": [int(v) for v in movie.shape], "dims": "".join(movie.dims),
                  "channels": [str(movie.c.values[i]) for i in job.channel_index],
                  "pixel_size_um": movie.attrs.get("pixel_size_um"),
                  "bytes": input_digest(tokens, blocks)},
    }
    if not seg.exact_tiles:
        out["tiles"] = [list(job.tiles.tile), job.tiles.halo]
    return json.loads(json.dumps(out, default=str))  # as it reads back from the store


def network_from(parts: dict[str, Any], postprocess_keys: frozenset[str]) -> dict[str, Any]:
    """What a population's network outputs are computed from: its ``labels_from`` without the
    settings that act only after the network (the key of its output cache)."""
    settings = {k: v for k, v in (parts.get("settings") or {}).items() if k not in postprocess_keys}
    return {**parts, "settings": settings}


def population_fingerprint(parts: dict[str, Any]) -> str:
    """The hash of a ``labels_from``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``labels_from`` (``settings.thresholds``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


@dataclass(frozen=True)
class Decision:
    """What a run does with one population of its output (see the module's rules)."""

    population: str
    action: str  # "new", "kept", "resumed", "recomputed", "removed", "pruned"
    changed: tuple[str, ...] = ()

    @property
    def computes(self) -> bool:
        return self.action in ("new", "resumed", "recomputed")

    def line(self) -> str:
        """One line for the user."""
        what = {
            "new": "new",
            "kept": "kept (computed from the same settings and input)",
            "resumed": "resumed (an interrupted run of the same settings)",
            "recomputed": f"recomputed ({', '.join(self.changed)} changed)",
            "removed": "not in the config: its labels stay in the output (--prune deletes them)",
            "pruned": "not in the config: its labels are deleted (--prune)",
        }[self.action]
        return f"population {self.population}: {what}"


def _why(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[str, ...]:
    if not old or "labels_from" not in old:
        return ("its record, written before per-population fingerprints",)
    keys = changed_keys(old["labels_from"], new)
    if new["input"]["bytes"] is None:
        keys.append(f"input: {new['input']['url']} cannot be listed, so it cannot be shown unchanged; input")
    if new.get("settings") is None:
        keys.append("settings: the plugin declares none; settings")
    return tuple(dict.fromkeys(k.replace("input.bytes", "input's stored bytes") for k in keys)) or ("fingerprint",)


def _without_bytes(parts: dict[str, Any] | None) -> dict[str, Any] | None:
    # A resumed run checks its recorded frames' input itself, frame by frame, and refuses a
    # changed input (``prepare.same_input``) rather than silently recomputing what was done.
    if not parts:
        return parts
    return {**parts, "input": {**parts["input"], "bytes": None}}


def decide(current: dict[str, dict[str, Any]], stored: RunRecord | None,
           groups: dict[str, dict[str, Any] | None], *, prune: bool = False) -> list[Decision]:
    """Each population's :class:`Decision`: ``current`` maps the config's populations to their
    ``labels_from``; ``stored`` is the output's run record and ``groups`` the records of its label
    groups (None where a group has none)."""
    recorded = (stored or {}).get("populations", {})
    out = []
    for name, parts in current.items():
        group, rec = groups.get(name), recorded.get(name)
        fp = population_fingerprint(parts)
        known = parts["input"]["bytes"] is not None and parts.get("settings") is not None
        if known and group and group.get("complete") and group.get("fingerprint") == fp:
            out.append(Decision(name, "kept"))
        elif (parts.get("settings") is not None and rec and not (group or {}).get("complete")
              and _without_bytes(rec.get("labels_from")) == _without_bytes(parts)):
            out.append(Decision(name, "resumed"))
        elif group is not None or rec is not None:
            out.append(Decision(name, "recomputed", _why(group or rec, parts)))
        else:
            out.append(Decision(name, "new"))
    out += [Decision(name, "pruned" if prune else "removed") for name in recorded if name not in current]
    return out
