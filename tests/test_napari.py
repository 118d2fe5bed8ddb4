"""The napari plugin, driven as a person would: a real viewer on a virtual X screen.

napari's OpenGL canvas needs an X server (offscreen Qt cannot make it): pytest-xvfb starts Xvfb
for the session (``make test`` installs both). Every widget is driven through its buttons and
editors, and each test asserts what that did to the viewer and to the output on disk.
"""

from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
import yaml

napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'popseg-dask[napari]')")
if not os.environ.get("DISPLAY"):
    pytest.skip("napari needs an X display: install Xvfb and pytest-xvfb (make test does)", allow_module_level=True)
os.environ["QT_QPA_PLATFORM"] = "xcb"  # conftest's offscreen default cannot draw napari's canvas
# `make test` runs this module in a pytest process of its own. Run in one session with the model
# tests, TensorFlow's LLVM is loaded first and Mesa's llvmpipe JIT crashes while drawing; softpipe
# draws without LLVM. (popseg never imports TensorFlow in a viewer's process: network previews
# run in a child, see popseg_dask.preview.)
os.environ.setdefault("GALLIUM_DRIVER", "softpipe")

from conftest import read_labels  # noqa: E402
from popseg_dask import corrections as corr  # noqa: E402
from popseg_dask.config import load_config, parse_config  # noqa: E402
from popseg_dask.pipeline import run, segment_frame  # noqa: E402
from popseg_dask.segmenters import build_segmenter  # noqa: E402
from popseg_dask.synthetic import DEMO_CONFIG  # noqa: E402

from qtpy.QtCore import Qt  # noqa: E402

LEFT = Qt.MouseButton.LeftButton
TILED = {**copy.deepcopy(DEMO_CONFIG), "output": "tiled.popseg.zarr"}
TILED["populations"]["targets"]["tile"] = [96, 96]  # 4 tiles per 192² frame: merges and all


@pytest.fixture(scope="module")
def gui_run(tmp_path_factory, small_movie, client2):
    """The small movie, a tiled config, and its finished run."""
    from popseg_dask.io.images import write_ome_zarr_image

    root = tmp_path_factory.mktemp("gui")
    write_ome_zarr_image(root / "movie.ome.zarr", small_movie.image, small_movie.channels,
                         pixel_size_um=small_movie.pixel_size_um)
    (root / "tiled.yaml").write_text(yaml.safe_dump(TILED, sort_keys=False))
    run(load_config(root / "tiled.yaml"), client=client2)
    return root


@pytest.fixture
def output(gui_run, tmp_path):
    """A copy of the run's output (and its movie, at the same relative place) to write into."""
    shutil.copytree(gui_run / "movie.ome.zarr", tmp_path / "movie.ome.zarr")
    shutil.copytree(gui_run / "tiled.popseg.zarr", tmp_path / "tiled.popseg.zarr")
    return tmp_path / "tiled.popseg.zarr"


def frame_offset(output, pop: str, t: int) -> int:
    from popseg_dask.io.record import read_run_record

    return int(sum(read_run_record(output)["populations"][pop]["objects_per_frame"][:t]))


def expected(config_data: dict, base, pop: str, movie, t: int) -> np.ndarray:
    spec = parse_config(config_data, base).populations[pop]
    seg = build_segmenter(pop, spec, list(movie.channels), pixel_size_um=movie.pixel_size_um)
    pixels = movie.image[t, [list(movie.channels).index(c) for c in seg.channels]]
    return segment_frame(seg, pixels, tile=spec.tile, halo=spec.halo)[0]


