"""A form for one population's settings, built from its segmenter's declared keys.

Each key of the segmenter's ``Params`` model gets an editor for its type: a spin box for numbers,
a check box for flags, a text field holding YAML for anything else (``[30, .inf]``,
``[[gauss, 2]]``). The form knows nothing of segmenting: it turns values into a settings dict.
"""

from __future__ import annotations

from typing import Any

import yaml
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from ..config import read_yaml
from ..errors import PopsegError

__all__ = ["SettingsForm", "segmenter_fields"]

# keys every population has that a person tunes by eye; the rest (device, cache...) stay as written
COMMON_FIELDS = {"tile": ("auto", "core tile size [ty, tx], auto or none"),
                 "halo": (None, "context pixels around a tile (default: the segmenter's)")}


def segmenter_fields(segmenter: str, effective: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{key: (value, description)}`` for the segmenter's keys: the effective value (config,
    its ``threshold_config`` file, defaults), then the common ones."""
    from ..segmenters import get_segmenter_class

    cls = get_segmenter_class(segmenter)
    out = {}
    for key, field in cls.Params.model_fields.items():
        if key in cls.label_neutral and key != "max_object_px":
            continue  # paths and batch sizes are not tuned by eye
        out[key] = (effective.get(key, field.default), field.description or "")
    for key, (default, doc) in COMMON_FIELDS.items():
        out[key] = (effective.get(key, default), doc)
    return out


def _plain(value: Any) -> Any:
    """Value as YAML would write it (tuples as lists, paths as text)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


class SettingsForm(QWidget):
    """Editors for ``{key: (value, description)}``; :attr:`changed` fires on every edit."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setLayout(QFormLayout())
        self.editors: dict[str, QWidget] = {}
        self.initial: dict[str, Any] = {}

    def set_fields(self, fields: dict[str, tuple[Any, str]]) -> None:
        layout: QFormLayout = self.layout()
        while layout.rowCount():
            layout.removeRow(0)
        self.editors, self.initial = {}, {}
        for key, (value, doc) in fields.items():
            value = _plain(value)
            editor = self._editor(value)
            editor.setToolTip(doc)
            editor.setObjectName(key)
            self.editors[key] = editor
            self.initial[key] = value
            layout.addRow(key, editor)

    def _editor(self, value: Any) -> QWidget:
        if isinstance(value, bool):
            w = QCheckBox()
            w.setChecked(value)
            w.toggled.connect(self.changed)
        elif isinstance(value, int):
            w = QSpinBox()
            w.setRange(-10**9, 10**9)
            w.setValue(value)
            w.valueChanged.connect(self.changed)
        elif isinstance(value, float) and value == value and abs(value) != float("inf"):
            w = QDoubleSpinBox()
            w.setDecimals(4)
            w.setRange(-1e12, 1e12)
            w.setValue(value)
            w.valueChanged.connect(self.changed)
        else:
            w = QLineEdit(_yaml_text(value))
            w.editingFinished.connect(self.changed)
        return w

    def value(self, key: str) -> Any:
        """The value an editor holds (YAML text parsed with popseg's strict loader)."""
        w = self.editors[key]
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, (QSpinBox, QDoubleSpinBox)):
            return w.value()
        text = w.text().strip()
        try:
            return read_yaml(text, key) if text else None
        except yaml.YAMLError as err:
            raise PopsegError(f"{key}: {text!r} is not a YAML value ({str(err).splitlines()[0]})") from None

    def set_value(self, key: str, value: Any) -> None:
        """Set an editor as a person would (fires :attr:`changed`)."""
        w = self.editors[key]
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(value)
        else:
            w.setText(_yaml_text(_plain(value)))
            w.editingFinished.emit()

    def edited(self) -> dict[str, Any]:
        """The keys whose value differs from what the form was given."""
        return {k: v for k in self.editors if (v := self.value(k)) != self.initial[k]}


def _yaml_text(value: Any) -> str:
    if value is None:
        return ""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()
