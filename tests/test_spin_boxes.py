"""The forms' number boxes say what they refuse, typed as a person types (Qt dropped the keystroke, or put the
last value back, without a word: r typed as -4 became 4, dropout 1.5 became 0.5)."""

from __future__ import annotations

import os
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from adapter_studio.engine.methods.low_rank import LoRA
from adapter_studio.engine.spec import TrainingSpec
from adapter_studio.gui.form_builder import SpecForm
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    ("spec", "field", "typed", "value", "said"),
    [
        (LoRA, "r", "-4", 8, "'-' is not allowed here: a whole number from 1 to 1,024; kept 8"),  # it read 4
        (LoRA, "r", "0", 8, "'0' is not allowed here: a whole number from 1 to 1,024; kept 8"),  # unfinished
        (LoRA, "dropout", "1.5", 0.05, "'1' is not allowed here: a number from 0 to 0.999; kept 0.050"),  # 0.5
        (TrainingSpec, "warmup_ratio", "3", 0.05, "'3' is not allowed here: a number from 0 to 0.5; kept 0.050"),
        (TrainingSpec, "max_steps", "abc", None, "is not allowed here: a whole number from 1 to 2,147,483,647, "
                                                 "or auto; kept auto"),
        (TrainingSpec, "max_steps", "0", None, "'0' is auto here: a whole number from 1 to 2,147,483,647, or auto"),
        (TrainingSpec, "save_every", "20000000000", 100, "'20000000000' is not allowed here: a whole number from "
                                                         "1 to 2,147,483,647; kept 100"),  # it read 2000000000
        (TrainingSpec, "save_every", "200", 200, ""),  # in range: nothing said
    ],
    ids=["negative r", "r of 0", "dropout over 1", "warm-up ratio of 3", "letters", "0 for auto", "too many digits",
         "in range"],
)
def test_a_refused_value_is_said_beside_its_box_and_the_value_kept(qtbot: Any, spec: type, field: str, typed: str,
                                                                   value: Any, said: str) -> None:  # fmt: skip
    form = SpecForm(spec, spec())
    qtbot.addWidget(form)
    form.show()
    box = form.widgets[field]
    box.lineEdit().selectAll()
    QTest.keyClicks(box, typed)
    QTest.keyClick(box, Qt.Key.Key_Return)
    assert form.values()[field] == value
    assert (said in box.last_refusal) if said else box.last_refusal == ""
