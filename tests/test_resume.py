"""Finishing what was started: a worker SIGKILLed mid-run, a client SIGKILLed mid-run, a re-run.

Everything here is real: `dask scheduler` / `dask worker` processes on loopback, `popseg run`
as a separate process killed with SIGKILL, Zarr on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import read_labels, start_loopback_cluster, stop_processes


from popseg_dask.cli import main

POPS = ("targets", "effectors")


@pytest.fixture(scope="module")
def long_movie(tmp_path_factory):
    """A movie long enough (40 frames) to kill things in the middle of its run, and its clean run."""
    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG, make_movie

    root = tmp_path_factory.mktemp("resume")
    m = make_movie(n_frames=40, size=256, n_targets=20, n_effectors=6, seed=11)
    write_ome_zarr_image(root / "movie.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    cfg = dict(DEMO_CONFIG)
    cfg["populations"] = {k: {**v, "tile": 128} for k, v in cfg["populations"].items()}
    (root / "clean.yaml").write_text(yaml.safe_dump({**cfg, "output": "clean.zarr"}))
    assert main(["run", str(root / "clean.yaml"), "--workers", "2", "--quiet"]) == 0
    clean = {p: read_labels(root / "clean.zarr", p) for p in POPS}
    return root, cfg, clean


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p: read_labels(out, p) for p in POPS}


def _segmented(out: Path) -> int:
    folder = out / ".popseg" / "frames"
    return sum(len(list((folder / p).glob("t*.npz"))) for p in POPS if (folder / p).is_dir())


def _kill_client_when(config: Path, done, at_least: int) -> None:
    """Start ``popseg run config`` (1 embedded worker) and SIGKILL it, with its workers, once
    ``done()`` reaches ``at_least``."""
    proc = subprocess.Popen([sys.executable, "-m", "popseg_dask.cli", "run", str(config),
                             "--workers", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    while done() < at_least:
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        assert time.time() < deadline, f"not {at_least} frames done within 2 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the client and its embedded workers, mid-run
    proc.wait()


def test_killed_client_resumes_with_identical_output(long_movie, tmp_path, capsys, staged_tiles):
    root, cfg, clean = long_movie
    (root / "killed.yaml").write_text(yaml.safe_dump({**cfg, "output": "killed.zarr"}))
    out = root / "killed.zarr"
    _kill_client_when(root / "killed.yaml", lambda: _segmented(out), 10)
    done_before = _segmented(out)
    assert 10 <= done_before < 2 * 40
    rec = dict(zarr.open_group(str(out), mode="r").attrs)["popseg"]
    assert rec["complete"] is False  # nothing claims to be finished
    assert not (out / "labels").exists() or not all((out / "labels" / p / "0").exists() for p in POPS)

    assert main(["run", str(root / "killed.yaml"), "--workers", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"resuming: {done_before} of 80 frame(s) already segmented" in text
    rec = dict(zarr.open_group(str(out), mode="r").attrs)["popseg"]
    assert rec["complete"] and rec["frames_computed"] == 80 - done_before and len(rec["resumed"]) == 1
    got = _labels(out)
    for p in POPS:
        assert np.array_equal(got[p], clean[p]), p
    assert not (out / ".popseg").exists()
    print(f"client killed after {done_before} of 80 frames; the re-run computed {rec['frames_computed']}")


def test_worker_sigkilled_mid_run_still_completes_identically(long_movie, tmp_path, staged_tiles):
    from distributed import Client

    from popseg_dask.config import load_config
    from popseg_dask.pipeline import run

    root, cfg, clean = long_movie
    (root / "worker.yaml").write_text(yaml.safe_dump({**cfg, "output": "worker.zarr"}))
    out = root / "worker.zarr"
    addr, procs = start_loopback_cluster(tmp_path, [[], []])
    result: dict = {}
    try:
        with Client(addr) as client:
            def go():
                try:
                    result["record"] = run(load_config(root / "worker.yaml"), client=client)
                except BaseException as err:  # reported below
                    result["error"] = err

            th = threading.Thread(target=go)
            th.start()
            deadline = time.time() + 120
            while _segmented(out) < 10:
                assert th.is_alive(), f"the run ended before a worker could be killed: {result}"
                assert time.time() < deadline
                time.sleep(0.05)
            victim = procs[1]  # a worker (procs[0] is the scheduler)
            os.killpg(victim.pid, signal.SIGKILL)
            killed_at = _segmented(out)
            th.join(timeout=300)
            assert not th.is_alive()
            assert "error" not in result, result.get("error")
            assert len(client.scheduler_info()["workers"]) == 1  # it stayed dead
    finally:
        stop_processes([p for p in procs if p.poll() is None])
    assert killed_at < 80
    rec = result["record"]
    assert rec["complete"] and rec["frames_computed"] == 80
    got = _labels(out)
    for p in POPS:
        assert np.array_equal(got[p], clean[p]), p
    print(f"worker killed with {killed_at} of 80 frames done; the run finished on the other worker")


def test_numbering_refuses_a_record_whose_count_differs(tmp_path):
    """Offsets come from the counts the client saw; a frame recorded with another count (segmented
    twice at once, differently) would overlap the next frame's ids: numbering stops instead."""
    import numpy as np
    import pytest
    import zarr

    from popseg_dask._engine.worker import ArrayRef, number_task
    from popseg_dask.io.ledger import Ledger
    from popseg_dask.location import Location
    from popseg_dask.stitch import FrameInfo, FrameResult

    prov = np.zeros((1, 4, 4), np.uint32)
    prov[0, 0, 0], prov[0, 2, 2] = 1, 11
    zarr.create_array(str(tmp_path / "scratch"), shape=prov.shape, chunks=prov.shape, dtype=np.uint32)[...] = prov
    zarr.create_array(str(tmp_path / "final"), shape=prov.shape, chunks=prov.shape, dtype=np.uint32)
    Ledger(str(tmp_path / "ledger")).save_frame("cells", 0, FrameResult(np.array([1, 11]), FrameInfo(count=2)))
    args = (ArrayRef(Location.of(tmp_path / "scratch")), ArrayRef(Location.of(tmp_path / "final")), [[0]],
            [(0, 4, 0, 4)], Location.of(tmp_path / "ledger"), "cells", {0: 5}, "<u4")
    with pytest.raises(RuntimeError, match="2 objects recorded, 3 counted"):
        number_task(*args, {0: 3})
    assert number_task(*args, {0: 2}) == 1
    out = zarr.open_array(str(tmp_path / "final"), mode="r")[0]
    assert out[0, 0] == 6 and out[2, 2] == 7 and (out > 0).sum() == 2


