"""End to end on a real LocalCluster and real Zarr: ids, determinism, NGFF validity, records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml
import zarr

from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.config import load_config
from popseg_dask.metrics import f1_score
from popseg_dask.pipeline import run
from popseg_dask.stitch import anchors_of


def _labels(out, pop):
    return read_labels(out, pop)


def test_run_gives_unique_canonical_ids(demo_dir, small_movie, client2):
    record = run(load_config(demo_dir / "run.yaml"), client=client2)
    out = demo_dir / "movie.popseg.zarr"
    assert record["complete"] is True
    for pop in ("targets", "effectors"):
        lab = _labels(out, pop)
        assert lab.dtype == np.uint32 and lab.shape == (4, 192, 192)
        counts = record["populations"][pop]["objects_per_frame"]
        assert len(counts) == 4 and sum(counts) == record["populations"][pop]["n_objects"] > 0
        # ids are 1..N over the whole movie, frame after frame, each id in one frame only
        seen_max = 0
        for t in range(4):
            ids, anchors = anchors_of(lab[t])
            assert len(ids) == counts[t]
            assert ids.tolist() == list(range(seen_max + 1, seen_max + 1 + counts[t]))
            # within a frame: ordered by the raster position of the first pixel
            order = np.lexsort((anchors[:, 1], anchors[:, 0]))
            assert order.tolist() == list(range(len(ids)))
            seen_max += counts[t]
        assert f1_score(lab, small_movie.truth[pop]) >= 0.9


def test_one_and_two_workers_give_identical_bytes(demo_dir, client2, tmp_path):
    cfg = load_config(demo_dir / "run.yaml")
    run(cfg, client=client2)
    two = {p: _labels(demo_dir / "movie.popseg.zarr", p) for p in ("targets", "effectors")}
    cfg.output = tmp_path / "one-worker.zarr"
    rec = run(cfg, n_workers=1)
    assert rec["n_workers"] == 1
    for p, arr in two.items():
        one = _labels(tmp_path / "one-worker.zarr", p)
        assert one.dtype == arr.dtype and np.array_equal(one, arr)


def test_output_validates_as_ngff_and_reads_back(demo_dir, client2):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import ImageLabel, Labels

    run(load_config(demo_dir / "run.yaml"), client=client2)
    out = demo_dir / "movie.popseg.zarr"
    labels = Labels.from_zarr(zarr.open_group(str(out / "labels"), mode="r"))
    assert sorted(labels.attributes.ome.labels) == ["effectors", "targets"]
    for pop in ("targets", "effectors"):
        grp = zarr.open_group(str(out / "labels" / pop), mode="r")
        model = ImageLabel.from_zarr(grp)
        ms = model.attributes.ome.multiscales[0]
        assert [a.name for a in ms.axes] == ["t", "y", "x"]
        assert ms.datasets[0].coordinateTransformations[0].scale[1:] == [0.65, 0.65]
        src = model.attributes.ome.image_label.source.image
        assert (out / "labels" / pop / src).resolve() == (demo_dir / "movie.ome.zarr").resolve()
        nodes = list(Reader(parse_url(str(out / "labels" / pop)))())
        label_nodes = [n for n in nodes if n.data and n.data[0].shape == (4, 192, 192) and str(n.zarr.path).rstrip("/").endswith(pop)]
        assert label_nodes, "ome_zarr's Reader did not find the label image"
        np.testing.assert_array_equal(np.asarray(label_nodes[0].data[0]), _labels(out, pop))


def test_record_and_scratch(demo_dir, client2):
    run(load_config(demo_dir / "run.yaml"), client=client2)
    out = demo_dir / "movie.popseg.zarr"
    rec = dict(zarr.open_group(str(out), mode="r").attrs)["popseg"]
    assert rec["complete"] is True and rec["finished"]
    assert set(rec["timings"]) >= {"segment_s", "number_s", "total_s"}
    assert rec["versions"]["dask"] and rec["config"]["populations"]["targets"]["channel"] == "nuclei"
    assert not (out / ".popseg").exists(), "scratch data left behind"
    pop = dict(zarr.open_group(str(out / "labels" / "targets"), mode="r").attrs)["popseg"]
    assert pop["complete"] is True and pop["n_objects"] == rec["populations"]["targets"]["n_objects"]


def test_in_place_on_ngff_04_input(tmp_path, small_movie, client2):
    from ome_zarr_models.v04 import ImageLabel

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG

    movie = write_ome_zarr_image(tmp_path / "m.ome.zarr", small_movie.image, small_movie.channels,
                                 pixel_size_um=0.65, version="0.4")
    before = zarr.open_array(str(movie / "0"), mode="r")[...]
    cfg = {**DEMO_CONFIG, "input": str(movie)}
    cfg.pop("output")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run(load_config(tmp_path / "c.yaml"), client=client2, in_place=True)
    grp = zarr.open_group(str(movie / "labels" / "targets"), mode="r")
    assert grp.metadata.zarr_format == 2
    ImageLabel.from_zarr(grp)
    assert dict(zarr.open_group(str(movie / "labels"), mode="r").attrs)["labels"] == ["effectors", "targets"]
    np.testing.assert_array_equal(zarr.open_array(str(movie / "0"), mode="r")[...], before)


def test_cli_run_and_inspect(demo_dir, capsys):
    assert main(["run", str(demo_dir / "run.yaml"), "--workers", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "targets:" in out and "objects in 4 frames" in out
    assert "dashboard:" not in out  # served only with --dashboard (test below)
    assert main(["inspect", str(demo_dir / "movie.popseg.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"]["targets"]["complete"] is True
    assert info["run"]["complete"] is True
    # a second run of the same config finds nothing to do and replaces nothing
    labels = demo_dir / "movie.popseg.zarr" / "labels" / "targets" / "0"
    before = zarr.open_array(str(labels), mode="r")[...]
    stamp = {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()}
    assert main(["run", str(demo_dir / "run.yaml"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "done in" not in out
    assert {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()} == stamp
    np.testing.assert_array_equal(zarr.open_array(str(labels), mode="r")[...], before)
    # another tile size cannot change a threshold population's labels: nothing is recomputed
    cfg = yaml.safe_load((demo_dir / "run.yaml").read_text())
    cfg["populations"]["targets"]["tile"] = 64
    (demo_dir / "other.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(demo_dir / "other.yaml"), "--quiet"]) == 0
    assert "population targets: kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()} == stamp
    # labels of another movie must not be replaced by accident
    shutil.copytree(demo_dir / "movie.ome.zarr", demo_dir / "copy.ome.zarr")
    (demo_dir / "copy.yaml").write_text(yaml.safe_dump({**cfg, "input": "copy.ome.zarr"}))
    assert main(["run", str(demo_dir / "copy.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "labels of another input" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in labels.rglob("*") if p.is_file()} == stamp


def test_demo_scores_both_populations(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--frames", "4", "--size", "256", "--targets", "20",
               "--effectors", "6", "--workers", "2", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    f1 = {line.split()[0]: float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "F1 =" in line}
    assert set(f1) == {"targets", "effectors"} and min(f1.values()) >= 0.9


def test_tiled_runs_equal_untiled_for_any_worker_count(demo_dir, client2, tmp_path):
    base = yaml.safe_load((demo_dir / "run.yaml").read_text())
    outs = {}
    for tile, where in (("none", "untiled.zarr"), ([64, 64], "t64-2w.zarr"), ([96, 128], "t96-1w.zarr")):
        cfg = {**base, "output": str(tmp_path / where)}
        # a halo just above the segmenters' margins: cut cells must be copied or merged
        halo = {"targets": 16, "effectors": 26}
        cfg["populations"] = {k: {**v, "tile": tile, **({"halo": halo[k]} if tile != "none" else {})}
                              for k, v in base["populations"].items()}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        conf = load_config(tmp_path / "c.yaml")
        conf.input = demo_dir / "movie.ome.zarr"
        rec = run(conf, client=client2) if where != "t96-1w.zarr" else run(conf, n_workers=1)
        outs[where] = {p: _labels(tmp_path / where, p) for p in ("targets", "effectors")}
        if tile != "none":
            assert rec["populations"]["targets"]["tiles_per_frame"] > 1
            pop = rec["populations"]["targets"]
            assert pop["merged_regions"] + pop["copied_clusters"] > 0
    for p in ("targets", "effectors"):
        assert np.array_equal(outs["untiled.zarr"][p], outs["t64-2w.zarr"][p])
        assert np.array_equal(outs["untiled.zarr"][p], outs["t96-1w.zarr"][p])


def test_run_uses_its_own_client_when_the_default_client_is_gone(demo_dir):
    """A process whose default Dask client is gone (notebooks, tests that made and closed others)
    must not leave a run waiting on no loop: dask's as_completed falls back to the default client."""
    import subprocess
    import sys

    script = demo_dir / "no_default.py"
    script.write_text(
        "from distributed import Client, LocalCluster\n"
        "from popseg_dask.config import load_config\n"
        "from popseg_dask.pipeline import run\n"
        "if __name__ == '__main__':\n"
        "    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as c, \\\n"
        "            Client(c, set_as_default=False) as client:\n"
        f"        rec = run(load_config({str(demo_dir / 'run.yaml')!r}), client=client)\n"
        "        print('complete', rec['complete'])\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "complete True" in res.stdout, res.stderr[-2000:]



def test_the_command_serves_a_dashboard_only_when_asked(demo_dir, capsys):
    """``popseg run`` starts its embedded cluster without the dashboard (bokeh's import is
    start-up time: test_cli_run_and_inspect); ``--dashboard`` serves it and prints its link."""
    cfg = str(demo_dir / "run.yaml")
    assert main(["run", cfg, "--quiet", "--workers", "1", "--dashboard"]) == 0
    assert "dashboard: http://127.0.0.1:" in capsys.readouterr().out