# --------------------------------------------------------------------------------------------- reader
def test_reader_opens_the_output_lazily_with_corrections(make_napari_viewer, output):
    frame = corr.frame_for_editing(output, "targets", 2)
    corr.save_corrections(output, "targets", {2: corr.delete_object(frame, int(np.unique(frame)[1]))})
    viewer = make_napari_viewer()
    layers = viewer.open(str(output), plugin="popseg-dask")
    names = [layer.name for layer in layers]
    assert names == ["nuclei", "cfse", "targets", "effectors", "targets-corrected"]
    for layer in layers:
        assert not isinstance(layer.data, np.ndarray)  # lazy: nothing read until shown
        assert tuple(layer.scale[-2:]) == (0.65, 0.65)
    assert viewer.layers["targets"].metadata == {"popseg_output": str(output), "population": "targets",
                                                 "corrected": False}
    assert viewer.layers["targets-corrected"].metadata["corrected"] is True
    assert np.array_equal(np.asarray(viewer.layers["targets-corrected"].data[2]),
                          corr.open_corrections(output, "targets").frame(2))
    assert np.array_equal(np.asarray(viewer.layers["targets"].data), read_labels(output, "targets"))


def test_reader_browses_a_multiscale_movie(make_napari_viewer, demo_dir, client2):
    import zarr

    from popseg_dask.io.movie import movie_levels, open_movie

    movie = demo_dir / "movie.ome.zarr"
    grp = zarr.open_group(str(movie), mode="a")
    full = np.asarray(grp["0"])
    zarr.create_array(store=str(movie / "1"), data=full[..., ::2, ::2], chunks=(1, 1, 96, 96))
    ome = dict(grp.attrs["ome"])
    ms = copy.deepcopy(ome["multiscales"][0])
    level1 = copy.deepcopy(ms["datasets"][0])
    level1["path"] = "1"
    level1["coordinateTransformations"][0]["scale"] = [
        s * (2 if i >= 2 else 1) for i, s in enumerate(level1["coordinateTransformations"][0]["scale"])]
    ms["datasets"].append(level1)
    grp.attrs["ome"] = {**ome, "multiscales": [ms]}
    levels = movie_levels(open_movie(movie))
    assert [lv.shape for lv in levels] == [(4, 2, 192, 192), (4, 2, 96, 96)]
    assert np.array_equal(np.asarray(levels[1][1]), full[1][:, ::2, ::2])
    run(load_config(demo_dir / "run.yaml"), client=client2)  # runs read level 0 only
    viewer = make_napari_viewer()
    viewer.open(str(demo_dir / "movie.popseg.zarr"), plugin="popseg-dask")
    nuclei = viewer.layers["nuclei"]
    assert nuclei.multiscale and len(nuclei.data) == 2 and nuclei.data[1].shape == (4, 96, 96)


def test_reader_opens_an_output_on_s3(make_napari_viewer, output, monkeypatch):
    from moto.server import ThreadedMotoServer

    from conftest import free_port
    from popseg_dask.location import Location
    from popseg_dask.napari_plugin.reader import get_reader

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "gui",
                     "AWS_SECRET_ACCESS_KEY": "gui-secret", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        fs = Location.of("s3://gui/x").fs()
        fs.mkdir("gui")
        # the run record names its movie by absolute path: the movie stays local, labels go to S3
        fs.put(str(output), "gui/tiled.popseg.zarr", recursive=True)
        assert get_reader("s3://gui/tiled.popseg.zarr") is not None
        assert get_reader(str(output.parent / "movie.ome.zarr")) is None  # not a popseg output
        viewer = make_napari_viewer()
        layers = viewer.open("s3://gui/tiled.popseg.zarr", plugin="popseg-dask")
        assert [x.name for x in layers][-2:] == ["targets", "effectors"]
        assert np.array_equal(np.asarray(viewer.layers["effectors"].data), read_labels(output, "effectors"))
        # corrections are saved into the remote output too (lease by conditional PUT), and read back
        remote = "s3://gui/tiled.popseg.zarr"
        frame = corr.frame_for_editing(remote, "effectors", 1)
        corr.save_corrections(remote, "effectors", {1: corr.delete_object(frame, int(np.unique(frame)[1]))})
        assert corr.open_corrections(remote, "effectors").frames == [1]
        assert get_reader(remote)(remote)[-1][1]["name"] == "effectors-corrected"
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------- tuner
def wait_preview(qtbot, widget, n_before: int) -> dict:
    qtbot.waitUntil(lambda: widget.previews_done > n_before and widget.idle, timeout=60_000)
    return widget.last_result