def _numbered(out: Path) -> int:
    """Frames marked numbered (directly numbered populations leave no per-frame record)."""
    folder, n = out / ".popseg" / "numbered", 0
    for p in POPS:
        for marker in (folder / p).glob("t*") if (folder / p).is_dir() else []:
            first, _, last = marker.name[1:].partition("-")
            n += int(last or first) - int(first) + 1
    return n


def test_killed_client_resumes_an_untiled_run_numbered_directly(long_movie, tmp_path, capsys):
    """Untiled populations are numbered in the segment pass, shard row by shard row, with no
    scratch array: a client killed mid-run loses the rows not yet written, and the re-run
    computes exactly those and gives the labels of an uninterrupted run (and of a tiled one)."""
    root, cfg, clean = long_movie
    untiled = {**cfg, "populations": {k: {**v, "tile": "none"} for k, v in cfg["populations"].items()}}
    (root / "direct.yaml").write_text(yaml.safe_dump({**untiled, "output": "direct.zarr"}))
    out = root / "direct.zarr"
    _kill_client_when(root / "direct.yaml", lambda: _numbered(out), 16)
    done_before = _numbered(out)
    assert 16 <= done_before < 80 and done_before % 8 == 0  # whole shard rows of 8 frames
    assert not (out / ".popseg" / "scratch").exists() and not (out / ".popseg" / "frames").exists()
    rec = dict(zarr.open_group(str(out), mode="r").attrs)["popseg"]
    assert rec["complete"] is False

    assert main(["run", str(root / "direct.yaml"), "--workers", "2", "--quiet"]) == 0
    assert f"resuming: {done_before} of 80 frame(s) already segmented" in capsys.readouterr().out
    rec = dict(zarr.open_group(str(out), mode="r").attrs)["popseg"]
    assert rec["complete"] and rec["frames_computed"] == 80 - done_before
    assert {p["numbering"] for p in rec["populations"].values()} == {"direct"}
    got = _labels(out)
    for p in POPS:
        assert np.array_equal(got[p], clean[p]), p
