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

import psutil
from common import many_frames_movie

def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def main(frames: int) -> None:
    from popseg_dask import load_config, run
    from distributed import Client
    size = 32
    dask = str(Path(sys.executable).with_name("dask"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = many_frames_movie(tmp, frames, size)
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
            run(load_config(config), client=client)
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
