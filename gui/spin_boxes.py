"""Spin boxes that say what they refuse. Qt drops a keystroke that cannot make a value in range, and puts the
last value back over one left unfinished, without a word: r typed as -4 became 4, dropout 1.5 became 0.5,
a warm-up ratio of 3 stayed 0.05. These say, beside the box, what it takes; an edit with a refused keystroke
ends on the value it started from (the keys typed after the refused one made a number no one typed: 5000
read 500), and a number that is the box's special value (0 for max steps: auto) is said as such."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, QRect
from PySide6.QtGui import QKeyEvent, QValidator
from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox, QToolTip

SHOWN_MS = 6000


class _SaysRefusals:
    """For a QSpinBox or QDoubleSpinBox: `last_refusal` is the latest message shown."""

    last_refusal = ""
    _start: Any = None  # the value an edit started from, while one is under way
    _refused = ""  # the edit's first refused text
    _typed = ""  # the text last accepted as typed

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.editingFinished.connect(self._edited)  # type: ignore[attr-defined]

    def _special(self: Any) -> str:
        return self.specialValueText().split(":")[0]  # "auto: 6 of 60 rows" is auto

    def _range_words(self: Any) -> str:
        whole = isinstance(self, QSpinBox)
        special = self._special()
        low = self.minimum() + ((1 if whole else 10 ** -self.decimals()) if special else 0)
        shown = (lambda x: f"{x:,}") if whole else (lambda x: f"{x:g}")
        words = f"{'a whole number' if whole else 'a number'} from {shown(low)} to {shown(self.maximum())}"
        return f"{words}, or {special}" if special else words

    def _say(self: Any, message: str) -> None:
        self.last_refusal = message
        QToolTip.showText(self.mapToGlobal(QPoint(0, self.height())), message, self, QRect(), SHOWN_MS)

    def keyPressEvent(self: Any, event: QKeyEvent) -> None:
        if self._start is None:
            self._start = self.value()
        super().keyPressEvent(event)  # type: ignore[misc]

    def validate(self: Any, text: str, pos: int) -> object:
        result = super().validate(text, pos)  # type: ignore[misc]
        typed = text.strip()
        if result[0] == QValidator.State.Invalid and typed and self._start is not None:  # the keystroke is dropped
            self._refused = self._refused or typed
            self._say(f"'{typed}' is not allowed here: {self._range_words()}")
        elif result[0] == QValidator.State.Acceptable:
            self._typed = typed
        return result

    def fixup(self: Any, text: str) -> str:
        typed = text.strip()
        if typed and typed != self.specialValueText():  # left unfinished ("0" where r starts at 1)
            self._refused = self._refused or typed
        return super().fixup(text)  # type: ignore[misc]

    def _edited(self: Any) -> None:
        start, refused, typed = self._start, self._refused, self._typed
        self._start, self._refused, self._typed = None, "", ""
        if start is None:
            return
        if refused:
            self.setValue(start)
            kept = self.textFromValue(start) if start != self.minimum() or not self._special() else self._special()
            self._say(f"'{refused}' is not allowed here: {self._range_words()}; kept {kept}")
        elif self._special() and self.value() == self.minimum() and typed and typed != self.specialValueText():
            self._say(f"'{typed}' is {self._special()} here: {self._range_words()}")


class SpinBox(_SaysRefusals, QSpinBox):
    pass


class DoubleSpinBox(_SaysRefusals, QDoubleSpinBox):
    pass
