"""Pipeline tuner: edit a population's settings and see, on the current frame, what a run writes.

The preview is :meth:`popseg_dask.preview.Preview.labels` — ``segment_frame`` with the run's
tile policy, or ``segment_region`` around the visible part of a frame too big to preview whole —
computed in a background thread; edits made while one is computing are gathered into the next. Save writes the config (and, for threshold populations, Celldetective's
``threshold_config_<population>.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QVBoxLayout, QWidget)

from ..config import read_yaml
from ..errors import PopsegError
from ..io.celldetective import threshold_config_json
from ..pipeline import clip_region
from ..preview import Preview
from .forms import SettingsForm, segmenter_fields
from .layers import ensure_movie_layers, one_line, set_labels_layer

__all__ = ["TunerWidget"]

DEBOUNCE_MS = 150


class TunerWidget(QWidget):
    """Docked widget: config, population, settings form, histogram, live preview, save."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.preview: Preview | None = None
        self.config_path: Path | None = None
        self.last_result: dict[str, Any] | None = None
        self.previews_done = 0
        self._busy = self._pending = False
        self.region: tuple[int, int, int, int] | None = None  # of the last preview, frame pixels
        self._build()
        self.viewer.dims.events.current_step.connect(self._frame_moved)
        self.viewer.camera.events.center.connect(self._view_moved)
        self.viewer.camera.events.zoom.connect(self._view_moved)

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.path = QLineEdit()
        self.path.setPlaceholderText("popseg config (YAML)")
        browse, load = QPushButton("…"), QPushButton("Open")
        browse.clicked.connect(self._browse)
        load.clicked.connect(lambda: self.load(self.path.text()))
        row = QHBoxLayout()
        for w in (self.path, browse, load):
            row.addWidget(w)
        self.population = QComboBox()
        self.population.currentTextChanged.connect(self._population_chosen)
        self.form = SettingsForm()
        self.form.changed.connect(self.schedule)
        self.live = QCheckBox("live preview")
        self.live.setChecked(True)
        self.histogram = _Histogram()
        self.status = QLabel("open a config")
        self.status.setWordWrap(True)
        self.save_path = QLineEdit()
        self.save_path.setPlaceholderText("save as (YAML)")
        save = QPushButton("Save")
        save.clicked.connect(lambda: self.save(self.save_path.text()))
        self.preview_button = QPushButton("Preview now")
        self.preview_button.clicked.connect(self.schedule)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.population)
        lay.addWidget(self.form)
        lay.addWidget(self.histogram.canvas)
        for w in (self.live, self.preview_button, self.status, self.save_path, save):
            lay.addWidget(w)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._start_preview)
        self._view_timer = QTimer(self)
        self._view_timer.setSingleShot(True)
        self._view_timer.timeout.connect(self._view_settled)

    def _browse(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "popseg config", "", "YAML (*.yaml *.yml)")
        if name:
            self.path.setText(name)
            self.load(name)

    # ---------------------------------------------------------------- state
    def load(self, path: str | Path) -> None:
        """Open a config: its movie as layers, its populations in the chooser."""
        try:
            path = Path(path)
            if not path.is_file():
                raise PopsegError(f"config file not found: {path} (give the path of a YAML file)")
            data = read_yaml(path.read_text(), str(path))
            preview = Preview(data, path.parent)
            if self.preview is not None:
                self.preview.close()
            self.preview = preview
        except PopsegError as err:
            self.status.setText(one_line(err))
            return
        self.config_path = path
        self.path.setText(str(path))
        self.save_path.setText(str(path.with_name(path.stem + "-tuned.yaml")))
        ensure_movie_layers(self.viewer, self.preview.movie)
        self.population.blockSignals(True)
        self.population.clear()
        self.population.addItems(self.preview.populations)
        self.population.blockSignals(False)
        self._population_chosen(self.preview.populations[0])

    @property
    def current_population(self) -> str:
        return self.population.currentText()

    def _population_chosen(self, name: str) -> None:
        if self.preview is None or not name:
            return
        try:
            seg, _ = self.preview.segmenter(name, self.preview.settings(name))
        except PopsegError as err:
            self.status.setText(one_line(err))
            return
        effective = {**seg.params.model_dump(), **self.preview.settings(name)}
        self.form.blockSignals(True)
        self.form.set_fields(segmenter_fields(self.preview.settings(name)["segmenter"], effective))
        self.form.blockSignals(False)
        self.schedule()

    def settings(self) -> dict[str, Any]:
        """The population's keys as edited: the config's, then every changed editor."""
        out = self.preview.settings(self.current_population)
        out.update(self.form.edited())
        return out

    @property
    def idle(self) -> bool:
        """No preview computing, waiting or scheduled."""
        return not (self._busy or self._pending or self._timer.isActive() or self._view_timer.isActive())

    def frame_index(self) -> int:
        return int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim > 2 else 0

    # ---------------------------------------------------------------- preview
    def attached(self) -> bool:
        """Whether the widget is still in a window: a closed (undocked, deleted) tuner must not
        keep answering the viewer's frame changes."""
        try:
            return self.parent() is not None
        except RuntimeError:  # its Qt object is gone
            return False

    def _frame_moved(self, event=None) -> None:
        if self.preview is not None and self.live.isChecked() and self.attached():
            self.schedule()

    def _view_moved(self, event=None) -> None:
        """Pan or zoom: on a frame previewed by regions, look again once the canvas has drawn
        (the layers' corners are updated by drawing)."""
        if self.preview is not None and self.preview.too_big_to_preview_whole and self.live.isChecked() \
                and self.attached():
            self._view_timer.start(DEBOUNCE_MS)

    def _view_settled(self) -> None:
        """Preview again when the view has left the region last previewed."""
        view = self.visible_region()
        if self.region is None or view is None or not _inside(view, self.region):
            self.schedule()

    def visible_region(self) -> tuple[int, int, int, int] | None:
        """The part of the frame the canvas shows (y0, y1, x0, x1, frame pixels), from the first
        channel layer's corners; None before it is drawn."""
        name = self.preview.channel_names[0] if self.preview is not None else None
        if name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        corners = np.asarray(layer.corner_pixels, float)[:, -2:]
        if getattr(layer, "multiscale", False):  # corners of the level shown, not of level 0
            corners = corners * np.asarray(layer.downsample_factors[layer.data_level], float)[-2:]
        (y0, x0), (y1, x1) = corners[0], corners[1] + 1
        if y1 - y0 < 2 or x1 - x0 < 2:  # not drawn yet
            return None
        return int(y0), int(y1), int(x0), int(x1)

    def preview_region(self) -> tuple[int, int, int, int] | None:
        """What the next preview segments: None (the whole frame) when frames are small enough,
        else the visible region and a quarter of its size around it (small pans stay inside),
        at most :attr:`Preview.whole_frame_pixels` about its centre."""
        if self.preview is None or not self.preview.too_big_to_preview_whole:
            return None
        Y, X = self.preview.frame_shape
        view = self.visible_region() or (0, Y, 0, X)
        return clip_region(_region_around(view, self.preview.whole_frame_pixels), (Y, X))

    def schedule(self) -> None:
        """Preview soon (edits arriving within :data:`DEBOUNCE_MS` make one preview)."""
        if self.preview is not None and (self.live.isChecked() or self.sender() is self.preview_button):
            self._timer.start(DEBOUNCE_MS)

    def _start_preview(self) -> None:
        from napari.qt.threading import create_worker

        if self._busy:
            self._pending = True
            return
        try:
            settings, t, pop = self.settings(), self.frame_index(), self.current_population
        except PopsegError as err:
            self.status.setText(one_line(err))
            return
        region = self.preview_region()
        self._busy = True
        self.status.setText(f"previewing frame {t}…" if region is None else
                            f"previewing frame {t}, rows {region[0]}-{region[1]}, columns {region[2]}-{region[3]}…")
        worker = create_worker(self._compute, pop, t, settings, region)
        worker.returned.connect(self._show)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        worker.start()

    def _compute(self, pop: str, t: int, settings: dict[str, Any], region=None) -> dict[str, Any]:
        try:
            res = dict(self.preview.labels(pop, t, settings, region=region))
        except PopsegError as err:  # a person's mistake: one line in the widget, no traceback
            return {"error": one_line(err), "population": pop, "frame": t, "settings": settings}
        res.update(population=pop, frame=t, settings=settings,
                   filtered=self.preview.filtered(pop, t, settings, region=region))
        return res

    def _show(self, res: dict[str, Any]) -> None:
        if not self.attached():
            return
        self.last_result = res
        if "error" in res:
            self.status.setText(res["error"])
            return
        px = self.preview.movie.attrs["pixel_size_um"] or 1.0
        y0, _, x0, _ = res["region"]
        self.region = res["region"]
        # one frame deep, placed at its frame (and region): moving to another frame never shows a
        # stale preview
        set_labels_layer(self.viewer, f"{res['population']} preview", res["labels"][None], (px, px),
                         translate=(float(res["frame"]), y0 * px, x0 * px))
        lo_hi = res["settings"].get("thresholds") or getattr(self._params(res), "thresholds", None)
        self.histogram.show(res["filtered"], lo_hi)
        y0, y1, x0, x1 = res["region"]
        part = "" if (y1 - y0, x1 - x0) == self.preview.frame_shape else f" (rows {y0}-{y1}, columns {x0}-{x1})"
        self.status.setText(f"frame {res['frame']}{part}: {res['objects']} objects in {res['seconds']:.2f} s"
                            + (f", {res['merged_regions']} merged regions" if res["merged_regions"] else ""))

    def _params(self, res):
        try:
            return self.preview.segmenter(res["population"], res["settings"])[0].params
        except PopsegError:
            return None

    def _failed(self, err: Exception) -> None:
        self.last_result = {"error": one_line(err)}
        self.status.setText(one_line(err))

    def _finished(self) -> None:
        self._busy = False
        self.previews_done += 1
        if self._pending:
            self._pending = False
            self._start_preview()

    # ---------------------------------------------------------------- save
    def save(self, path: str | Path) -> list[Path]:
        """Write the config with the edited population; for a threshold population also
        Celldetective's ``threshold_config_<population>.json`` beside it. Returns what was written."""
        if self.preview is None:
            self.status.setText("open a config first")
            return []
        try:
            pop, settings = self.current_population, self.settings()
            seg, _ = self.preview.segmenter(pop, settings)
        except PopsegError as err:
            self.status.setText(one_line(err))
            return []
        path = Path(path or self.save_path.text())
        data = self.preview.with_settings(pop, _plain_settings(settings))
        if self.config_path is not None and path.parent.resolve() != self.config_path.parent.resolve():
            data = _absolute_paths(data, self.config_path.parent)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        written = [path]
        if settings.get("segmenter") == "threshold":
            js = path.with_name(f"threshold_config_{pop}.json")
            js.write_text(json.dumps(threshold_config_json(seg.params.model_dump()), indent=1))
            written.append(js)
        self.status.setText("saved " + ", ".join(str(p) for p in written))
        return written


