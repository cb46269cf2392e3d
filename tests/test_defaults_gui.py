"""The Method page says which values the engine will choose for the fields left empty, and why."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.gui


def test_method_page_explains_each_chosen_value_and_follows_edits(window: Any, qtbot: Any, tiny_llama: Any) -> None:
    page = window.pages["method"]
    assert "once one is picked" in page.chosen.text()
    window.pages["model"].choose(str(tiny_llama))
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.go_to("method")
    text = page.chosen.text()
    assert "Chosen for you" in text and "smaller models take higher rates" in text
    assert "learning rate</b> = 0.002" in text and "batch size</b> = 4" in text
    assert "target modules</b> = q_proj, k_proj, v_proj, o_proj" in text and "epochs" in text
    assert "0.002 on this model" in page.details.text()

    page.training_form.setters["batch_size"](2)  # as typed: the form reports it
    page.training_form.changed.emit(page.training_form.values())
    assert window.state.training.batch_size == 2
    text = page.chosen.text()
    assert "batch size</b>" not in text  # the person's own value
    assert "learning rate</b> = 0.0014" in text and "lowered from 0.002 for a batch of 2" in text

    page.select("prompt_tuning")
    assert "target modules" not in page.chosen.text() and "usual rate" in page.chosen.text()


@pytest.mark.parametrize(
    ("ticked", "hint"),
    [
        (None, "None ticked: the method's usual choice for this model."),
        (["q_proj", "v_proj"], "2 of 4 ticked; untick all for the method's usual choice."),
        ([], "None ticked: the method's usual choice for this model."),
    ],
)
def test_the_targets_hint_says_what_the_ticks_mean_now(qtbot: Any, ticked: list[str] | None, hint: str) -> None:
    from adapter_studio.gui.form_builder import TargetsEditor
    from PySide6.QtCore import Qt

    editor = TargetsEditor(["q_proj", "k_proj", "v_proj", "o_proj"], {"attention": ["q_proj", "v_proj"]})
    qtbot.addWidget(editor)
    assert editor.hint.text().startswith("None ticked")
    editor.set_value(ticked)
    assert editor.hint.text() == hint
    editor.list.item(1).setCheckState(Qt.CheckState.Checked)  # a click on k_proj
    assert editor.hint.text().startswith(f"{len(ticked or []) + 1} of 4 ticked")
    editor.set_names(["q_proj", "v_proj"])  # another model: nothing ticked any more
    assert editor.hint.text().startswith("None ticked")
