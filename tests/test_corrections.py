"""Corrections beside a run's labels: edit helpers, the id rule, the record, what refuses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import zarr

from conftest import read_labels
from popseg_dask import corrections as corr
from popseg_dask.config import load_config, parse_config
from popseg_dask.errors import PopsegError
from popseg_dask.io.lease import Lease
from popseg_dask.io.layout import OutputLayout
from popseg_dask.pipeline import run
from popseg_dask.synthetic import DEMO_CONFIG


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, small_movie, client2):
    """A finished run of the small movie (module-wide; tests copy its output before writing)."""
    import yaml

    from popseg_dask.io.images import write_ome_zarr_image

    root = tmp_path_factory.mktemp("corr")
    write_ome_zarr_image(root / "movie.ome.zarr", small_movie.image, small_movie.channels,
                         pixel_size_um=small_movie.pixel_size_um)
    (root / "run.yaml").write_text(yaml.safe_dump(DEMO_CONFIG, sort_keys=False))
    rec = run(load_config(root / "run.yaml"), client=client2)
    return root, rec


@pytest.fixture
def output(done_run, tmp_path):
    import shutil

    root, _ = done_run
    shutil.copytree(root / "movie.ome.zarr", tmp_path / "movie.ome.zarr")
    shutil.copytree(root / "movie.popseg.zarr", tmp_path / "movie.popseg.zarr")
    shutil.copy(root / "run.yaml", tmp_path / "run.yaml")
    return tmp_path / "movie.popseg.zarr"


def two_touching():
    f = np.zeros((20, 30), np.uint32)
    f[2:10, 2:12] = 5
    f[2:10, 12:20] = 7
    f[4:6, 4:6] = 0  # a hole in 5
    return f


def test_edit_helpers_merge_delete_fill_split():
    f = two_touching()
    m = corr.merge_objects(f, 5, 7)
    assert set(np.unique(m)) == {0, 5} and (m == 5).sum() == (f > 0).sum()
    assert set(np.unique(corr.delete_object(f, 7))) == {0, 5}
    filled = corr.fill_object_holes(f, 5)
    assert filled[4:6, 4:6].tolist() == [[5, 5], [5, 5]] and (filled == 7).sum() == (f == 7).sum()
    # a vertical cut through 5 at x = 6: two pieces, the larger keeps 5, the other gets 100
    cut, new = corr.split_object(filled, 5, np.array([[0, 6], [15, 6]]), 100)
    assert new == [100] and set(np.unique(cut)) == {0, 5, 7, 100}
    assert (cut == 5).sum() > (cut == 100).sum() and (cut[2:10, 2:6] == 100).all()
    assert ((cut == 100) | (cut == 5)).sum() == (filled == 5).sum()  # no pixel lost
    with pytest.raises(PopsegError, match="does not cut object 5 in two"):
        corr.split_object(filled, 5, np.array([[0, 25], [15, 25]]), 100)
    with pytest.raises(PopsegError, match="object 9 is not in this frame"):
        corr.delete_object(f, 9)
    assert f[4, 4] == 0 and (f == 7).any()  # inputs never modified


def test_save_keeps_the_run_labels_and_ids_unique(output):
    pop = "targets"
    before = read_labels(output, pop)
    n = int(load_record(output)["populations"][pop]["n_objects"])
    t = 1
    frame = corr.frame_for_editing(output, pop, t)
    ids = [int(i) for i in np.unique(frame) if i]
    edited = corr.delete_object(frame, ids[0])
    other = int(before[0][before[0] > 0][0])  # an id of frame 0, painted into frame 1 by mistake
    edited[:3, :3] = other
    edited[-3:, -3:] = 10**6  # a brand-new object with an arbitrary id
    res = corr.save_corrections(output, pop, {t: edited, 2: corr.frame_for_editing(output, pop, 2)})
    assert res["saved"] == [1]  # frame 2 unchanged: not recorded
    assert np.array_equal(read_labels(output, pop), before)  # the run's labels are untouched
    c = corr.open_corrections(output, pop)
    assert c.frames == [1] and c.record["from"] == "labels/targets"
    assert c.record["from_fingerprint"] == load_record(output)["populations"][pop]["fingerprint"]
    saved = c.frame(1)
    assert ids[0] not in saved
    assert saved[0, 0] > n and saved[-1, -1] > n and saved[0, 0] != saved[-1, -1]  # renumbered, unique
    others = set(np.unique(np.delete(before, 1, axis=0)).tolist())
    assert not (set(np.unique(saved).tolist()) - {0}) & others  # no id shared with another frame
    assert res["renumbered"][1] == {other: int(saved[0, 0]), 10**6: int(saved[-1, -1])}
    # a second save adds to the first
    f2 = corr.delete_object(corr.frame_for_editing(output, pop, 2), int(np.unique(before[2])[1]))
    res2 = corr.save_corrections(output, pop, {2: f2})
    c = corr.open_corrections(output, pop)
    assert c.frames == [1, 2] and len(c.record["saves"]) == 2 and res2["next_id"] == res["next_id"]
    assert np.array_equal(corr.frame_for_editing(output, pop, 1), saved)  # editing starts from the correction
    labels_list = zarr.open_group(str(OutputLayout(output).labels_group), mode="r").attrs["ome"]["labels"]
    assert "targets-corrected" in labels_list and "targets" in labels_list


def load_record(output):
    from popseg_dask.io.record import read_run_record

    return read_run_record(output)


def test_corrections_are_valid_ngff_and_read_by_ome_zarr(output):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    frame = corr.frame_for_editing(output, "effectors", 0)
    corr.save_corrections(output, "effectors", {0: corr.delete_object(frame, int(np.unique(frame)[1]))})
    grp = OutputLayout(output).label_group("effectors-corrected")
    node = next(n for n in Reader(parse_url(str(grp)))() if n.metadata.get("name") == "effectors-corrected")
    data = np.asarray(node.data[0])
    assert np.array_equal(data[0], corr.open_corrections(output, "effectors").frame(0))
    from ome_zarr_models.v05 import ImageLabel, Labels

    model = ImageLabel.from_zarr(zarr.open_group(str(grp), mode="r"))
    assert model.attributes.ome.multiscales[0].name == "effectors-corrected"
    src = model.attributes.ome.image_label.source.image
    assert (grp.url and (output / "labels" / "effectors-corrected" / src).resolve()
            == (output.parent / "movie.ome.zarr").resolve())
    labels = Labels.from_zarr(zarr.open_group(str(output / "labels"), mode="r"))
    assert sorted(labels.attributes.ome.labels) == ["effectors", "effectors-corrected", "targets"]


def test_save_refused_while_a_run_holds_the_output(output):
    lease = Lease(OutputLayout(output).lease)
    lease.acquire()
    try:
        frame = corr.frame_for_editing(output, "targets", 0)
        with pytest.raises(PopsegError, match="being written by another run"):
            corr.save_corrections(output, "targets", {0: corr.delete_object(frame, int(np.unique(frame)[1]))})
    finally:
        lease.release()
    assert corr.open_corrections(output, "targets") is None


def test_overwrite_refuses_to_delete_corrections_and_runs_keep_them(demo_dir, client2):
    run(load_config(demo_dir / "run.yaml"), client=client2)
    output = demo_dir / "movie.popseg.zarr"
    frame = corr.frame_for_editing(output, "targets", 0)
    corr.save_corrections(output, "targets", {0: corr.delete_object(frame, int(np.unique(frame)[1]))})
    cfg = load_config(output.parent / "run.yaml")
    with pytest.raises(PopsegError, match="holds proofread labels .*labels/targets-corrected"):
        run(cfg, client=client2, overwrite=True)
    data = copy.deepcopy(DEMO_CONFIG)
    data["populations"]["targets"]["marker_min_distance"] = 7  # recomputes targets, keeps the corrections
    run(parse_config(data, output.parent), client=client2)
    assert corr.open_corrections(output, "targets").frames == [0]


def test_population_names_ending_in_corrected_are_refused():
    data = copy.deepcopy(DEMO_CONFIG)
    data["populations"]["targets-corrected"] = data["populations"].pop("targets")
    with pytest.raises(PopsegError, match="ends with '-corrected'"):
        parse_config(data)
