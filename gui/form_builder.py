"""Forms generated from pydantic declarations: one widget per field, bounds and tooltips from the
field itself, advanced fields folded away. Nothing about a field is declared again here."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from adapter_studio.gui.spin_boxes import DoubleSpinBox, SpinBox
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

AUTO = "auto"
INT_MAX = 2**31 - 1


def field_label(name: str) -> str:
    """A field's label on a generated form ("gradient_checkpointing": "gradient checkpointing"); messages about a
    field name it the same way."""
    return name.replace("_", " ")


def _bounds(metadata: list[Any]) -> tuple[float | None, float | None, bool, bool]:
    low = high = None
    low_open = high_open = False
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            high = m.le
        elif isinstance(m, annotated_types.Lt):
            high, high_open = m.lt, True
    return low, high, low_open, high_open  # type: ignore[return-value]


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _number_or_words(annotation: Any) -> tuple[type | None, list[Any], list[str]]:
    """`Annotated[float, Field(gt=0)] | Literal["auto"] | None` → (float, its constraints, ["auto"]);
    (None, [], []) for any other annotation."""
    if get_origin(annotation) not in (typing.Union, types.UnionType):
        return None, [], []
    numbers, metadata, words = [], [], []
    for arg in get_args(annotation):
        if arg is type(None):
            continue
        if get_origin(arg) is Literal and all(isinstance(a, str) for a in get_args(arg)):
            words += get_args(arg)
            continue
        base, *extra = get_args(arg) if get_origin(arg) is Annotated else (arg,)
        if base not in (int, float):
            return None, [], []
        numbers.append(base)
        for item in extra:
            metadata += item.metadata if isinstance(item, FieldInfo) else [item]
    return (numbers[0], metadata, words) if len(numbers) == 1 and words else (None, [], [])


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


class TargetsEditor(QWidget):
    """Pick target modules from the model's real layer names, with the common choices one click away."""

    changed = Signal()

    def __init__(self, names: list[str], presets: dict[str, list[str]]) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        self.presets = presets
        for label, chosen in presets.items():
            button = QPushButton(label)
            button.setObjectName(f"preset_{label}")
            button.clicked.connect(lambda _=False, c=chosen: self.set_value(c))
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.hint = QLabel()
        self.hint.setStyleSheet("color: gray")
        self.set_names(names)
        self.list.itemChanged.connect(lambda _item: self.changed.emit())
        layout.addWidget(self.list)
        layout.addWidget(self.hint)
        self.changed.connect(self._show_hint)

    def _show_hint(self) -> None:
        """What the ticks mean now: a hint that read "none ticked" beside ticked boxes misled."""
        ticked = self.value()
        self.hint.setText(
            "None ticked: the method's usual choice for this model."
            if ticked is None
            else f"{len(ticked)} of {self.list.count()} ticked; untick all for the method's usual choice."
        )

    def set_names(self, names: list[str]) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.list.addItem(item)
        self.list.blockSignals(False)
        self._show_hint()

    def set_value(self, value: list[str] | None) -> None:
        wanted = set(value or [])
        self.list.blockSignals(True)
        present = {self.list.item(i).text() for i in range(self.list.count())}
        for name in sorted(wanted - present):
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            self.list.addItem(item)
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in wanted else Qt.CheckState.Unchecked)
        self.list.blockSignals(False)
        self._show_hint()  # also where the form loads values with this editor's signals blocked
        self.changed.emit()

    def value(self) -> list[str] | None:
        ticked = [
            self.list.item(i).text()
            for i in range(self.list.count())
            if self.list.item(i).checkState() == Qt.CheckState.Checked
        ]
        return ticked or None


