"""Spin boxes that say what they refuse. Qt drops a keystroke that cannot make a value in range, and puts the
last value back over one left unfinished, without a word: r typed as -4 became 4, dropout 1.5 became 0.5,
a warm-up ratio of 3 stayed 0.05. These show, beside the box, what it takes."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, QRect
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox, QToolTip

SHOWN_MS = 5000


class _SaysRefusals:
    """For a QSpinBox or QDoubleSpinBox: `last_refusal` is the latest message shown."""

    last_refusal = ""

    def _range_words(self: Any) -> str:
        whole = isinstance(self, QSpinBox)
        special = self.specialValueText()
        low = self.minimum() + ((1 if whole else 10 ** -self.decimals()) if special else 0)
        shown = (lambda x: f"{x:,}") if whole else (lambda x: f"{x:g}")
        words = f"{'a whole number' if whole else 'a number'} from {shown(low)} to {shown(self.maximum())}"
        return f"{words}, or {special}" if special else words

    def _say(self: Any, typed: str) -> None:
        typed = typed.strip()
        if not typed or typed == self.specialValueText():
            return
        self.last_refusal = f"'{typed}' is not allowed here: {self._range_words()}"
        QToolTip.showText(self.mapToGlobal(QPoint(0, self.height())), self.last_refusal, self, QRect(), SHOWN_MS)

    def validate(self: Any, text: str, pos: int) -> object:
        result = super().validate(text, pos)  # type: ignore[misc]
        if result[0] == QValidator.State.Invalid:  # the keystroke is dropped
            self._say(text)
        return result

    def fixup(self: Any, text: str) -> str:
        self._say(text)  # left unfinished ("0" where r starts at 1): the last value comes back
        return super().fixup(text)  # type: ignore[misc]


class SpinBox(_SaysRefusals, QSpinBox):
    pass


class DoubleSpinBox(_SaysRefusals, QDoubleSpinBox):
    pass
