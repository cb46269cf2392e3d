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


def test_a_set_rate_far_from_the_methods_usual_one_is_said_with_a_way_back(
    window: Any, qtbot: Any, tiny_llama: Any
) -> None:
    """The demo's LoRA rate (1e-3) kept when full fine-tuning is picked would unlearn the model: the page says
    so beside the Training box, and its link leaves the rate to the app."""
    page = window.pages["method"]
    window.pages["model"].choose(str(tiny_llama))
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.state.set_training(window.state.training.model_copy(update={"learning_rate": 1e-3}))
    assert "Learning rate 0.001 is" not in page.chosen.text()  # LoRA's 0.002 on this model: near enough
    page.select("full")
    assert "Learning rate 0.001 is 50× the usual 2e-05 for Full fine-tuning on this model" in page.chosen.text()
    page.chosen.linkActivated.emit("auto")
    assert window.state.training.learning_rate is None
    assert "Learning rate 0.001" not in page.chosen.text() and "learning rate</b> = 2e-05" in page.chosen.text()


def test_each_method_keeps_its_settings_when_another_is_looked_at(window: Any, qtbot: Any, tiny_llama: Any) -> None:
    page = window.pages["method"]
    window.pages["model"].choose(str(tiny_llama))
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    page.select("lora")
    page.form.setters["r"](4)
    page.form.setters["target_modules"](["q_proj", "v_proj"])
    page.form.changed.emit(page.form.values())
    assert (window.state.method.r, window.state.method.target_modules) == (4, ["q_proj", "v_proj"])
    page.select("full")
    page.select("ia3")
    page.select("lora")
    assert (window.state.method.r, window.state.method.target_modules) == (4, ["q_proj", "v_proj"])
    targets = page.form.widgets["target_modules"]
    assert targets.hint.text() == "2 of 7 ticked; untick all for the method's usual choice."  # loaded, not typed


def test_method_details_show_declared_text_as_written(window: Any) -> None:
    page = window.pages["method"]
    from adapter_studio.engine.methods import METHOD_CLASSES
    from PySide6.QtGui import QTextDocument

    for cls in METHOD_CLASSES:  # IA3's share reads "< 0.05%": rich text took the "<" for a tag and showed nothing
        page.select(cls.model_fields["name"].default)
        document = QTextDocument()
        document.setHtml(page.details.text())
        assert cls.typical_share in document.toPlainText() and cls.description in document.toPlainText()


def test_a_method_without_settings_says_so_instead_of_an_empty_box(window: Any) -> None:
    page = window.pages["method"]
    page.select("full")
    assert not page.form.widgets and page.no_settings.isVisibleTo(page)
    assert page.no_settings.text().startswith("Full fine-tuning has no settings of its own")
    page.select("lora")
    assert page.form.widgets and not page.no_settings.isVisibleTo(page)


def test_remembered_method_settings_give_way_to_a_new_model_and_after_the_demo(qtbot: Any, tmp_path: Any) -> None:
    from adapter_studio.engine.methods import METHODS
    from adapter_studio.engine.spec import DataSpec, ModelSpec, RunSpec
    from adapter_studio.gui.state import StudioState

    state = StudioState()
    state.set_model("/models/one")
    state.set_method(METHODS["lora"](r=4, target_modules=["q_proj", "v_proj"]))
    state.set_method(METHODS["full"]())
    assert state.method_named("lora").r == 4
    state.set_model("/models/gpt2")  # q_proj is not a layer of every model
    assert state.method_named("lora") == METHODS["lora"]()

    demo = RunSpec(model=ModelSpec(source="/models/one"), data=DataSpec(path="demo.jsonl"),
                   method=METHODS["lora"](r=8, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    state.load_spec(demo, demo=True)
    state.set_method(METHODS["full"]())  # a look at another method before the person's own data
    state.set_data(DataSpec(path=str(tmp_path / "mine.jsonl")))
    assert state.method_named("lora") == METHODS["lora"]()  # not the demo's recipe for its dates