class NumberOrWord(QWidget):
    """A number field that also takes words (learning_rate: a rate, or "auto"): the number's spin box
    with a check box per word beside it; a ticked word disables the spin box and is the value."""

    changed = Signal()

    def __init__(self, spin: QWidget, getter: typing.Callable[[], Any], setter: typing.Callable[[Any], None],
                 labels: dict[str, str]) -> None:
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.spin, self._number, self._set_number = spin, getter, setter
        layout.addWidget(spin, 1)
        self.words: dict[str, QCheckBox] = {}
        for word, label in labels.items():
            box = QCheckBox(label)
            box.setObjectName(f"word_{word}")
            box.toggled.connect(lambda on, w=word: self._ticked(w, on))
            layout.addWidget(box)
            self.words[word] = box
        spin.valueChanged.connect(lambda _v: self.changed.emit())  # type: ignore[attr-defined]

    def _ticked(self, word: str, on: bool) -> None:
        for other, box in self.words.items():  # one word at a time
            if on and other != word:
                box.blockSignals(True)
                box.setChecked(False)
                box.blockSignals(False)
        self.spin.setEnabled(self.value() not in self.words)
        self.changed.emit()

    def value(self) -> Any:
        return next((word for word, box in self.words.items() if box.isChecked()), None) or self._number()

    def set_value(self, value: Any) -> None:
        for child in (self.spin, *self.words.values()):
            child.blockSignals(True)
        for word, box in self.words.items():
            box.setChecked(value == word)
        if value not in self.words:
            self._set_number(value)
        self.spin.setEnabled(value not in self.words)
        for child in (self.spin, *self.words.values()):
            child.blockSignals(False)