def test_tuner_preview_is_what_a_run_writes(make_napari_viewer, qtbot, gui_run, small_movie, tmp_path):
    from popseg_dask.napari_plugin.tuner import TunerWidget

    viewer = make_napari_viewer()
    widget = TunerWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked, as napari docks a plugin widget
    n = widget.previews_done
    widget.path.setText(str(gui_run / "tiled.yaml"))
    widget.load(widget.path.text())
    viewer.dims.set_current_step(0, 3)
    res = wait_preview(qtbot, widget, n)
    assert res["population"] == "targets" and res["frame"] == 3
    layer = viewer.layers["targets preview"]
    assert layer.translate[0] == 3 and layer.data.shape == (1, 192, 192)
    # the tiled population's preview equals the run's frame, ids shifted by the frame's offset
    out = gui_run / "tiled.popseg.zarr"
    ran = read_labels(out, "targets")[3].astype(np.int64)
    shifted = np.where(ran > 0, ran - frame_offset(out, "targets", 3), 0)
    assert np.array_equal(layer.data[0], shifted)
    # a person edits marker spacing: the preview becomes segment_frame with that setting
    n = widget.previews_done
    widget.form.set_value("marker_min_distance", 9)
    res = wait_preview(qtbot, widget, n)
    edited = copy.deepcopy(TILED)
    edited["populations"]["targets"]["marker_min_distance"] = 9
    assert res["settings"]["marker_min_distance"] == 9
    assert np.array_equal(viewer.layers["targets preview"].data[0], expected(edited, gui_run, "targets", small_movie, 3))
    assert "objects in" in widget.status.text()
    assert not widget.histogram.canvas.isHidden() and len(widget.histogram.axes.patches) > 1  # bars + range
    # a bad value shows the CLI's one line and keeps the last preview
    n = widget.previews_done
    widget.form.set_value("thresholds", [900, 100])
    wait_preview(qtbot, widget, n)
    assert widget.status.text().startswith("config error: 'populations.targets'") and "low <= high" in widget.status.text()
    widget.form.set_value("thresholds", [600, float("inf")])
    # save: the YAML runs as tuned, the JSON is Celldetective's threshold config of the same settings
    written = widget.save(str(tmp_path / "tuned.yaml"))
    assert [p.name for p in written] == ["tuned.yaml", "threshold_config_targets.json"]
    saved = load_config(tmp_path / "tuned.yaml")
    assert saved.populations["targets"].params()["marker_min_distance"] == 9
    from_json = {"segmenter": "threshold", "threshold_config": str(written[1]), "tile": [96, 96]}
    a, _ = widget.preview.segmenter("targets", from_json)
    b, _ = widget.preview.segmenter("targets", widget.settings())
    assert a.params.model_dump(exclude={"threshold_config"}) == b.params.model_dump(exclude={"threshold_config"})
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)


