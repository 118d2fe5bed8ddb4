"""Screens: a Celldetective experiment folder, an OME-NGFF HCS plate and a list of movies, each
position segmented into its own output, resumable position by position, failures isolated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.synthetic import DEMO_CONFIG, make_movie

POPS = ("targets", "effectors")


@pytest.fixture(scope="module")
def movies():
    return [make_movie(n_frames=3, size=128, n_targets=6, n_effectors=2, seed=s) for s in (1, 2, 3)]


def _labels(out, pop="targets"):
    return read_labels(out, pop)


def _single(tmp_path, movie, name):
    """The same movie run on its own, for comparison."""
    from popseg_dask.io.images import write_ome_zarr_image

    write_ome_zarr_image(tmp_path / f"{name}.ome.zarr", movie.image, movie.channels,
                         pixel_size_um=movie.pixel_size_um)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": f"{name}.ome.zarr",
                                                           "output": f"{name}.single.zarr"}))
    assert main(["run", str(tmp_path / f"{name}.yaml"), "--quiet", "--workers", "1"]) == 0
    return {p: _labels(tmp_path / f"{name}.single.zarr", p) for p in POPS}


def _experiment(root, movies):
    exp = root / "exp"
    (exp / "configs").mkdir(parents=True)
    (exp / "config.ini").write_text(
        "[MovieSettings]\npxtoum = 0.65\nframes = 3\nmovie_prefix = Aligned\n\n"
        "[Channels]\nnuclei = 0\ncfse = 1\n\n[Populations]\npopulations = targets,effectors\n")
    where = [("W1", "100"), ("W1", "101"), ("W2", "200")]
    for (w, p), m in zip(where, movies):
        d = exp / w / p / "movie"
        d.mkdir(parents=True)
        # Celldetective's layout: an unlabelled (t*c, y, x) stack
        tifffile.imwrite(d / "Aligned.tif", m.image.reshape(-1, *m.image.shape[2:]))
    return exp, where


def test_celldetective_experiment_runs_every_position(tmp_path, movies, capsys):
    exp, where = _experiment(tmp_path, movies)
    cfg = {"input": "exp", "dims": "tcyx", "output": "exp.out",
           "populations": DEMO_CONFIG["populations"]}
    (tmp_path / "screen.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "screen.yaml"), "--quiet", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "screen: 3 position(s)" in out and "3 position(s) segmented" in out
    summary = json.loads((tmp_path / "exp.out" / "screen.json").read_text())
    assert set(summary["positions"]) == {f"{w}/{p}" for w, p in where}
    for (w, p), m in zip(where, movies):
        res = tmp_path / "exp.out" / w / f"{p}.popseg.zarr"
        rec = dict(zarr.open_group(str(res), mode="r").attrs)["popseg"]
        assert rec["complete"] and rec["config"]["channels"] == ["nuclei", "cfse"]
        assert rec["config"]["pixel_size_um"] == pytest.approx(0.65)
        single = _single(tmp_path, m, f"{w}_{p}")
        for pop in POPS:
            assert np.array_equal(_labels(res, pop), single[pop])
    # a second run finds every position up to date
    assert main(["run", str(tmp_path / "screen.yaml"), "--quiet", "--workers", "1"]) == 0
    assert "0 position(s) segmented, 3 already up to date" in capsys.readouterr().out


def _plate(root, movies):
    from popseg_dask.io.images import write_ome_zarr_image

    plate = root / "plate.ome.zarr"
    wells = [("A", "1"), ("B", "2")]
    zarr.open_group(str(plate), mode="w").attrs["ome"] = {"version": "0.5", "plate": {
        "rows": [{"name": "A"}, {"name": "B"}], "columns": [{"name": "1"}, {"name": "2"}],
        "wells": [{"path": f"{r}/{c}", "rowIndex": i, "columnIndex": i} for i, (r, c) in enumerate(wells)]}}
    for (r, c), m in zip(wells, movies):
        zarr.open_group(str(plate / r), mode="a")
        zarr.open_group(str(plate / r / c), mode="w").attrs["ome"] = {"version": "0.5",
                                                                       "well": {"images": [{"path": "0"}]}}
        write_ome_zarr_image(plate / r / c / "0", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    return plate, wells


def test_hcs_plate_runs_every_field_and_a_broken_field_does_not_stop_the_others(tmp_path, movies, capsys):
    plate, wells = _plate(tmp_path, movies)
    (tmp_path / "plate.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": "plate.ome.zarr",
                                                         "output": "plate.out"}))
    # damage one chunk of the second field
    chunk = next((plate / "B" / "2" / "0" / "0" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    good = chunk.read_bytes()
    chunk.write_bytes(b"garbage")
    assert main(["run", str(tmp_path / "plate.yaml"), "--quiet", "--workers", "2"]) == 2
    io = capsys.readouterr()
    assert "1 of 2 position(s) failed (B/2/0)" in io.err and io.err.count("\n") == 1
    assert dict(zarr.open_group(str(tmp_path / "plate.out" / "A" / "1" / "0.popseg.zarr"),
                                mode="r").attrs)["popseg"]["complete"]
    # repaired, the re-run computes only the broken field
    chunk.write_bytes(good)
    assert main(["run", str(tmp_path / "plate.yaml"), "--quiet", "--workers", "2"]) == 0
    summary = json.loads((tmp_path / "plate.out" / "screen.json").read_text())
    assert summary["positions"]["A/1/0"]["status"] == "up to date"
    assert summary["positions"]["B/2/0"]["status"] == "done" and summary["failed"] == []
    single = _single(tmp_path, movies[1], "b2")
    assert np.array_equal(_labels(tmp_path / "plate.out" / "B" / "2" / "0.popseg.zarr"), single["targets"])


def test_list_of_movies(tmp_path, movies, capsys):
    from popseg_dask.io.images import write_ome_zarr_image

    for i, m in enumerate(movies[:2]):
        write_ome_zarr_image(tmp_path / f"m{i}.ome.zarr", m.image, m.channels, pixel_size_um=m.pixel_size_um)
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": ["m0.ome.zarr", "m1.ome.zarr"],
                                                        "output": "list.out"}))
    assert main(["run", str(tmp_path / "list.yaml"), "--quiet", "--workers", "1"]) == 0
    for i in range(2):
        assert dict(zarr.open_group(str(tmp_path / "list.out" / f"m{i}.popseg.zarr"),
                                    mode="r").attrs)["popseg"]["complete"]
    (tmp_path / "dup.yaml").write_text(yaml.safe_dump({**DEMO_CONFIG, "input": ["m0.ome.zarr", "m0.ome.zarr"]}))
    assert main(["run", str(tmp_path / "dup.yaml"), "--quiet"]) == 2
    assert "distinct names" in capsys.readouterr().err
