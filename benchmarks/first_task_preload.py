"""Scheduler preload of the ``command`` benchmark: the time the first task was sent to a worker.

Loaded by the embedded scheduler of a ``popseg run`` through ``distributed.scheduler.preload``
(set in the command's environment by the benchmark), so the command itself is unchanged.
"""

import json
import os
import time

from distributed.diagnostics.plugin import SchedulerPlugin


class FirstTask(SchedulerPlugin):
    """Writes ``{"sent": unix time, "key": ...}`` when the first task goes to a worker."""

    def __init__(self, path: str):
        self.path = path
        self.seen = False

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and not self.seen:
            self.seen = True
            with open(self.path, "w") as f:
                json.dump({"sent": time.time(), "key": str(key)}, f)


def dask_setup(scheduler):
    scheduler.add_plugin(FirstTask(os.environ["POPSEG_BENCH_FIRST_TASK"]))