def test_tuner_previews_the_visible_region_of_a_frame_too_big_to_preview_whole(make_napari_viewer, qtbot, gui_run,
                                                                            monkeypatch):
    """Frames above Preview.whole_frame_pixels (lowered so the 192² frames count) preview the
    region on screen: placed where it lies, equal to the run's frame there; panning away
    previews the new region."""
    from popseg_dask.napari_plugin.tuner import TunerWidget
    from popseg_dask.preview import Preview
    from popseg_dask.stitch import canonical_relabel

    monkeypatch.setattr(Preview, "whole_frame_pixels", 80 * 80)
    viewer = make_napari_viewer(show=True)  # drawn: the visible region comes from the canvas
    widget = TunerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    n = widget.previews_done
    widget.load(str(gui_run / "tiled.yaml"))
    viewer.dims.set_current_step(0, 2)
    wait_preview(qtbot, widget, n)
    px = widget.preview.movie.attrs["pixel_size_um"]
    out = gui_run / "tiled.popseg.zarr"
    ran = read_labels(out, "targets")[2].astype(np.int64)
    seen = []
    for cy, cx in ((50, 50), (150, 130)):  # frame pixels the view is centred on
        n = widget.previews_done
        viewer.camera.zoom = 12.0
        viewer.camera.center = (cy * px, cx * px)
        res = wait_preview(qtbot, widget, n)
        y0, y1, x0, x1 = res["region"]
        assert (y1 - y0) * (x1 - x0) <= 80 * 80 < 192 * 192, res["region"]
        assert y0 <= cy < y1 and x0 <= cx < x1, (res["region"], cy, cx)
        view = widget.visible_region()
        assert view is not None and y0 <= view[0] and view[1] <= y1 and x0 <= view[2] and view[3] <= x1
        layer = viewer.layers["targets preview"]
        assert tuple(layer.translate) == pytest.approx((2.0, y0 * px, x0 * px))
        assert layer.data.shape == (1, y1 - y0, x1 - x0)
        assert np.array_equal(layer.data[0], canonical_relabel(ran[y0:y1, x0:x1])[0])
        assert "rows" in widget.status.text() and layer.data.max() > 0
        seen.append(res["region"])
    assert seen[0] != seen[1]
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)


def test_tuner_switches_population_and_reports_a_missing_config(make_napari_viewer, qtbot, gui_run):
    from popseg_dask.napari_plugin.tuner import TunerWidget

    viewer = make_napari_viewer()
    widget = TunerWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked, as napari docks a plugin widget
    widget.load(gui_run / "nope.yaml")
    assert widget.status.text().startswith("config file not found")
    widget.load(gui_run / "tiled.yaml")
    n = widget.previews_done
    widget.population.setCurrentText("effectors")
    res = wait_preview(qtbot, widget, n)
    qtbot.waitUntil(lambda: widget.last_result.get("population") == "effectors", timeout=60_000)
    assert "effectors preview" in viewer.layers
    assert widget.form.value("marker_min_distance") == 12  # the population's own settings in the form
    assert res is not None
    qtbot.waitUntil(lambda: widget.idle, timeout=60_000)  # nothing left to land on a closed viewer


# --------------------------------------------------------------------------------------------- runner
def test_run_widget_runs_in_the_background_and_opens_the_result(make_napari_viewer, qtbot, demo_dir):
    from popseg_dask.napari_plugin.runner import RunWidget

    viewer = make_napari_viewer()
    widget = RunWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked, as napari docks a plugin widget
    widget.config.setText(str(demo_dir / "nope.yaml"))
    qtbot.mouseClick(widget.button, LEFT)
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget.error.startswith("config file not found") and widget.status.text() == widget.error
    widget.config.setText(str(demo_dir / "run.yaml"))
    widget.workers.setValue(1)
    qtbot.mouseClick(widget.button, LEFT)
    assert widget.running  # the call returned at once: the viewer is not blocked
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.error is None and widget.record["complete"]
    assert widget.bar.value() == widget.bar.maximum() == 1
    assert widget.dashboard_url.startswith("http")
    assert {"targets", "effectors"} <= {layer.name for layer in viewer.layers}
    assert np.array_equal(np.asarray(viewer.layers["targets"].data),
                          read_labels(demo_dir / "movie.popseg.zarr", "targets"))


