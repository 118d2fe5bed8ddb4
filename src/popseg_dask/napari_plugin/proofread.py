"""Proofreading: make frames of a population editable, fix them, save them as corrections.

Edit copies frames ``first..last`` (their latest correction, else the run's labels) into a
labels layer ``<population> edit`` placed at those frames; napari's own brush, eraser and fill
work on it, and the buttons add merge, delete, fill holes, split along a drawn line and a new
object id. Save hands the edited frames to :func:`popseg_dask.corrections.save_corrections`
(a separate ``labels/<population>-corrected`` image; the run's labels are never written) and
reloads what was saved.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

from .. import corrections as corr
from ..errors import PopsegError
from ..io.record import stored_record
from .layers import add_output_layers, one_line, set_labels_layer

__all__ = ["ProofreadWidget"]

LINE_LAYER = "split line"


class ProofreadWidget(QWidget):
    """Docked widget: output, population, frame range, edit helpers, save."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.editing: dict[str, Any] | None = None  # output, population, first, frames loaded
        self.last_save: dict[str, Any] | None = None
        self._build()
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self._layers_changed()

    def _build(self) -> None:
        self.output = QLineEdit()
        self.output.setPlaceholderText("popseg output (folder or URL)")
        self.output.editingFinished.connect(self._output_chosen)
        self.population = QComboBox()
        self.first, self.last, self.other = QSpinBox(), QSpinBox(), QSpinBox()
        for s in (self.first, self.last, self.other):
            s.setRange(0, 2**31 - 1)
        self.status = QLabel("open a popseg output")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("output", self.output)
        form.addRow("population", self.population)
        frames = QHBoxLayout()
        frames.addWidget(self.first)
        frames.addWidget(QLabel("to"))
        frames.addWidget(self.last)
        form.addRow("frames", frames)
        form.addRow("merge with id", self.other)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        buttons = [("Edit frames", self.edit), ("New object id", self.new_object), ("Merge selected + id", self.merge),
                   ("Delete selected", self.delete), ("Fill holes of selected", self.fill_holes),
                   ("Draw split line", self.draw_split_line), ("Split selected along line", self.split),
                   ("Save corrections", self.save)]
        self.buttons = {}
        for text, slot in buttons:
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, f=slot: self._guarded(f))
            self.buttons[text] = b
            lay.addWidget(b)
        lay.addWidget(self.status)

    def _guarded(self, action) -> None:
        try:
            action()
        except PopsegError as err:
            self.status.setText(one_line(err))

    # ---------------------------------------------------------------- choosing
    def _layers_changed(self, event=None) -> None:
        """Pick up the output of label layers the popseg reader opened."""
        if self.output.text():
            return
        for layer in self.viewer.layers:
            out = layer.metadata.get("popseg_output") if hasattr(layer, "metadata") else None
            if out:
                self.output.setText(out)
                self._output_chosen()
                return

    def _output_chosen(self) -> None:
        rec = stored_record(self.output.text()) if self.output.text() else None
        if not rec:
            self.status.setText(f"{self.output.text()} is not a popseg output (no run record)")
            return
        self.population.clear()
        self.population.addItems(list(rec.get("populations", {})))
        n = _frames_of(self.output.text(), rec)
        for s in (self.first, self.last):
            s.setMaximum(max(0, n - 1))
        self.status.setText(f"{len(rec.get('populations', {}))} population(s), {n} frames")

    # ---------------------------------------------------------------- editing
    def edit(self) -> None:
        """Copy the frame range into the editable layer and select it for painting."""
        out, pop = self.output.text(), self.population.currentText()
        first, last = self.first.value(), max(self.first.value(), self.last.value())
        frames = np.stack([corr.frame_for_editing(out, pop, t) for t in range(first, last + 1)])
        rec = stored_record(out)
        known = corr.open_corrections(out, pop)
        next_id = int(known.record["next_id"]) if known else int(rec["populations"][pop].get("n_objects", 0)) + 1
        self.editing = {"output": out, "population": pop, "first": first, "loaded": frames.copy(),
                        "next_id": max(next_id, int(frames.max()) + 1)}
        layer = set_labels_layer(self.viewer, self.layer_name, frames, _pixel_scale(self.viewer),
                                 translate=(float(first), 0.0, 0.0), metadata={"popseg_edit": True})
        layer.editable = True
        self.viewer.layers.selection.active = layer
        self.viewer.dims.set_current_step(0, first)
        self.status.setText(f"editing {pop} frames {first}..{last}: paint, erase or use the buttons; "
                            f"new objects start at id {self.editing['next_id']}")

    @property
    def layer_name(self) -> str:
        return f"{self.population.currentText()} edit"

    def _layer_and_frame(self):
        if self.editing is None or self.layer_name not in self.viewer.layers:
            raise PopsegError("press 'Edit frames' first")
        layer = self.viewer.layers[self.layer_name]
        i = int(self.viewer.dims.current_step[0]) - self.editing["first"]
        if not 0 <= i < layer.data.shape[0]:
            raise PopsegError(f"frame {self.viewer.dims.current_step[0]} is not among the frames being edited")
        return layer, i

    def _apply(self, change) -> None:
        layer, i = self._layer_and_frame()
        data = np.asarray(layer.data)
        data[i] = change(data[i])
        layer.data = data
        layer.refresh()

    def new_object(self) -> int:
        """Select an id no object of the movie has: the brush then paints a new object."""
        layer, _ = self._layer_and_frame()
        new = max(self.editing["next_id"], int(np.asarray(layer.data).max()) + 1)
        self.editing["next_id"] = new + 1
        layer.selected_label = new
        layer.mode = "paint"
        self.status.setText(f"painting new object {new}")
        return new

    def merge(self) -> None:
        layer, _ = self._layer_and_frame()
        keep, other = int(layer.selected_label), int(self.other.value())
        self._apply(lambda f: corr.merge_objects(f, keep, other))
        self.status.setText(f"merged {other} into {keep}")

    def delete(self) -> None:
        layer, _ = self._layer_and_frame()
        lab = int(layer.selected_label)
        self._apply(lambda f: corr.delete_object(f, lab))
        self.status.setText(f"deleted {lab}")

    def fill_holes(self) -> None:
        layer, _ = self._layer_and_frame()
        lab = int(layer.selected_label)
        self._apply(lambda f: corr.fill_object_holes(f, lab))
        self.status.setText(f"filled the holes of {lab}")

    def draw_split_line(self) -> None:
        """A shapes layer to draw the cut on (a path), made active in path mode."""
        if LINE_LAYER not in self.viewer.layers:
            self.viewer.add_shapes(name=LINE_LAYER, ndim=3, edge_color="yellow", edge_width=1,
                                   scale=(1.0, *_pixel_scale(self.viewer)))
        shapes = self.viewer.layers[LINE_LAYER]
        self.viewer.layers.selection.active = shapes
        shapes.mode = "add_path"

    def split(self) -> None:
        """Cut the selected object along the last line drawn on this frame."""
        layer, i = self._layer_and_frame()
        if LINE_LAYER not in self.viewer.layers or not len(self.viewer.layers[LINE_LAYER].data):
            raise PopsegError("draw a line across the object first ('Draw split line')")
        shapes = self.viewer.layers[LINE_LAYER]
        line = np.asarray(shapes.data[-1])
        pts = np.asarray([layer.world_to_data(shapes.data_to_world(p)) for p in line])[:, -2:]
        lab = int(layer.selected_label)
        new = max(self.editing["next_id"], int(np.asarray(layer.data).max()) + 1)
        made: list[int] = []

        def cut(f):
            out, ids = corr.split_object(f, lab, pts, new)
            made.extend(ids)
            return out

        self._apply(cut)
        self.editing["next_id"] = max(made) + 1
        shapes.data = shapes.data[:-1]
        self.status.setText(f"split {lab}: new object(s) {made}")

    # ---------------------------------------------------------------- saving
    def save(self) -> dict[str, Any]:
        """Save every edited frame that changed; reopen the corrections."""
        layer, _ = self._layer_and_frame()
        ed = self.editing
        data = np.asarray(layer.data)
        frames = {ed["first"] + i: data[i] for i in range(data.shape[0]) if not np.array_equal(data[i], ed["loaded"][i])}
        if not frames:
            self.status.setText("nothing changed: no frame saved")
            return {}
        res = corr.save_corrections(ed["output"], ed["population"], frames, echo=self.status.setText)
        self.last_save = res
        saved = np.stack([corr.frame_for_editing(ed["output"], ed["population"], ed["first"] + i)
                          for i in range(data.shape[0])])
        layer.data = saved  # ids as saved (painted ids of other frames renumbered)
        ed["loaded"] = saved.copy()
        ed["next_id"] = max(ed["next_id"], int(res["next_id"]))
        add_output_layers(self.viewer, ed["output"])
        moved = sum(len(v) for v in res["renumbered"].values())
        self.status.setText(f"saved frames {res['saved']} to labels/{corr.corrected_name(ed['population'])}"
                            + (f" ({moved} id(s) renumbered to stay unique)" if moved else ""))
        return res


def _frames_of(output: str, rec: dict) -> int:
    from ..io.labels import open_label_array

    for p in rec.get("populations", {}):
        try:
            return int(open_label_array(output, p).shape[0])
        except Exception:
            continue  # a population whose labels are not written yet
    return 0


def _pixel_scale(viewer) -> tuple[float, float]:
    """The pixel size of the first image layer (what the reader gave the movie)."""
    for layer in viewer.layers:
        if layer.__class__.__name__ == "Image":
            return tuple(float(s) for s in layer.scale[-2:])
    return (1.0, 1.0)
