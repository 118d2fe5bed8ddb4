"""`popseg run --scheduler` against real `dask scheduler` + `dask worker` processes on loopback."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import zarr

from conftest import read_labels, start_loopback_cluster, stop_processes

from popseg_dask.cli import main



@pytest.fixture
def loopback_cluster(tmp_path):
    addr, procs = start_loopback_cluster(tmp_path, [[], []])
    yield addr
    stop_processes(procs)


def test_run_on_external_scheduler_matches_local(demo_dir, loopback_cluster, capsys):
    assert main(["run", str(demo_dir / "run.yaml"), "--scheduler", loopback_cluster, "--quiet"]) == 0
    remote = {p: read_labels(demo_dir / "movie.popseg.zarr", p)
              for p in ("targets", "effectors")}
    rec = dict(zarr.open_group(str(demo_dir / "movie.popseg.zarr"), mode="r").attrs)["popseg"]
    assert rec["complete"] and rec["n_workers"] == 2
    shutil.rmtree(demo_dir / "movie.popseg.zarr")
    assert main(["run", str(demo_dir / "run.yaml"), "--workers", "1", "--quiet"]) == 0
    for p, arr in remote.items():
        local = read_labels(demo_dir / "movie.popseg.zarr", p)
        assert np.array_equal(local, arr)


GPU_PLUGIN = """
from popseg_dask.segmenters.threshold import ThresholdSegmenter


class GpuThreshold(ThresholdSegmenter):
    name = "gpu-threshold"
    resources = {"GPU": 1}
"""


def test_resources_reach_the_scheduler(demo_dir, tmp_path, monkeypatch):
    """A segmenter's resources restrict its tasks to the workers that have them; the rest roam."""
    import dask
    import yaml
    from distributed import Client, get_task_stream

    from popseg_dask.config import load_config
    from popseg_dask.pipeline import run

    (tmp_path / "gpu_plugin.py").write_text(GPU_PLUGIN)
    info = tmp_path / "gpu_plugin-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gpu-plugin\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[popseg_dask.segmenters]\ngpu-threshold = gpu_plugin:GpuThreshold\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    cfg = yaml.safe_load((demo_dir / "run.yaml").read_text())
    cfg["populations"]["targets"] = {**cfg["populations"]["targets"], "segmenter": "gpu-threshold", "tile": [96, 96]}
    (demo_dir / "gpu.yaml").write_text(yaml.safe_dump(cfg))
    addr, procs = start_loopback_cluster(tmp_path, [["--resources", "GPU=1"], []])
    try:
        with Client(addr) as client:
            workers = client.scheduler_info()["workers"]
            gpu = [w for w, i in workers.items() if i.get("resources", {}).get("GPU")]
            assert len(gpu) == 1
            # a frame's tiles in tasks of their own (a resource on each; in one task: test_models.py)
            with get_task_stream(client) as ts, dask.config.set({"popseg.frame-task-pixels": 0}):
                rec = run(load_config(demo_dir / "gpu.yaml"), client=client)
        assert rec["complete"]
        where = {}
        for task in ts.data:
            key = str(task["key"])
            where.setdefault(key.split("-")[0] + "-" + key.split("-")[1], []).append(task["worker"])
        # every segment task of the GPU population (4 frames x (4 tiles + 1 merge)) ran on the GPU worker;
        # without the restriction reaching the scheduler, about half would land on the other worker
        gpu_tasks = where["tile-targets"] + where["merge-targets"]
        assert len(gpu_tasks) == 4 * (4 + 1) and set(gpu_tasks) == set(gpu)
        # the CPU population's tasks were not restricted (they may run on either worker)
        assert len(where["direct-effectors"]) == 4  # untiled frames: one segment task each, numbered directly
    finally:
        stop_processes(procs)
