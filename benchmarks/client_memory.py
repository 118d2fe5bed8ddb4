"""Client and scheduler memory over a many-frame run, each in its own process.

    python benchmarks/client_memory.py 9000

Runs ``popseg run`` on N frames of 32² (one untiled threshold population) against a ``dask
scheduler`` and two ``dask worker`` processes on loopback, and prints the RSS of the client and
of the scheduler before and after (figures in RESULTS.md, "Client memory over many frames").
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
import zarr

def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def main(frames: int) -> None:
    from popseg_dask import load_config, run
    from popseg_dask.synthetic import DEMO_CONFIG
    from distributed import Client
    size = 32
    dask = str(Path(sys.executable).with_name("dask"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arr = zarr.create_array(str(tmp / "many.zarr"), shape=(frames, 1, size, size), chunks=(1, 1, size, size), dtype=np.uint16)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:size, :size]
        blob = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2) * 800
        for s in range(0, frames, 1000):
            e = min(frames, s + 1000)
            arr[s:e, 0] = (rng.normal(100, 10, (e - s, size, size)) + blob).astype(np.uint16)
        pop = {**DEMO_CONFIG["populations"]["targets"], "channel": "nuclei", "tile": "none"}
        cfg = {"input": "many.zarr", "dims": "tcyx", "channels": ["nuclei"], "output": "many.out.zarr", "populations": {"cells": pop}}
        (tmp / "many.yaml").write_text(yaml.safe_dump(cfg))
        p = port()
        addr = f"tcp://127.0.0.1:{p}"
        sched = subprocess.Popen([dask, "scheduler", "--port", str(p), "--dashboard-address", ":0", "--host", "127.0.0.1"], stderr=subprocess.DEVNULL)
        time.sleep(3)
        ws = [subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-dashboard"], stderr=subprocess.DEVNULL) for _ in range(2)]
        try:
            client = Client(addr)
            client.wait_for_workers(2, timeout=60)
            me, sp = psutil.Process(), psutil.Process(sched.pid)
            c0, s0 = me.memory_info().rss / 2**20, sp.memory_info().rss / 2**20
            t0 = time.perf_counter()
            run(load_config(tmp / "many.yaml"), client=client)
            wall = time.perf_counter() - t0
            c1, s1 = me.memory_info().rss / 2**20, sp.memory_info().rss / 2**20
            print(f"frames {frames} wall {wall:.0f}s client {c0:.0f}->{c1:.0f} MB scheduler {s0:.0f}->{s1:.0f} MB")
            client.close()
        finally:
            for w in ws:
                w.terminate()
            sched.terminate()

if __name__ == "__main__":
    main(int(sys.argv[1]))