def _plain_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}


def _absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths of a config made absolute, for a copy saved in another folder."""
    from ..location import is_url

    out = dict(data)
    for key in ("input", "output"):
        v = out.get(key)
        if isinstance(v, str) and not is_url(v) and not Path(v).expanduser().is_absolute():
            out[key] = str((base / v).resolve())
    return out


def _inside(inner, outer) -> bool:
    return inner[0] >= outer[0] and inner[1] <= outer[1] and inner[2] >= outer[2] and inner[3] <= outer[3]


def _region_around(view: tuple[int, int, int, int], max_pixels: int) -> tuple[int, int, int, int]:
    """``view`` grown by a quarter of its size on each side, then cut to ``max_pixels`` about its
    centre (a view zoomed out over a huge frame previews its middle; zoom in for the rest)."""
    y0, y1, x0, x1 = view
    h, w = y1 - y0, x1 - x0
    h, w = h + 2 * (h // 4), w + 2 * (w // 4)
    if h * w > max_pixels:
        f = (max_pixels / (h * w)) ** 0.5
        h, w = max(1, int(h * f)), max(1, int(w * f))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    return cy - h // 2, cy - h // 2 + h, cx - w // 2, cx - w // 2 + w


class _Histogram:
    """The filtered frame's histogram with the threshold range drawn on it."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3, 1.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.canvas.setVisible(False)

    def show(self, filtered: np.ndarray | None, lo_hi) -> None:
        if filtered is None:
            self.canvas.setVisible(False)
            return
        values = filtered[np.isfinite(filtered)]
        self.axes.clear()
        self.axes.hist(values.ravel()[:: max(1, values.size // 200_000)], bins=128, color="0.4", log=True)
        if lo_hi is not None:
            lo, hi = (float(v) for v in lo_hi)
            right = hi if np.isfinite(hi) else float(values.max()) if values.size else lo
            self.axes.axvspan(lo, right, color="tab:orange", alpha=0.3)
        self.axes.set_yticks([])
        self.canvas.setVisible(True)
        self.canvas.draw_idle()