class SpecForm(QWidget):
    """A form for one pydantic model class. `changed` fires with the new values as they are edited;
    spin boxes refuse values outside the declared bounds as they are typed."""

    changed = Signal(dict)

    def __init__(
        self,
        model_cls: type[BaseModel],
        values: BaseModel | None = None,
        *,
        exclude: tuple[str, ...] = ("name",),
        module_names: list[str] | None = None,
        presets: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.model_cls = model_cls
        self.widgets: dict[str, QWidget] = {}
        self.getters: dict[str, typing.Callable[[], Any]] = {}
        self.setters: dict[str, typing.Callable[[Any], None]] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        main = QFormLayout()
        advanced = QFormLayout()
        for name, info in model_cls.model_fields.items():
            if name in exclude:
                continue
            widget = self._widget_for(name, info, module_names or [], presets or {})
            if widget is None:
                continue
            widget.setObjectName(f"field_{name}")
            widget.setToolTip(info.description or "")
            label = QLabel(field_label(name))
            label.setToolTip(info.description or "")
            (advanced if _extra(info).get("advanced") else main).addRow(label, widget)
            self.widgets[name] = widget
        outer.addLayout(main)
        if advanced.rowCount():
            self.advanced = QCollapsible("Advanced", collapsedIcon="▶")  # superqt folds under ▲, which reads as open
            box = QWidget()
            box.setLayout(advanced)
            self.advanced.addWidget(box)
            outer.addWidget(self.advanced)
        if values is not None:
            self.set_values(values)

    @property
    def field_names(self) -> list[str]:
        return list(self.widgets)

    def _emit(self) -> None:
        self.changed.emit(self.values())

    def _widget_for(
        self, name: str, info: FieldInfo, module_names: list[str], presets: dict[str, list[str]]
    ) -> QWidget | None:
        annotation, optional = _unwrap_optional(info.annotation)
        low, high, low_open, high_open = _bounds(info.metadata)
        number, metadata, words = _number_or_words(info.annotation)
        if number is float:  # empty means the default here: "auto" is one of the words
            spin, getter, setter = self._float_spin(name, info, metadata, type(None) in get_args(info.annotation),
                                                    "default")
            labels = _extra(info).get("choice_labels", {})
            both = NumberOrWord(spin, getter, setter, {w: labels.get(w, w) for w in words})
            both.changed.connect(self._emit)
            self.getters[name], self.setters[name] = both.value, both.set_value
            return both
        if _extra(info).get("widget") == "targets":
            editor = TargetsEditor(module_names, presets)
            editor.changed.connect(self._emit)
            self.getters[name], self.setters[name] = editor.value, editor.set_value
            return editor
        if annotation is bool:
            box = QCheckBox()
            box.toggled.connect(self._emit)
            self.getters[name], self.setters[name] = box.isChecked, lambda v, b=box: b.setChecked(bool(v))
            return box
        if get_origin(annotation) is Literal:
            combo = QComboBox()
            combo.addItems([str(a) for a in get_args(annotation)])
            combo.currentTextChanged.connect(self._emit)
            self.getters[name] = combo.currentText
            self.setters[name] = lambda v, c=combo: c.setCurrentText(str(v))
            return combo
        if annotation is int:
            spin = SpinBox()
            lo = int(low if low is not None else 0) + (1 if low_open else 0)
            hi = int(high if high is not None else INT_MAX) - (1 if high_open else 0)
            if optional:
                spin.setRange(lo - 1, hi)
                spin.setSpecialValueText(AUTO)  # the minimum shows as "auto" and means None
                self.getters[name] = lambda s=spin, m=lo - 1: None if s.value() == m else s.value()
                self.setters[name] = lambda v, s=spin, m=lo - 1: s.setValue(m if v is None else int(v))
            else:
                spin.setRange(lo, hi)
                self.getters[name], self.setters[name] = spin.value, lambda v, s=spin: s.setValue(int(v))
            spin.valueChanged.connect(self._emit)
            return spin
        if annotation is float:
            spin, self.getters[name], self.setters[name] = self._float_spin(name, info, info.metadata, optional, AUTO)
            spin.valueChanged.connect(self._emit)
            return spin
        if annotation is str:
            edit = QLineEdit()
            edit.editingFinished.connect(self._emit)
            if optional:
                edit.setPlaceholderText(AUTO)
                self.getters[name] = lambda e=edit: e.text() or None
            else:
                self.getters[name] = edit.text
            self.setters[name] = lambda v, e=edit: e.setText("" if v is None else str(v))
            return edit
        return None  # dicts and unions (paths, column maps) have pages of their own

    def _float_spin(
        self, name: str, info: FieldInfo, metadata: list[Any], optional: bool, none_text: str
    ) -> tuple[DoubleSpinBox, typing.Callable[[], Any], typing.Callable[[Any], None]]:
        """A spin box for a float within its declared bounds, with its getter and setter; an optional
        one shows None as `none_text` at its minimum."""
        low, high, low_open, high_open = _bounds(metadata)
        spin = DoubleSpinBox()
        small = info.default is None or (isinstance(info.default, float) and 0 < info.default < 0.01)
        spin.setDecimals(6 if small or "learning" in name else 3)
        spin.setSingleStep(1e-4 if small or "learning" in name else 0.05)
        step = 10 ** -spin.decimals()
        lo = float(low if low is not None else 0.0) + (step if low_open else 0.0)
        hi = float(high if high is not None else 1e9) - (step if high_open else 0.0)
        if not optional:
            spin.setRange(lo, hi)
            return spin, spin.value, lambda v, s=spin: s.setValue(float(v))
        spin.setRange(lo - step, hi)
        spin.setSpecialValueText(none_text)
        return (
            spin,
            lambda s=spin, m=lo - step: None if s.value() <= m else s.value(),
            lambda v, s=spin, m=lo - step: s.setValue(m if v is None else float(v)),
        )

    def values(self) -> dict[str, Any]:
        return {name: getter() for name, getter in self.getters.items()}

    def set_values(self, model: BaseModel) -> None:
        for name, setter in self.setters.items():
            widget = self.widgets[name]
            widget.blockSignals(True)
            if isinstance(widget, TargetsEditor):
                widget.list.blockSignals(True)
            setter(getattr(model, name))
            widget.blockSignals(False)
            if isinstance(widget, TargetsEditor):
                widget.list.blockSignals(False)
