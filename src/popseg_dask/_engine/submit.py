"""Submitting a run's work: a bounded window of small graphs in flight, and a progress line."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

__all__ = ["Progress", "run_progressively"]


class Progress:
    """One status line, rewritten in place (the terminal only; nothing when quiet).

    ``show`` may instead be a callable ``show(label, done, total)``, called at every step (a
    GUI's progress bar); then nothing is written to the terminal.
    """

    def __init__(self, label: str, total: int, show):
        self.label, self.total, self.done = label, total, 0
        self.callback = show if callable(show) else None
        self.show = bool(show) and self.callback is None and total > 0
        self.t0 = self.last = time.perf_counter()
        self.out = sys.stderr

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.label, self.done, self.total)
            return
        now = time.perf_counter()
        if self.show and (now - self.last > 0.5 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.out.write(f"\r{self.label}: {self.done}/{self.total} frames ({rate:.1f}/s)   ")
            self.out.flush()

    def close(self) -> None:
        if self.show:
            self.out.write("\n")


def run_progressively(client, units, build: Callable, window: int, on_result: Callable,
                      on_submit: Callable | None = None, weight: Callable | None = None) -> None:
    """Compute ``build(unit)`` for every unit with at most ``window`` of them in flight.

    The client never holds more than ``window`` small graphs, so a screen of 10^5 frames needs no
    giant graph and no giant memory. Graphs are submitted unfused: fusion would drop the worker
    resources they carry. The first failure cancels what is in flight and is raised.

    ``build`` may return a tuple ``(main, *side)``: all are submitted together, ``main`` decides
    when the unit is done, and ``on_submit(unit, side_futures)`` receives the futures of the rest
    (a chain that later units build on). ``weight(unit)``: what a unit counts against the window
    (its segment tasks; default 1). Two units are kept in flight even where one fills the window.
    """
    from distributed import as_completed

    it = iter(units)
    pending: dict[str, Any] = {}
    weigh = weight or (lambda unit: 1)
    in_flight = 0
    # this client's loop: as_completed otherwise takes the *default* client's, which in a process
    # that made other clients (tests, notebooks) may be another, closed one — and waits forever
    ac = as_completed(with_results=True, loop=client.loop)

    def submit() -> bool:
        nonlocal in_flight
        unit = next(it, None)
        if unit is None:
            return False
        graph = build(unit)
        graphs = list(graph) if isinstance(graph, tuple) else [graph]
        fut, *side = client.compute(graphs, optimize_graph=False)
        if on_submit is not None:
            on_submit(unit, side)
        pending[fut.key] = (unit, fut)
        in_flight += weigh(unit)
        ac.add(fut)
        return True

    def fill() -> None:
        # Two units at least, whatever they weigh: a unit of a whole shard row weighs as much as
        # the window, and with it alone in flight the workers idled while its last frames and
        # its write ran, before the next unit was even submitted (benchmarks/RESULTS.md).
        while (in_flight < window or len(pending) < 2) and submit():
            pass

    fill()
    try:
        for fut, result in ac:
            unit, _ = pending.pop(fut.key)
            in_flight -= weigh(unit)
            on_result(unit, result)
            fut.release()
            fill()
    finally:
        if pending:
            client.cancel([f for _, f in pending.values()])