# --------------------------------------------------------------------------------------------- proofreading
def test_proofreading_saves_corrections_beside_the_labels(make_napari_viewer, qtbot, output):
    from popseg_dask.napari_plugin.proofread import ProofreadWidget

    viewer = make_napari_viewer()
    viewer.open(str(output), plugin="popseg-dask")
    widget = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked, as napari docks a plugin widget
    assert widget.output.text() == str(output)  # found from the reader's layers
    before = read_labels(output, "targets")
    widget.population.setCurrentText("targets")
    widget.first.setValue(1)
    widget.last.setValue(2)
    qtbot.mouseClick(widget.buttons["Edit frames"], LEFT)
    layer = viewer.layers["targets edit"]
    assert layer.data.shape == (2, 192, 192) and layer.translate[0] == 1
    viewer.dims.set_current_step(0, 1)
    f1 = before[1]
    a, b, c = [int(i) for i in np.unique(f1)[1:4]]
    layer.selected_label = a
    widget.other.setValue(b)
    qtbot.mouseClick(widget.buttons["Merge selected + id"], LEFT)
    assert not (layer.data[0] == b).any() and ((layer.data[0] == a).sum() == ((f1 == a) | (f1 == b)).sum())
    layer.selected_label = c
    qtbot.mouseClick(widget.buttons["Delete selected"], LEFT)
    assert not (layer.data[0] == c).any()
    # split the largest object of frame 2 along a line drawn through its centre
    viewer.dims.set_current_step(0, 2)
    f2 = before[2]
    ids, sizes = np.unique(f2[f2 > 0], return_counts=True)
    big = int(ids[np.argmax(sizes)])
    ys, xs = np.nonzero(f2 == big)
    qtbot.mouseClick(widget.buttons["Draw split line"], LEFT)
    shapes = viewer.layers["split line"]
    cx = float(np.median(xs))  # a vertical line through the object, in the layer's pixel coordinates
    shapes.add_paths([np.array([[2, ys.min() - 2, cx], [2, ys.max() + 2, cx]])])
    layer.selected_label = big
    qtbot.mouseClick(widget.buttons["Split selected along line"], LEFT)
    assert "split" in widget.status.text(), widget.status.text()
    pieces = set(np.unique(layer.data[1][f2 == big]).tolist()) - {0}
    assert big in pieces and len(pieces) >= 2
    # a new object painted with the new-id button's label
    qtbot.mouseClick(widget.buttons["New object id"], LEFT)
    new = int(layer.selected_label)
    data = np.asarray(layer.data).copy()
    data[1, :4, :4] = new
    layer.data = data
    qtbot.mouseClick(widget.buttons["Save corrections"], LEFT)
    assert widget.last_save is not None, widget.status.text()
    c_ = corr.open_corrections(output, "targets")
    assert c_.frames == [1, 2] and widget.last_save["saved"] == [1, 2]
    assert np.array_equal(read_labels(output, "targets"), before)  # the original is never written
    saved2 = c_.frame(2)
    n_objects = int(before.max())
    assert all(i > n_objects for i in set(np.unique(saved2[f2 == big]).tolist()) - {big, 0})
    assert "targets-corrected" in viewer.layers
    # reopening shows the corrections; a second save adds to them
    widget.first.setValue(3)
    widget.last.setValue(3)
    qtbot.mouseClick(widget.buttons["Edit frames"], LEFT)
    viewer.dims.set_current_step(0, 3)
    layer = viewer.layers["targets edit"]
    layer.selected_label = int(np.unique(before[3])[1])
    qtbot.mouseClick(widget.buttons["Delete selected"], LEFT)
    qtbot.mouseClick(widget.buttons["Save corrections"], LEFT)
    c_ = corr.open_corrections(output, "targets")
    assert c_.frames == [1, 2, 3] and len(c_.record["saves"]) == 2
    # a mistake gets one line, not a traceback
    layer.selected_label = 10**7
    qtbot.mouseClick(widget.buttons["Delete selected"], LEFT)
    assert widget.status.text().startswith("object 10000000 is not in this frame")


