"""Export corrected frames as a training set and train a model, without freezing the viewer.

Export is :func:`popseg_dask.train.export_training` (by default only the proofread frames).
Training is ``popseg train`` in a child process (``QProcess``): its lines appear in the widget,
Cancel ends it (a framework's training loop cannot be interrupted from another thread, a process
can), and its last lines give the validation F1 at IoU 0.5 and 0.9. "Use in config" adds the model
as a population of a config, which the tuner then previews.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml
from qtpy.QtCore import QProcess
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..config import read_yaml
from ..errors import PopsegError
from ..io.record import stored_record
from .layers import one_line

__all__ = ["TrainWidget"]

F1_LINE = re.compile(r"validation F1: ([0-9.]+) at IoU 0\.5, ([0-9.]+) at IoU 0\.9")


class TrainWidget(QWidget):
    """Docked widget: export (output, population, only corrected, tiles), train (kind, epochs,
    steps, size, base model), cancel, use the model in a config."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.process: QProcess | None = None
        self.result: dict[str, Any] | None = None
        self.export_meta: dict[str, Any] | None = None
        self._build()

    def _build(self) -> None:
        self.output, self.population = QLineEdit(), QLineEdit()
        self.output.setPlaceholderText("popseg output")
        self.corrected_only = QCheckBox("only corrected frames")
        self.corrected_only.setChecked(True)
        self.tiles = QSpinBox()
        self.tiles.setRange(1, 64)
        self.dataset, self.model, self.base = QLineEdit(), QLineEdit(), QLineEdit()
        self.base.setPlaceholderText("model folder to fine-tune (empty: from scratch)")
        self.kind = QComboBox()
        self.kind.addItems(["stardist", "cellpose"])
        self.epochs, self.steps = QSpinBox(), QSpinBox()
        self.epochs.setRange(1, 100000)
        self.epochs.setValue(20)
        self.steps.setRange(1, 100000)
        self.steps.setValue(50)
        self.size = QComboBox()
        self.size.addItems(["small", "tiny", "default"])
        self.config = QLineEdit()
        self.config.setPlaceholderText("config to add the model to (YAML)")
        self.bar, self.log, self.status = QProgressBar(), QPlainTextEdit(), QLabel("")
        self.log.setReadOnly(True)
        self.status.setWordWrap(True)
        form = QFormLayout()
        for name, w in (("output", self.output), ("population", self.population), ("", self.corrected_only),
                        ("tiles per side", self.tiles), ("dataset folder", self.dataset), ("model", self.kind),
                        ("epochs", self.epochs), ("steps/epoch", self.steps), ("size", self.size),
                        ("fine-tune", self.base), ("model folder", self.model), ("config", self.config)):
            form.addRow(name, w)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        self.buttons = {}
        for text, slot in (("Export", self.export), ("Train", self.train), ("Cancel", self.cancel),
                           ("Use in config", self.use_in_config)):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, f=slot: self._guarded(f))
            self.buttons[text] = b
            lay.addWidget(b)
        self.buttons["Cancel"].setEnabled(False)
        for w in (self.bar, self.log, self.status):
            lay.addWidget(w)
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self._layers_changed()

    def _guarded(self, action) -> None:
        try:
            action()
        except PopsegError as err:
            self.status.setText(one_line(err))

    def _layers_changed(self, event=None) -> None:
        if self.output.text():
            return
        for layer in self.viewer.layers:
            meta = getattr(layer, "metadata", {})
            if meta.get("popseg_output"):
                self.output.setText(meta["popseg_output"])
                self.population.setText(meta.get("population", ""))
                return

    # ---------------------------------------------------------------- export
    def export(self) -> dict[str, Any]:
        """Write the training set (images/, masks/, dataset.json) of the chosen frames."""
        from ..train import export_training

        out, pop = self.output.text(), self.population.text()
        if not out or stored_record(out) is None:
            raise PopsegError(f"{out or 'the output'} is not a popseg output; open one (File > Open) or type its path")
        folder = self.dataset.text() or str(Path(out.rstrip("/")).with_name(f"{pop}-training"))
        self.dataset.setText(folder)
        meta = export_training(out, pop, folder, tiles=self.tiles.value(), corrected=self.corrected_only.isChecked(),
                               overwrite=True)
        self.export_meta = meta
        frames = sorted({i["frame"] for i in meta["items"]})
        self.status.setText(f"exported {len(meta['items'])} tile(s) of frames {frames} to {folder}")
        return meta

    # ---------------------------------------------------------------- training
    def train_command(self) -> list[str]:
        folder = self.dataset.text()
        if not folder or not (Path(folder) / "dataset.json").is_file():
            raise PopsegError("export a training set first (Export), or give a dataset folder")
        model = self.model.text() or str(Path(folder).with_name(f"{Path(folder).name}-{self.kind.currentText()}"))
        self.model.setText(model)
        cmd = [sys.executable, "-m", "popseg_dask.cli", "train", self.kind.currentText(), folder, "--out", model,
               "--epochs", str(self.epochs.value()), "--size", self.size.currentText(), "--overwrite"]
        if self.kind.currentText() == "stardist":
            cmd += ["--steps", str(self.steps.value())]
        if self.base.text():
            cmd += ["--from", self.base.text()]
        return cmd

    def train(self) -> None:
        """Start ``popseg train`` in a child process."""
        if self.process is not None:
            raise PopsegError("a training is running; cancel it first")
        cmd = self.train_command()
        self.result, self.log_lines = None, []
        self.log.clear()
        self.bar.setRange(0, 0)
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._ended)
        self.process.start(cmd[0], cmd[1:])
        self.buttons["Cancel"].setEnabled(True)
        self.buttons["Train"].setEnabled(False)
        self.status.setText(f"training {self.kind.currentText()} → {self.model.text()}")

    def _read(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self.log_lines.append(line)
                self.log.appendPlainText(line)

    def cancel(self) -> None:
        """Stop the training process (the model folder is not created: popseg train writes it last)."""
        if self.process is not None:
            self.cancelled = True
            self.process.kill()

    def _ended(self, code: int, status) -> None:
        self._read()
        cancelled = getattr(self, "cancelled", False)
        self.process, self.cancelled = None, False
        self.buttons["Cancel"].setEnabled(False)
        self.buttons["Train"].setEnabled(True)
        self.bar.setRange(0, 1)
        f1 = next((F1_LINE.search(x) for x in reversed(self.log_lines) if F1_LINE.search(x)), None)
        if code == 0 and f1:
            self.bar.setValue(1)
            self.result = {"model": self.model.text(), "kind": self.kind.currentText(),
                           "f1_05": float(f1.group(1)), "f1_09": float(f1.group(2))}
            self.status.setText(f"model {self.model.text()}: validation F1 {f1.group(1)} at IoU 0.5, "
                                f"{f1.group(2)} at IoU 0.9")
        else:
            self.bar.setValue(0)
            self.result = {"cancelled": cancelled, "code": code}
            last = self.log_lines[-1] if self.log_lines else ""
            self.status.setText("training cancelled" if cancelled else f"training failed: {last}")

    # ---------------------------------------------------------------- into a config
    def use_in_config(self) -> str:
        """Add (or update) population ``<population>-<kind>`` using the new model in the config."""
        if not self.result or "model" not in self.result:
            raise PopsegError("train a model first")
        path = Path(self.config.text())
        if not path.is_file():
            raise PopsegError(f"config file not found: {path} (give the config to add the model to)")
        data = read_yaml(path.read_text(), str(path))
        channels = (self.export_meta or {}).get("channels") or _dataset_channels(self.dataset.text())
        name = f"{self.population.text()}-{self.result['kind']}"
        data["populations"][name] = {"segmenter": self.result["kind"], "model": str(Path(self.result["model"]).resolve()),
                                     "channels": channels}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.status.setText(f"population {name} added to {path}: open it in the tuner to preview it")
        return name


def _dataset_channels(folder: str) -> list[str]:
    import json

    return json.loads((Path(folder) / "dataset.json").read_text())["channels"]
