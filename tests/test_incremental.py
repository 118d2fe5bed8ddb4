"""Incremental re-runs: change one population, recompute one population (issue 15, part 1).

Real runs on a real LocalCluster and real Zarr on disk; what is "untouched" is checked on the
stored bytes and modification times of the label files.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.config import parse_config
from popseg_dask.pipeline import run
from popseg_dask.synthetic import DEMO_CONFIG

POPS = ("targets", "effectors")


def _files(out: Path, population: str) -> dict[str, tuple[bytes, int]]:
    """Every file of a population's label group: its bytes and modification time."""
    group = out / "labels" / population
    return {str(p.relative_to(group)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(group.rglob("*")) if p.is_file()}


def _config(**tiles) -> dict:
    cfg = copy.deepcopy(DEMO_CONFIG)
    for name, tile in tiles.items():
        cfg["populations"][name]["tile"] = tile
    return cfg


def _run(cfg: dict, root: Path, client, **kw) -> tuple[dict, list[str]]:
    lines: list[str] = []
    rec = run(parse_config(cfg, root), client=client, echo=lines.append, **kw)
    return rec, lines


def _line(lines: list[str], population: str) -> str:
    return next(x for x in lines if x.startswith(f"population {population}:"))


def test_changing_one_population_recomputes_only_that_one(demo_dir, client2, tmp_path_factory):
    out = demo_dir / "movie.popseg.zarr"
    _run(_config(targets=96, effectors=96), demo_dir, client2)
    before = {p: _files(out, p) for p in POPS}

    cfg = _config(targets=96, effectors=96)
    cfg["populations"]["targets"]["thresholds"] = [700, float("inf")]
    rec, lines = _run(cfg, demo_dir, client2)
    assert "kept" in _line(lines, "effectors")
    assert "recomputed (settings.thresholds changed)" in _line(lines, "targets")
    assert _files(out, "effectors") == before["effectors"]  # bytes and mtimes: never rewritten
    assert _files(out, "targets") != before["targets"]
    assert rec["complete"] is True
    assert rec["populations"]["effectors"]["frames_computed"] == 0
    assert rec["populations"]["targets"]["frames_computed"] == 4

    fresh = tmp_path_factory.mktemp("fresh")
    (fresh / "movie.ome.zarr").symlink_to(demo_dir / "movie.ome.zarr")
    _run(cfg, fresh, client2)
    for p in POPS:  # the incremental output equals a fresh run of the new config, bitwise
        assert np.array_equal(read_labels(out, p), read_labels(fresh / "movie.popseg.zarr", p))


def test_tile_size_and_halo_recompute_nothing_for_exact_segmenters(demo_dir, client2):
    out = demo_dir / "movie.popseg.zarr"
    _run(_config(targets=96, effectors=192), demo_dir, client2)
    before = {p: _files(out, p) for p in POPS}
    cfg = _config(targets=64, effectors=80)
    cfg["populations"]["targets"]["halo"] = 24
    cfg["populations"]["effectors"]["tile_memory_mb"] = 64
    rec, lines = _run(cfg, demo_dir, client2)
    assert all("kept" in _line(lines, p) for p in POPS)
    assert any("already holds these labels" in x for x in lines)
    assert {p: _files(out, p) for p in POPS} == before


def test_added_removed_and_pruned_populations(demo_dir, client2):
    out = demo_dir / "movie.popseg.zarr"
    _run(_config(), demo_dir, client2)
    effectors = _files(out, "effectors")
    # a label image the user put there (a correction, say) is not popseg's to delete
    zarr.create_array(str(out / "labels" / "targets_corrected"), shape=(4, 8, 8), dtype="uint32")

    cfg = _config()
    cfg["populations"]["bright"] = {**cfg["populations"]["targets"], "thresholds": [900, float("inf")]}
    del cfg["populations"]["targets"]
    rec, lines = _run(cfg, demo_dir, client2)
    assert _line(lines, "bright") == "population bright: new"
    assert "kept" in _line(lines, "effectors")
    assert "--prune deletes them" in _line(lines, "targets")
    assert rec["populations"]["targets"]["in_config"] is False
    assert rec["populations"]["bright"]["frames_computed"] == 4
    assert read_labels(out, "targets").max() > 0  # still there
    assert _files(out, "effectors") == effectors
    labels = dict(zarr.open_group(str(out / "labels"), mode="r").attrs)
    names = labels.get("ome", labels)["labels"]
    assert {"targets", "effectors", "bright"} <= set(names)

    rec, lines = _run(cfg, demo_dir, client2, prune=True)
    assert "deleted" in _line(lines, "targets")
    assert "targets" not in rec["populations"] and not (out / "labels" / "targets").exists()
    labels = dict(zarr.open_group(str(out / "labels"), mode="r").attrs)
    assert "targets" not in labels.get("ome", labels)["labels"]
    assert (out / "labels" / "targets_corrected").exists()
    assert _files(out, "effectors") == effectors


def test_dry_run_prints_the_decisions_and_changes_nothing(demo_dir, capsys):
    cfg_path = demo_dir / "run.yaml"
    assert main(["run", str(cfg_path), "--workers", "1", "--quiet"]) == 0
    out = demo_dir / "movie.popseg.zarr"
    before = {p: _files(out, p) for p in POPS}
    record = (out / "zarr.json").read_bytes()
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["populations"]["effectors"]["filters"] = [["gauss", 3]]
    cfg_path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["run", str(cfg_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "population targets: kept" in printed
    assert "population effectors: recomputed (settings.filters changed)" in printed
    assert {p: _files(out, p) for p in POPS} == before
    assert (out / "zarr.json").read_bytes() == record


def test_a_changed_input_recomputes_and_drops_the_tables(demo_dir, client2):
    from popseg_dask.measure import measure_output

    out = demo_dir / "movie.popseg.zarr"
    _run(_config(), demo_dir, client2)
    measure_output(out, client=client2)
    assert (out / "measurements.parquet").exists()
    image = zarr.open_array(str(demo_dir / "movie.ome.zarr" / "0"), mode="r+")
    frame = image[2]
    image[2] = np.flip(frame, axis=-1)  # another movie of the same shape, in the same place
    rec, lines = _run(_config(), demo_dir, client2)
    for p in POPS:
        assert "recomputed (input's stored bytes changed)" in _line(lines, p)
    assert any("measurements" in x for x in lines)
    assert not (out / "measurements.parquet").exists()  # tables of the old labels are gone
    assert rec["populations"]["targets"]["frames_computed"] == 4


def test_decide_rules():
    from popseg_dask._engine.lineage import changed_keys, decide, population_fingerprint

    parts = {"segmenter": "threshold", "settings": {"thresholds": [1, 2], "filters": []},
             "input": {"url": "m.zarr", "bytes": "abc"}}
    fp = population_fingerprint(parts)
    other = {**parts, "settings": {"thresholds": [1, 3], "filters": []}}
    assert population_fingerprint(other) != fp
    assert changed_keys(parts, other) == ["settings.thresholds"]
    done = {"complete": True, "fingerprint": fp, "labels_from": parts}
    record = {"populations": {"a": {"complete": False, "labels_from": parts}, "gone": {}}}

    def actions(current, groups, **kw):
        return {d.population: d.action for d in decide(current, record, groups, **kw)}

    assert actions({"a": parts}, {"a": done}) == {"a": "kept", "gone": "removed"}
    assert actions({"a": parts}, {"a": None}, prune=True) == {"a": "resumed", "gone": "pruned"}
    # an interrupted run is resumed even if its input changed: the resume itself refuses that
    changed_input = {**parts, "input": {"url": "m.zarr", "bytes": "xyz"}}
    assert actions({"a": changed_input}, {"a": None})["a"] == "resumed"
    assert actions({"a": other}, {"a": done})["a"] == "recomputed"
    # a complete population whose input changed is recomputed, not resumed
    assert actions({"a": changed_input}, {"a": done})["a"] == "recomputed"
    assert actions({"b": parts}, {})["b"] == "new"
    # an input that cannot be listed cannot be shown unchanged: recomputed, with the reason
    unlisted = {**parts, "input": {"url": "https://x/m.zarr", "bytes": None}}
    unlisted_done = {"complete": True, "fingerprint": population_fingerprint(unlisted), "labels_from": unlisted}
    (d,) = [d for d in decide({"a": unlisted}, None, {"a": unlisted_done}) if d.population == "a"]
    assert d.action == "recomputed" and "cannot be listed" in d.line()


@pytest.mark.parametrize("key", ["max_object_px", "threshold_config"])
def test_label_neutral_keys_are_declared_params(key):
    from popseg_dask.segmenters import get_segmenter_class

    cls = get_segmenter_class("threshold")
    assert key in cls.label_neutral and key in cls.Params.model_fields


def test_cache_needs_a_segmenter_with_network_outputs(demo_dir, capsys):
    cfg = yaml.safe_load((demo_dir / "run.yaml").read_text())
    cfg["populations"]["targets"]["cache"] = "model_outputs"
    (demo_dir / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(demo_dir / "run.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "population 'targets': cache: model_outputs needs a segmenter with network outputs" in err
    assert not (demo_dir / "movie.popseg.zarr").exists()