# --------------------------------------------------------------------------------------------- export, train
def test_export_and_train_from_corrections(make_napari_viewer, qtbot, output, tmp_path):
    import importlib.util

    if importlib.util.find_spec("stardist") is None:  # not imported here: see popseg_dask.preview
        pytest.skip("training needs the stardist extra")
    from popseg_dask.napari_plugin.trainer import TrainWidget
    from popseg_dask.preview import Preview

    for t in (0, 1):
        f = corr.frame_for_editing(output, "targets", t)
        corr.save_corrections(output, "targets", {t: corr.delete_object(f, int(np.unique(f)[1]))})
    viewer = make_napari_viewer()
    viewer.open(str(output), plugin="popseg-dask")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)  # docked, as napari docks a plugin widget
    assert widget.output.text() == str(output) and widget.population.text() == "targets"
    widget.dataset.setText(str(tmp_path / "set"))
    qtbot.mouseClick(widget.buttons["Export"], LEFT)
    assert sorted({i["frame"] for i in widget.export_meta["items"]}) == [0, 1]  # only the corrected
    assert widget.export_meta["source"]["corrected"] is True
    # cancel: the child process ends and no model folder appears
    widget.model.setText(str(tmp_path / "cancelled"))
    widget.epochs.setValue(50)
    qtbot.mouseClick(widget.buttons["Train"], LEFT)
    qtbot.mouseClick(widget.buttons["Cancel"], LEFT)
    qtbot.waitUntil(lambda: widget.process is None, timeout=30_000)
    assert widget.result == {"cancelled": True, "code": widget.result["code"]}
    assert not (tmp_path / "cancelled").exists() and widget.status.text() == "training cancelled"
    # a real (tiny) training, then the model in a config, previewed
    widget.model.setText(str(tmp_path / "sd"))
    widget.size.setCurrentText("tiny")
    widget.epochs.setValue(1)
    widget.steps.setValue(2)
    qtbot.mouseClick(widget.buttons["Train"], LEFT)
    qtbot.waitUntil(lambda: widget.process is None, timeout=240_000)
    assert widget.result and "model" in widget.result, "\n".join(widget.log_lines[-5:])
    assert 0 <= widget.result["f1_05"] <= 1 and (tmp_path / "sd").is_dir()
    cfg = {**copy.deepcopy(TILED), "input": str(output.parent / "movie.ome.zarr")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    widget.config.setText(str(tmp_path / "cfg.yaml"))
    qtbot.mouseClick(widget.buttons["Use in config"], LEFT)
    data = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert data["populations"]["targets-stardist"]["channels"] == ["nuclei"]
    preview = Preview(data, tmp_path)
    try:
        res = preview.labels("targets-stardist", 0)  # in a child process: no TensorFlow beside OpenGL
    finally:
        preview.close()
    assert res["labels"].shape == (192, 192) and res["labels"].dtype.kind == "u"


def test_export_training_and_train_cli_take_corrections(output, tmp_path, capsys):
    from popseg_dask.cli import main

    assert main(["export-training", str(output), "--population", "targets", "--corrected",
                 "--out", str(tmp_path / "x")]) != 0
    assert "has no corrected frames" in capsys.readouterr().err
    f = corr.frame_for_editing(output, "targets", 3)
    corr.save_corrections(output, "targets", {3: corr.delete_object(f, int(np.unique(f)[1]))})
    assert main(["export-training", str(output), "--population", "targets", "--corrected",
                 "--out", str(tmp_path / "x")]) == 0
    import json

    meta = json.loads((tmp_path / "x" / "dataset.json").read_text())
    assert [i["frame"] for i in meta["items"]] == [3]
    assert main(["train", "stardist", str(output), "--out", str(tmp_path / "m")]) != 0
    assert "give --population" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- screenshot
def test_screenshot_with_the_plugin_docked_is_not_blank(make_napari_viewer, qtbot, output, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(output), plugin="popseg-dask")
    viewer.window.add_plugin_dock_widget("popseg-dask", "Proofread")
    viewer.window.add_plugin_dock_widget("popseg-dask", "Pipeline tuner")
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.shape[0] > 300 and shot.shape[1] > 600
    assert shot[..., :3].std() > 10 and len(np.unique(canvas[..., :3].reshape(-1, 3), axis=0)) > 20
