"""`popseg run --scheduler` against real `dask scheduler` + `dask worker` processes on loopback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from popseg_dask.cli import main

DASK = Path(sys.executable).with_name("dask")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_cluster(tmp_path):
    assert DASK.exists(), f"the dask command (from distributed) should be installed beside {sys.executable}"
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "scheduler.log", "w"),
                              start_new_session=True)]
    for i in range(2):
        procs.append(subprocess.Popen([str(DASK), "worker", addr, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--name", f"w{i}"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"worker{i}.log", "w"), start_new_session=True))
    from distributed import Client

    deadline = time.time() + 60
    while True:
        try:
            with Client(addr, timeout=5) as c:
                if len(c.scheduler_info()["workers"]) == 2:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError("loopback cluster did not start: " + (tmp_path / "scheduler.log").read_text()[-2000:])
        time.sleep(0.5)
    yield addr
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_run_on_external_scheduler_matches_local(demo_dir, loopback_cluster, capsys):
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", loopback_cluster, "--quiet"]) == 0
    remote = {p: zarr.open_array(str(demo_dir / "movie.popseg.zarr" / "labels" / p / "0"), mode="r")[...]
              for p in ("targets", "effectors")}
    rec = dict(zarr.open_group(str(demo_dir / "movie.popseg.zarr"), mode="r").attrs)["popseg"]
    assert rec["complete"] and rec["n_workers"] == 2
    shutil.rmtree(demo_dir / "movie.popseg.zarr")
    assert main(["run", str(demo_dir / "run.yaml"), "--workers", "1", "--quiet"]) == 0
    for p, arr in remote.items():
        local = zarr.open_array(str(demo_dir / "movie.popseg.zarr" / "labels" / p / "0"), mode="r")[...]
        assert np.array_equal(local, arr)
