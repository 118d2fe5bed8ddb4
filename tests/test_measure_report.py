"""Measurements, QC report, Celldetective export/import, napari layers — on a real tiled run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from conftest import read_labels

from popseg_dask.cli import main
from popseg_dask.config import load_config
from popseg_dask.measure import contacts, measure_output, neighbours_within, read_measurements
from popseg_dask.pipeline import run


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory, small_movie):
    """A run with 64-px tiles, so that many objects are cut by tiles."""
    from distributed import Client, LocalCluster

    from popseg_dask.io.images import write_ome_zarr_image
    from popseg_dask.synthetic import DEMO_CONFIG

    d = tmp_path_factory.mktemp("run")
    write_ome_zarr_image(d / "movie.ome.zarr", small_movie.image, small_movie.channels,
                         pixel_size_um=small_movie.pixel_size_um)
    cfg = {**DEMO_CONFIG, "populations": {k: {**v, "tile": [64, 64], "halo": 26}
                                          for k, v in DEMO_CONFIG["populations"].items()}}
    (d / "run.yaml").write_text(yaml.safe_dump(cfg))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cl, Client(cl) as client:
        rec = run(load_config(d / "run.yaml"), client=client)
        res = measure_output(d / "movie.popseg.zarr", client=client, radius_um=15)
    return d, rec, res


def test_measurements_equal_regionprops_on_the_untiled_frame(tiled_run, small_movie):
    from skimage.measure import regionprops_table

    d, rec, res = tiled_run
    df = read_measurements(res["path"])
    assert set(res["rows"]) == {"targets", "effectors"}
    for pop in ("targets", "effectors"):
        labels = read_labels(d / "movie.popseg.zarr", pop)
        sub = df[df["population"] == pop]
        assert len(sub) == rec["populations"][pop]["n_objects"]
        for t in range(labels.shape[0]):
            ref = regionprops_table(labels[t], intensity_image=np.moveaxis(small_movie.image[t], 0, -1),
                                    properties=["label", "area", "centroid", "perimeter", "eccentricity",
                                                "solidity", "intensity_mean", "intensity_max"])
            got = sub[sub["frame"] == t].sort_values("id")
            np.testing.assert_array_equal(got["id"].to_numpy(), ref["label"])
            np.testing.assert_array_equal(got["area_px"].to_numpy(), ref["area"])
            np.testing.assert_allclose(got["centroid_x_px"].to_numpy(), ref["centroid-1"])
            np.testing.assert_allclose(got["perimeter_px"].to_numpy(), ref["perimeter"])
            np.testing.assert_allclose(got["solidity"].to_numpy(), ref["solidity"])
            np.testing.assert_allclose(got["nuclei_mean"].to_numpy(), ref["intensity_mean-0"])
            np.testing.assert_allclose(got["cfse_max"].to_numpy(), ref["intensity_max-1"])
            np.testing.assert_allclose(got["area_um2"].to_numpy(), ref["area"] * 0.65**2)


def test_parquet_schema_and_dtypes(tiled_run):
    d, rec, res = tiled_run
    parts = sorted(p.name for p in (d / "movie.popseg.zarr" / "measurements.parquet").iterdir())
    assert parts == ["population=effectors", "population=targets"]
    df = pd.read_parquet(res["path"])
    assert df["id"].dtype == np.uint64 and df["frame"].dtype == np.int32 and df["area_px"].dtype == np.int64
    for col in ("centroid_y_um", "eccentricity", "axis_major_px", "nuclei_std", "cfse_min",
                "touching_effectors", "within_15um_targets", "touching_targets", "within_15um_effectors"):
        assert col in df.columns
    t = df[df["population"] == "targets"]
    assert (t["touching_effectors"] >= 0).all() and t["within_15um_effectors"].dtype == np.int64


def test_contacts_and_radius_counts():
    a = np.zeros((8, 8), int)
    b = np.zeros((8, 8), int)
    a[1:3, 1:3] = 1
    a[6, 6] = 2
    b[3, 3] = 7          # diagonal neighbour of object 1
    b[1, 5] = 8          # two pixels away: not touching
    assert contacts(a, b) == {1: 1}
    a[3, 4] = 3          # touches object 1 diagonally? no: (2,2)-(3,4) are two columns apart
    a[3, 3] = 4          # touches object 1 diagonally
    assert contacts(a, a) == {1: 1, 3: 1, 4: 2}
    assert neighbours_within(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [10.0, 0.0]]), 5.0).tolist() == [1]


def test_report_pngs_are_real_pictures(tiled_run):
    import matplotlib.image as mpimg

    from popseg_dask.report import write_report

    d, rec, res = tiled_run
    page = write_report(d / "movie.popseg.zarr", frames=3)
    text = page.read_text()
    for png in ("overlay.png", "objects_per_frame.png", "areas.png", "timings.png"):
        assert png in text
        img = mpimg.imread(page.parent / png)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.02, f"{png} is blank"
    over = mpimg.imread(page.parent / "overlay.png")[..., :3]
    # population colours appear on the contours
    reds = ((over[..., 0] > 0.9) & (over[..., 1] < 0.35) & (over[..., 2] < 0.3)).sum()
    greens = ((over[..., 1] > 0.7) & (over[..., 0] < 0.35) & (over[..., 2] < 0.5)).sum()
    assert reds > 50 and greens > 50


def test_celldetective_export_round_trip(tiled_run, tmp_path, capsys):
    import tifffile

    d, rec, res = tiled_run
    out = d / "movie.popseg.zarr"
    assert main(["export", "celldetective", str(out), "--to", str(tmp_path / "exp"), "--position", "101"]) == 0
    for pop in ("targets", "effectors"):
        labels = read_labels(out, pop)
        files = sorted((tmp_path / "exp" / "W1" / "101" / f"labels_{pop}").glob("*.tif"))
        assert [f.name for f in files] == [f"{t:04d}.tif" for t in range(labels.shape[0])]
        for t, f in enumerate(files):
            with tifffile.TiffFile(f) as tif:
                assert tif.is_imagej
                back = tif.asarray()
            assert back.dtype == np.uint16
            # same objects, ids compact per frame
            assert back.max() == len(np.unique(labels[t])) - 1
            pairs = np.unique(np.stack([back.ravel(), labels[t].ravel()]), axis=1)
            assert pairs.shape[1] == back.max() + 1
    assert main(["export", "celldetective", str(out), "--to", str(tmp_path / "exp"), "--position", "101"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_celldetective_import(tmp_path, capsys):
    import tifffile

    exp = tmp_path / "exp"
    (exp / "configs").mkdir(parents=True)
    (exp / "W1" / "100" / "movie").mkdir(parents=True)
    tifffile.imwrite(exp / "W1" / "100" / "movie" / "Aligned_movie.tif", np.zeros((6, 32, 32), np.uint16))
    (exp / "config.ini").write_text(
        "[MovieSettings]\npxtoum = 0.31\nframetomin = 2.0\nlen_movie = 3\nmovie_prefix = Aligned\n"
        "[Channels]\nbrightfield_channel = 1\nnuclei_channel = 0\nfitc_channel = nan\n"
        "[Populations]\npopulations = targets,effectors\n")
    (exp / "configs" / "threshold_config_targets.json").write_text(json.dumps(
        {"target_channel": "nuclei_channel", "thresholds": [10, 1e9], "filters": [["gauss", 1]],
         "marker_min_distance": 5, "marker_footprint_size": 5, "feature_queries": [""],
         "equalize_reference": [False, 0], "do_watershed": True, "fill_holes": True}))
    assert main(["import", "celldetective", str(exp)]) == 0
    text = capsys.readouterr().out
    cfg = yaml.safe_load(text)
    assert cfg["channels"] == ["nuclei_channel", "brightfield_channel"]
    assert cfg["pixel_size_um"] == 0.31 and list(cfg["populations"]) == ["targets"]
    # and the imported config runs
    (tmp_path / "c.yaml").write_text(text)
    assert main(["run", str(tmp_path / "c.yaml"), "--workers", "1", "--quiet"]) == 0


def test_napari_layers_are_lazy(tiled_run):
    import dask.array as da

    from popseg_dask.view import InProcess, napari_layers

    d, rec, res = tiled_run
    layers = napari_layers(d / "movie.popseg.zarr")
    kinds = [(k, kw["name"]) for _, kw, k in layers]
    assert kinds[:2] == [("image", "nuclei"), ("image", "cfse")]
    assert sorted(kinds[2:]) == [("labels", "effectors"), ("labels", "targets")]
    # images: the movie's dask array, sliced in this process; labels: the Zarr arrays themselves
    assert all(isinstance(data, InProcess) and isinstance(data.array, da.Array) for data, _, _ in layers[:2])
    assert all(isinstance(data, zarr.Array) for data, _, _ in layers[2:])
    assert all(layer[0].shape == (4, 192, 192) for layer in layers[2:]) and layers[0][1]["scale"] == (1.0, 0.65, 0.65)


def test_measure_refuses_incomplete_or_foreign_output(tmp_path, capsys):
    zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    assert main(["measure", str(tmp_path / "x.zarr")]) == 2
    assert "not a popseg output" in capsys.readouterr().err


def test_measure_refuses_to_overwrite_without_asking(tiled_run, capsys):
    d, rec, res = tiled_run
    assert main(["measure", str(d / "movie.popseg.zarr"), "--workers", "1", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _contacts_reference(a, b, same):
    """Nine shifted comparisons of the whole frame: slow, obviously right."""
    H, W = a.shape
    pairs = set()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            for y in range(H):
                for x in range(W):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < H and 0 <= xx < W and a[y, x] and b[yy, xx] and not (same and a[y, x] == b[yy, xx]):
                        pairs.add((int(a[y, x]), int(b[yy, xx])))
    out = {}
    for i, _ in pairs:
        out[i] = out.get(i, 0) + 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_contacts_match_a_brute_force_reference(seed):
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    a = label(rng.random((40, 50)) > 0.7)
    b = label(rng.random((40, 50)) > 0.75)
    assert contacts(a, b) == _contacts_reference(a, b, False)
    assert contacts(a, a) == _contacts_reference(a, a, True)
