"""One run per output at a time: a lease in the output, taken atomically, kept alive by a heartbeat.

The lease is a folder of numbered objects, ``<output>/.popseg-lease/000001.json``, ... Each holds
the holder's host, pid, start time and last heartbeat. The highest number is the current lease.

* **Taking it**: create the next number *exclusively* (``O_EXCL`` locally, a conditional PUT with
  ``If-None-Match: *`` on object stores). Of two runs that try at once, exactly one succeeds.
* **Refusing**: when the current lease's heartbeat is younger than ``ttl``, a second run stops
  with one line naming the holder — with or without ``--overwrite``, before it deletes anything.
* **Taking over**: a lease whose heartbeat is older than ``ttl`` belongs to a run that died, and
  so does one whose holder was a process of this host that no longer exists; the next number is
  created (said on one line). The old holder, should it wake up, sees a higher
  number at its next heartbeat or check and stops without writing.
* **Releasing**: the holder deletes its objects when the run ends, however it ends.

Heartbeats compare wall clocks: hosts sharing an output should keep their clocks within a few
seconds of each other (NTP), far below the default ``ttl`` of 60 s.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Callable

from ..errors import PopsegError
from ..location import Location

__all__ = ["Lease", "LeaseLost"]


class LeaseLost(PopsegError):
    """Another run took this run's lease over (its heartbeat had stopped for too long)."""


def _holder_gone(info: dict) -> bool:
    """Whether the holder was a process on this host that no longer runs (no need to wait for
    its heartbeat to age: a killed run on a laptop is taken over at once)."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    import psutil

    try:
        proc = psutil.Process(info["pid"])
    except psutil.NoSuchProcess:
        return True
    # a pid reused by a process started after the lease was taken is not the holder
    return proc.create_time() > float(info.get("since", 0)) + 1.0


def _describe(info: dict, now: float) -> str:
    age = now - float(info.get("heartbeat", 0))
    return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started', '?')}, "
            f"last heartbeat {age:.0f} s ago")


class Lease:
    """The lease on one output (``folder``: the output's lease folder).

    Use as a context manager: ``with Lease(folder).held(echo): ...``.
    """

    def __init__(self, folder: Location, *, ttl: float = 60.0, beat: float = 10.0):
        self.folder = Location.of(folder)
        self.ttl, self.beat = float(ttl), float(beat)
        self.generation: int | None = None
        self.info: dict = {}
        self.lost: dict | None = None
        self._made_root = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading
    def _generations(self) -> list[int]:
        return sorted(int(n[:-5]) for n in self.folder.list() if n.endswith(".json") and n[:-5].isdigit())

    def _read(self, gen: int) -> dict:
        obj = self.folder / f"{gen:06d}.json"
        try:
            return json.loads(obj.read_bytes())
        except (OSError, ValueError):
            # being written by its creator (locally: created, then written), or left empty by a
            # creator that died right then: alive as long as the object itself is recent
            try:
                when = obj.modified()
            except OSError:
                when = 0.0
            return {"heartbeat": when, "host": "?", "pid": "?", "started": "?"}

    def holder(self) -> dict | None:
        """The current lease's contents, or None when nobody holds one."""
        gens = self._generations()
        return self._read(gens[-1]) if gens else None

    # ------------------------------------------------------------------ taking, keeping, giving back
    def acquire(self, echo: Callable[[str], None] = lambda m: None) -> None:
        """Take the lease, or stop with one line naming the run that holds it."""
        gens = self._generations()
        latest = gens[-1] if gens else 0
        now = time.time()
        if latest:
            info = self._read(latest)
            if now - float(info.get("heartbeat", 0)) < self.ttl and not _holder_gone(info):
                raise PopsegError(f"output {self.folder.parent} is being written by another run ({_describe(info, now)}); "
                                  "wait for it to finish or stop it (a run whose heartbeat stops for "
                                  f"{self.ttl:.0f} s is taken over)")
            echo(f"taking over the output from a run that stopped ({_describe(info, now)})")
        self._made_root = self.folder.is_local and not self.folder.parent.exists()
        self.info = {"host": socket.gethostname(), "pid": os.getpid(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "since": now, "heartbeat": now}
        try:
            (self.folder / f"{latest + 1:06d}.json").write_bytes(json.dumps(self.info).encode(), exclusive=True)
        except FileExistsError:
            other = self._read(latest + 1)
            raise PopsegError(f"output {self.folder.parent} was just taken by another run ({_describe(other, now)}); "
                              "wait for it to finish") from None
        except PermissionError:
            raise PopsegError(f"cannot write output {self.folder.parent}: permission denied; "
                              "choose a writable 'output'") from None
        except OSError as err:
            raise PopsegError(f"cannot write output {self.folder.parent}: {err.strerror or err}; "
                              "choose a writable 'output'") from None
        self.generation = latest + 1
        self._thread = threading.Thread(target=self._heartbeat, name="popseg-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.beat):
            if self._taken():
                return
            self.info["heartbeat"] = time.time()
            try:
                (self.folder / f"{self.generation:06d}.json").write_bytes(json.dumps(self.info).encode())
            except OSError:
                pass  # a missed beat; the next one tries again (ttl spans several)

    def _taken(self) -> bool:
        """Whether another run holds the lease now: a higher number exists, or this run's own
        object is gone (a run that took over has finished and given the lease back)."""
        gens = self._generations()
        newer = [g for g in gens if g > (self.generation or 0)]
        if newer:
            self.lost = self._read(newer[-1])
        elif self.generation is not None and self.generation not in gens:
            self.lost = {"host": "?", "pid": "?", "started": "?", "heartbeat": 0}
        return self.lost is not None

    def check(self) -> None:
        """Stop (:class:`LeaseLost`) if another run has taken this run's lease over."""
        if self.lost is not None or self._taken():
            raise LeaseLost(f"another run took over output {self.folder.parent} ({_describe(self.lost, time.time())}) "
                            "after this run's heartbeat stopped; this run stops without writing more")

    def release(self) -> None:
        """Give the lease back (deleting its objects), unless another run has taken it over."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is None or self._taken():
            return
        for gen in self._generations():
            if gen <= self.generation:
                (self.folder / f"{gen:06d}.json").delete()
        if self.folder.is_local and not self.folder.list():
            self.folder.delete()
            if self._made_root and not self.folder.parent.list():
                self.folder.parent.delete()  # the lease made the output folder: leave nothing behind
        self.generation = None

    def __enter__(self) -> "Lease":
        if self.generation is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
