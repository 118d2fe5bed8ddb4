"""User mistakes: one line naming the problem and the fix, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import pytest
import yaml

from popseg_dask.cli import main
from popseg_dask.synthetic import DEMO_CONFIG


def _write(tmp_path, cfg) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return str(p)


def _pop(**over):
    base = {k: v for k, v in DEMO_CONFIG["populations"]["targets"].items()}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


CASES = {
    "unknown top-level key": ({**DEMO_CONFIG, "ouput": "x.zarr"}, "unknown key 'ouput'"),
    "unknown population key": ({**DEMO_CONFIG, "populations": {"t": _pop(treshold=3)}}, "unknown key 'populations.t.treshold'"),
    "unknown filter": ({**DEMO_CONFIG, "populations": {"t": _pop(filters=[["gaus", 2]])}}, "unknown filter 'gaus'"),
    "filter missing its argument": ({**DEMO_CONFIG, "populations": {"t": _pop(filters=[["median"]])}}, "needs 1 argument"),
    "unknown channel": ({**DEMO_CONFIG, "populations": {"t": _pop(channel="dapi")}}, "channel 'dapi' is not in the movie"),
    "channel index out of range": ({**DEMO_CONFIG, "populations": {"t": _pop(channel=5)}}, "out of range"),
    "unknown segmenter": ({**DEMO_CONFIG, "populations": {"t": _pop(segmenter="magic")}}, "unknown segmenter 'magic'"),
    "reversed thresholds": ({**DEMO_CONFIG, "populations": {"t": _pop(thresholds=[900, 100])}}, "low <= high"),
    "missing thresholds": ({**DEMO_CONFIG, "populations": {"t": _pop(thresholds=None)}}, "'thresholds' is required"),
    "bad query syntax": ({**DEMO_CONFIG, "populations": {"t": _pop(feature_queries=["area <"])}}, "bad feature query"),
    "query on unknown feature": ({**DEMO_CONFIG, "populations": {"t": _pop(feature_queries=["aera < 3"])}}, "unknown feature"),
    "negative marker distance": ({**DEMO_CONFIG, "populations": {"t": _pop(marker_min_distance=-1)}}, "marker_min_distance"),
    "no populations": ({**DEMO_CONFIG, "populations": {}}, "populations"),
    "bad population name": ({**DEMO_CONFIG, "populations": {"a/b": _pop()}}, "population name"),
    "missing input": ({**DEMO_CONFIG, "input": "nowhere.zarr"}, "input not found"),
    "reference frame outside the movie": ({**DEMO_CONFIG, "populations": {"t": _pop(equalize_reference=99)}}, "reference frame 99"),
    "not YAML": ("input: [unclosed", "not valid YAML"),
    "not a mapping": ("- a\n- b\n", "must be a mapping"),
    "duplicated key": ("input: movie.ome.zarr\npopulations:\n  t:\n    segmenter: threshold\n    channel: nuclei\n"
                       "    thresholds: [600, .inf]\n    channel: cfse\n", "key 'channel' is given twice (lines 5 and 7)"),
    "duplicated population": ("input: movie.ome.zarr\npopulations:\n  t: {segmenter: threshold}\n"
                              "  t: {segmenter: threshold}\n", "key 't' is given twice (lines 3 and 4)"),
    "output inside the input": ({**DEMO_CONFIG, "output": "movie.ome.zarr/labels-out"}, "inside the input"),
    "missing threshold_config file": ({**DEMO_CONFIG, "populations": {"t": {"segmenter": "threshold", "threshold_config": "nope.json"}}}, "threshold_config"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_clear_line(name, demo_dir, capsys):
    cfg, message = CASES[name]
    path = _write(demo_dir, cfg)
    before = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*"))
    rc = main(["run", path, "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("popseg: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err
    after = sorted(p.relative_to(demo_dir) for p in demo_dir.rglob("*"))
    assert after == before, "a failed run left files behind"


def test_keys_merged_from_an_anchor_may_be_overridden():
    from popseg_dask.config import read_yaml

    data = read_yaml("base: &b {segmenter: threshold, channel: nuclei}\npop:\n  <<: *b\n  channel: cfse\n")
    assert data["pop"] == {"segmenter": "threshold", "channel": "cfse"}


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_debug_shows_the_traceback(demo_dir):
    from popseg_dask.errors import PopsegError

    with pytest.raises(PopsegError):
        main(["--debug", "run", _write(demo_dir, {**DEMO_CONFIG, "bogus": 1})])


def test_unreachable_scheduler(demo_dir, capsys):
    rc = main(["run", str(demo_dir / "run.yaml"), "--scheduler", "tcp://127.0.0.1:9", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach the Dask scheduler" in err and err.count("\n") == 1
    # the failed attempt leaves no output at all
    assert not (demo_dir / "movie.popseg.zarr").exists()


def test_celldetective_json_is_accepted_as_is(demo_dir, capsys):
    import json

    (demo_dir / "threshold_config_targets.json").write_text(json.dumps({
        "target_channel": "nuclei", "thresholds": [600, float("inf")], "filters": [["gauss", 1.5]],
        "marker_min_distance": 5, "marker_footprint_size": 9, "feature_queries": [""],
        "equalize_reference": [False, 0], "do_watershed": True, "fill_holes": True,
    }))
    cfg = {**DEMO_CONFIG, "populations": {"targets": {"segmenter": "threshold",
                                                       "threshold_config": "threshold_config_targets.json"}}}
    assert main(["run", _write(demo_dir, cfg), "--quiet", "--workers", "1"]) == 0


def test_damaged_input_chunk_is_one_line_and_nothing_complete(demo_dir, capsys):
    import zarr

    chunk = demo_dir / "movie.ome.zarr" / "0" / "c" / "2" / "0" / "0" / "0"
    assert chunk.exists()
    chunk.write_bytes(b"not a zstd frame")
    rc = main(["run", str(demo_dir / "run.yaml"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("popseg: error: cannot read frame 2 of ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    rec = dict(zarr.open_group(str(demo_dir / "movie.popseg.zarr"), mode="r").attrs)["popseg"]
    assert rec["complete"] is False
    # untiled frames are written as they are numbered: a label image may exist, but no population
    # of it is marked complete, and the commands that read a run refuse it
    labels = demo_dir / "movie.popseg.zarr" / "labels"
    for pop in DEMO_CONFIG["populations"]:
        if (labels / pop).exists():
            assert not dict(zarr.open_group(str(labels / pop), mode="r").attrs).get("popseg", {}).get("complete")
    assert main(["measure", str(demo_dir / "movie.popseg.zarr"), "--workers", "1", "--quiet"]) == 2
    assert "complete" in capsys.readouterr().err
