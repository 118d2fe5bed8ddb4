"""popseg tune: a grid searched on frames with known labels, on a real cluster (issue 15, part 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from popseg_dask.cli import main
from popseg_dask.metrics import match_counts


def _pooled_f1(pred: np.ndarray, truth: np.ndarray, iou: float) -> float:
    tp, n_pred, n_true = np.sum([match_counts(p, t, iou) for p, t in zip(pred, truth)], axis=0)
    return 2 * tp / (n_pred + n_true)


def test_tune_finds_the_best_grid_point_and_its_config_reproduces_it(demo_dir, small_movie, capsys):
    tifffile.imwrite(demo_dir / "truth.tif", small_movie.truth["targets"][1:3])
    (demo_dir / "space.yaml").write_text(yaml.safe_dump({"thresholds": [[450, 1e9], [600, 1e9], [750, 1e9]],
                                                         "marker_min_distance": [3, 5]}))
    assert main(["tune", str(demo_dir / "run.yaml"), "--population", "targets", "--truth", str(demo_dir / "truth.tif"),
                 "--frames", "1:3", "--space", str(demo_dir / "space.yaml"), "--workers", "2",
                 "--out", str(demo_dir / "t")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((demo_dir / "t" / "tune.json").read_text())
    assert len(res["rows"]) == 6 and res["frames"] == [1, 2]
    assert res["best"]["mean_f1"] == max(r["mean_f1"] for r in res["rows"])
    assert len({round(r["mean_f1"], 6) for r in res["rows"]}) > 1  # the settings really differ
    assert (demo_dir / "t" / "tune.png").stat().st_size > 10_000
    assert len((demo_dir / "t" / "tune.csv").read_text().splitlines()) == 7
    assert "best: #" in printed and "F1@0.75" in printed
    # the best config, run for real, scores what tune said (the same segmentation, the same metric)
    best = yaml.safe_load((demo_dir / "t" / "best.yaml").read_text())
    assert best["populations"]["targets"]["thresholds"] == res["best"]["settings"]["thresholds"]
    assert best["populations"]["effectors"] == yaml.safe_load((demo_dir / "run.yaml").read_text())["populations"][
        "effectors"]
    best["output"] = "best.zarr"
    (demo_dir / "best.yaml").write_text(yaml.safe_dump(best))
    assert main(["run", str(demo_dir / "best.yaml"), "--workers", "1", "--quiet"]) == 0
    labels = zarr.open_array(str(demo_dir / "best.zarr" / "labels" / "targets" / "0"), mode="r")[1:3]
    for iou in (0.5, 0.75, 0.9):
        assert _pooled_f1(labels, small_movie.truth["targets"][1:3], iou) == pytest.approx(res["best"][f"f1@{iou}"])


@pytest.mark.parametrize("args, message", [
    (["--population", "nobody"], "--population 'nobody' is not in"),
    (["--population", "targets", "--frames", "0:3"], "the truth labels hold 2 frame(s)"),
    (["--population", "targets", "--space", "SPACE"], "search space key 'thresholds': give a non-empty list"),
    (["--population", "targets", "--space", "BADKEY"], "config error"),
])
def test_tune_mistakes_are_one_line(demo_dir, small_movie, capsys, args, message):
    tifffile.imwrite(demo_dir / "truth.tif", small_movie.truth["targets"][:2])
    (demo_dir / "SPACE").write_text(yaml.safe_dump({"thresholds": []}))
    (demo_dir / "BADKEY").write_text(yaml.safe_dump({"no_such_key": [1, 2]}))
    args = [str(demo_dir / a) if a in ("SPACE", "BADKEY") else a for a in args]
    code = main(["tune", str(demo_dir / "run.yaml"), "--truth", str(demo_dir / "truth.tif"), "--workers", "1", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (demo_dir / "run.tune").exists()
