"""Run a config from the viewer: embedded cluster or a scheduler address, in a background thread.

The run is :func:`popseg_dask.pipeline.run`, as ``popseg run`` calls it: the same checks, the same
one-line messages (shown in the widget), the same output. Progress comes from the run's own
progress callback; the dashboard link is the client's. When the run ends, its output opens as layers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (QCheckBox, QFormLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox,
                            QVBoxLayout, QWidget)

from ..errors import PopsegError
from .layers import add_output_layers, one_line

__all__ = ["RunWidget"]


class _Relay(QObject):
    """Carries messages from the run's thread to the widget's (Qt signals cross threads safely)."""

    progress = Signal(str, int, int)
    message = Signal(str)
    dashboard = Signal(str)


class RunWidget(QWidget):
    """Docked widget: config, scheduler, workers, overwrite; Run, progress bar, dashboard link."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.record: dict[str, Any] | None = None
        self.error: str | None = None
        self.running = False
        self.config = QLineEdit()
        self.config.setPlaceholderText("popseg config (YAML)")
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("empty: an embedded cluster; or tcp://host:8786")
        self.workers = QSpinBox()
        self.workers.setRange(0, 512)
        self.workers.setSpecialValueText("one per core")
        self.overwrite = QCheckBox("overwrite the output")
        self.button = QPushButton("Run")
        self.button.clicked.connect(self.start)
        self.bar = QProgressBar()
        self.dashboard = QLabel("")
        self.dashboard.setOpenExternalLinks(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("config", self.config)
        form.addRow("scheduler", self.scheduler)
        form.addRow("workers", self.workers)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        for w in (self.overwrite, self.button, self.bar, self.dashboard, self.status):
            lay.addWidget(w)
        self.relay = _Relay()
        self.relay.progress.connect(self._progress)
        self.relay.message.connect(self.status.setText)
        self.relay.dashboard.connect(self._dashboard)

    def start(self) -> None:
        """Start the run in a background thread (the viewer stays responsive)."""
        from napari.qt.threading import create_worker

        if self.running:
            return
        self.record, self.error, self.running = None, None, True
        self.button.setEnabled(False)
        self.bar.setRange(0, 0)
        self.status.setText("starting…")
        worker = create_worker(self._run, self.config.text(), self.scheduler.text().strip() or None,
                               self.workers.value() or None, self.overwrite.isChecked())
        worker.returned.connect(self._done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        worker.start()

    def _run(self, config_path: str, scheduler: str | None, workers: int | None, overwrite: bool) -> dict:
        try:
            return self._execute(config_path, scheduler, workers, overwrite)
        except PopsegError as err:  # a person's mistake: the CLI's one line, no traceback
            return {"error": one_line(err)}
        except Exception as err:  # a failure in the run: one line here, the traceback in the log
            logging.getLogger("popseg_dask").exception("run failed")
            return {"error": one_line(err)}

    def _execute(self, config_path: str, scheduler: str | None, workers: int | None, overwrite: bool) -> dict:
        from ..cluster import open_client
        from ..config import load_config
        from ..pipeline import run

        if not config_path:
            raise PopsegError("give the config file to run")
        config = load_config(Path(config_path))
        with open_client(scheduler, n_workers=workers) as client:
            self.relay.dashboard.emit(client.dashboard_link or "")
            return run(config, client=client, overwrite=overwrite, progress=self.relay.progress.emit,
                       echo=self.relay.message.emit)

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)
        self.bar.setFormat(f"{stage} %v/%m")

    def _dashboard(self, link: str) -> None:
        self.dashboard_url = link
        self.dashboard.setText(f'<a href="{link}">Dask dashboard: {link}</a>' if link else "no dashboard")

    def _done(self, record: dict) -> None:
        if "error" in record:
            self._failed_line(record["error"])
            return
        self.record = record
        self.bar.setRange(0, 1)
        self.bar.setValue(1)
        out = record.get("output")
        self.status.setText(f"done: {out}")
        if out:
            try:
                add_output_layers(self.viewer, out)
            except PopsegError as err:
                self.status.setText(one_line(err))

    def _failed(self, err: Exception) -> None:
        self._failed_line(one_line(err))

    def _failed_line(self, line: str) -> None:
        self.error = line
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status.setText(self.error)

    def _finished(self) -> None:
        self.running = False
        self.button.setEnabled(True)
