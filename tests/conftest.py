"""Shared fixtures: small movies on disk and one real LocalCluster per test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def client2():
    """A real 2-worker LocalCluster (processes), shared by the tests that need one."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        yield client


@pytest.fixture
def staged_tiles(monkeypatch):
    """A frame's tiles in tasks of their own (staged numbering: frames recorded one by one), in
    this process and in the ``popseg`` processes it starts; what kill-and-resume tests interrupt."""
    import dask

    monkeypatch.setenv("DASK_POPSEG__FRAME_TASK_PIXELS", "0")
    monkeypatch.setitem(dask.config.config, "popseg", {"frame-task-pixels": 0})


@pytest.fixture(scope="session")
def small_movie():
    """A 4-frame synthetic two-population movie (t, c, y, x) with ground truth."""
    from popseg_dask.synthetic import make_movie

    return make_movie(n_frames=4, size=192, n_targets=14, n_effectors=4, seed=3)


@pytest.fixture
def demo_dir(tmp_path, small_movie):
    """The small movie written as OME-Zarr 0.5 with a matching config file."""
    import yaml

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG

    write_ome_zarr_image(tmp_path / "movie.ome.zarr", small_movie.image, small_movie.channels,
                         pixel_size_um=small_movie.pixel_size_um)
    cfg = dict(DEMO_CONFIG)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path


def frames_equal(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def read_labels(output, population: str) -> np.ndarray:
    """A population's whole label image from a run's output (through the output layout)."""
    import zarr

    from popseg_dask.io.layout import OutputLayout

    return zarr.open_array(str(OutputLayout(output).label_array(population)), mode="r")[...]


DASK = Path(sys.executable).with_name("dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_loopback_cluster(tmp_path, worker_args, *, protocol: str = "tcp", scheduler_args=(), security=None):
    """A real ``dask scheduler`` and one ``dask worker`` per entry of ``worker_args`` (its extra
    arguments) on loopback, each in its own process group; returns the address and the processes."""
    assert DASK.exists(), f"the dask command (from distributed) should be installed beside {sys.executable}"
    port = free_port()
    addr = f"{protocol}://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(DASK), "scheduler", "--protocol", protocol, "--host", "127.0.0.1", "--port",
                               str(port), "--dashboard-address", "127.0.0.1:0", *scheduler_args], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "scheduler.log", "w"),
                              start_new_session=True)]
    for i, extra in enumerate(worker_args):
        procs.append(subprocess.Popen([str(DASK), "worker", addr, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--name", f"w{i}", *extra], env=env, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"worker{i}.log", "w"), start_new_session=True))
    from distributed import Client

    deadline = time.time() + 60
    while True:
        try:
            with Client(addr, security=security, timeout=5) as c:
                if len(c.scheduler_info()["workers"]) == len(worker_args):
                    return addr, procs
        except OSError:
            pass
        if time.time() > deadline:
            stop_processes(procs)
            raise RuntimeError("loopback cluster did not start: " + (tmp_path / "scheduler.log").read_text()[-2000:])
        time.sleep(0.5)


def stop_processes(procs) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after 20 s."""
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
