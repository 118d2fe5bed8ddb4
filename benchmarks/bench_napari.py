"""The napari tuner: time from a changed setting to an updated preview on 2048² frames.

``napari``: a real viewer (needs an X display: ``xvfb-run -a python benchmarks/run.py napari``)
with the pipeline tuner docked on the demo's co-culture at 2048²; ten edits of the targets'
``marker_min_distance`` (alternating values, each a new setting), each timed from the editor's
change to the preview layer holding the new labels (debounce included), against the same
preview computed directly (:meth:`popseg_dask.preview.Preview.labels`) in the same run. Writes the
README's two screenshots (tuner, proofreading) into ``docs/``.
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import demo_movie

DOCS = Path(__file__).resolve().parents[1] / "docs"


def napari_preview(a) -> dict:
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    import napari
    import yaml
    from qtpy.QtWidgets import QApplication

    from popseg_dask.napari_plugin.tuner import TunerWidget
    from popseg_dask.preview import Preview
    from popseg_dask.synthetic import DEMO_CONFIG

    size, frames, repeats = a.size or 2048, a.frames or 2, a.repeats or 10
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_movie(tmp, frames, size, seed=4)
        (tmp / "run.yaml").write_text(yaml.safe_dump(copy.deepcopy(DEMO_CONFIG), sort_keys=False))
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        widget = TunerWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Pipeline tuner")
        app = QApplication.instance()
        widget.load(tmp / "run.yaml")
        wait(app, lambda: widget.previews_done >= 1 and widget.idle)
        gui, direct = [], []
        direct_preview = Preview(yaml.safe_load((tmp / "run.yaml").read_text()), tmp)
        for i in range(repeats):
            value = 6 + i % 5  # each edit a setting the preview has not cached
            n = widget.previews_done
            t0 = time.perf_counter()
            widget.form.set_value("marker_min_distance", value)
            wait(app, lambda: widget.previews_done > n and widget.idle)
            gui.append(time.perf_counter() - t0)
            assert widget.last_result["settings"]["marker_min_distance"] == value
            settings = {**direct_preview.settings("targets"), "marker_min_distance": value}
            t0 = time.perf_counter()
            direct_preview.labels("targets", widget.frame_index(), settings)
            direct.append(time.perf_counter() - t0)
        shots = screenshots(viewer, app, widget, tmp) if a.screenshots else []
        wait(app, lambda: widget.idle)
        viewer.close()
    return {"size": size, "frames": frames, "repeats": repeats, "gui_s": gui, "direct_s": direct,
            "median_gui_s": statistics.median(gui), "median_direct_s": statistics.median(direct),
            "debounce_ms": 150, "screenshots": [str(p) for p in shots]}


def wait(app, done, timeout: float = 300.0) -> None:
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        time.sleep(0.005)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the preview did not arrive")


def screenshots(viewer, app, tuner, tmp: Path) -> list[Path]:
    """The tuner on its preview, then proofreading a run's frame (both saved under docs/)."""
    from popseg_dask.config import load_config
    from popseg_dask.napari_plugin.proofread import ProofreadWidget
    from popseg_dask.pipeline import run

    DOCS.mkdir(exist_ok=True)
    viewer.layers["nuclei"].contrast_limits = (0, float(np.percentile(np.asarray(viewer.layers["nuclei"].data[0]), 99.5)))
    viewer.camera.zoom *= 2.5
    app.processEvents()
    first = DOCS / "napari-tuner.png"
    shrink(first, viewer.screenshot(canvas_only=False, flash=False))
    run(load_config(tmp / "run.yaml"), n_workers=2)
    wait(app, lambda: tuner.idle)
    viewer.window.remove_dock_widget(tuner)
    viewer.layers.clear()
    viewer.open(str(tmp / "movie.popseg.zarr"), plugin="popseg-dask")
    proof = ProofreadWidget(viewer)
    viewer.window.add_dock_widget(proof, name="Proofread")
    proof.population.setCurrentText("targets")
    proof.edit()
    viewer.layers["effectors"].visible = False
    viewer.layers["cfse"].visible = False
    viewer.camera.zoom *= 3
    app.processEvents()
    second = DOCS / "napari-proofread.png"
    shrink(second, viewer.screenshot(canvas_only=False, flash=False))
    return [first, second]


def shrink(path: Path, rgba: np.ndarray, width: int = 1100) -> None:
    """A screenshot small enough for a repository: 1100 px wide, 256 colours."""
    from PIL import Image

    img = Image.fromarray(rgba[..., :3])
    img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.quantize(colors=256).save(path, optimize=True)


def show_napari_preview(res: dict) -> None:
    print(f"napari: tuner preview of the targets on a {res['size']}² frame, {res['repeats']} edits of "
          f"marker_min_distance, medians:")
    print(f"  edit -> preview layer updated (debounce {res['debounce_ms']} ms included): {res['median_gui_s']:.2f} s")
    print(f"  the same preview computed directly (Preview.labels):                 {res['median_direct_s']:.2f} s")
    print(f"  ratio GUI / direct: {res['median_gui_s'] / res['median_direct_s']:.2f}")
    for p in res["screenshots"]:
        print(f"  screenshot: {p}")


def region_preview(a) -> dict:
    """``region``: the tuner's preview of a frame too big to preview whole (default 8192², above
    ``Preview.whole_frame_pixels``): the whole frame vs a 1024² visible region after an edit (the
    frame's facts computed again, tile by tile) and after a pan (facts kept), interleaved; and
    whether the region equals the whole frame's preview there. Both paths read the frame once and
    keep it (the whole one in the preview, the region one in the engine's frame cache)."""
    from popseg_dask.preview import Preview
    from popseg_dask.stitch import canonical_relabel
    from popseg_dask.synthetic import DEMO_CONFIG

    size, repeats, view = a.size or 8192, a.repeats or 3, 1024
    times: dict[str, list[float]] = {"whole frame": [], "region, after an edit": [], "region, after a pan": []}
    equal = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo_movie(tmp, 1, size, seed=6)
        preview = Preview(copy.deepcopy(DEMO_CONFIG), tmp)
        settings = preview.settings("targets")
        for i in range(repeats):
            settings = {**settings, "marker_min_distance": 5 + i % 2}  # a new setting each repeat
            whole = preview.labels("targets", 0, settings)
            times["whole frame"].append(whole["seconds"])
            c = size // 2
            first = preview.labels("targets", 0, settings, region=(c - view, c, c - view, c))
            times["region, after an edit"].append(first["seconds"])
            pan = preview.labels("targets", 0, settings, region=(c, c + view, c, c + view))
            times["region, after a pan"].append(pan["seconds"])
            for res in (first, pan):
                y0, y1, x0, x1 = res["region"]
                equal &= bool(np.array_equal(res["labels"], canonical_relabel(whole["labels"][y0:y1, x0:x1])[0]))
        preview.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"size": size, "view": view, "repeats": repeats, "seconds": times, "median_s": med,
            "whole_over": {k: med["whole frame"] / v for k, v in med.items() if k != "whole frame"},
            "regions_equal_whole_frame": equal}


def show_region_preview(res: dict) -> None:
    print(f"region: tuner preview of the targets on a {res['size']}² frame, a {res['view']}² view, "
          f"median of {res['repeats']}:")
    for k, v in res["median_s"].items():
        ratio = res["whole_over"].get(k)
        print(f"  {k:24s} {v:7.2f} s" + (f"   whole frame / this: {ratio:5.1f}x" if ratio else ""))
    print(f"  regions == whole frame there: {res['regions_equal_whole_frame']}")
