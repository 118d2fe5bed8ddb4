"""`popseg bench`: measurements on the user's frames and advice that follows from them."""

from __future__ import annotations

import json
import os

from popseg_dask.cli import main


def test_bench_times_variants_and_recommends_within_the_machine(demo_dir, capsys):
    before = sorted(p.name for p in demo_dir.iterdir())
    assert main(["bench", str(demo_dir / "run.yaml"), "--frames", "2", "--tiles", "96", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in demo_dir.iterdir()) == before  # nothing written
    assert set(res["populations"]) == {"targets", "effectors"}
    for pop in res["populations"].values():
        assert set(pop["variants"]) == {"none", "96"}
        for v in pop["variants"].values():
            assert v["s_per_frame"] > 0 and v["peak_task_mb"] > 0 and v["objects_per_frame"] > 0
    rec = res["recommendation"]
    cores = len(os.sched_getaffinity(0))
    assert 1 <= rec["workers"] <= cores and rec["threads_per_worker"] == 1
    # 192-px frames fit anywhere: whole frames, no tiling overhead
    assert rec["tile"] == {"targets": "none", "effectors": "none"}
    assert rec["estimated_s"] > 0


def test_bench_table_and_bad_frames(demo_dir, capsys):
    assert main(["bench", str(demo_dir / "run.yaml"), "--frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "recommended: --workers" in out and "targets" in out
    assert main(["bench", str(demo_dir / "run.yaml"), "--frames", "0"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
