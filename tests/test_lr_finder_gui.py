"""The learning-rate finder in the window: the form's "auto" and the Train page's range-test curve."""

from __future__ import annotations

import math

import pytest
from adapter_studio.engine.events import LrFinder
from adapter_studio.engine.spec import TrainingSpec
from adapter_studio.gui.form_builder import NumberOrWord, SpecForm

pytestmark = pytest.mark.gui


def test_the_learning_rate_field_takes_a_number_the_default_or_auto(qtbot) -> None:  # type: ignore[no-untyped-def]
    form = SpecForm(TrainingSpec, TrainingSpec())
    qtbot.addWidget(form)
    field = form.widgets["learning_rate"]
    assert isinstance(field, NumberOrWord)  # generated from `float | Literal["auto"] | None`
    assert field.words["auto"].text() == "find automatically"
    assert field.toolTip() == TrainingSpec.model_fields["learning_rate"].description
    assert form.values()["learning_rate"] is None and field.spin.text() == "default"
    seen: list[dict] = []
    form.changed.connect(seen.append)
    field.words["auto"].setChecked(True)
    assert seen[-1]["learning_rate"] == "auto" and not field.spin.isEnabled()
    assert TrainingSpec.model_validate(seen[-1]).learning_rate == "auto"
    field.words["auto"].setChecked(False)
    field.spin.setValue(0.003)
    assert seen[-1]["learning_rate"] == pytest.approx(0.003) and field.spin.isEnabled()
    assert field.spin.minimum() < 1e-6 and field.spin.maximum() == pytest.approx(10.0)  # the declared bounds
    form.set_values(TrainingSpec(learning_rate="auto"))
    assert field.words["auto"].isChecked() and form.values()["learning_rate"] == "auto"
    form.set_values(TrainingSpec(learning_rate=0.002))
    assert not field.words["auto"].isChecked() and form.values()["learning_rate"] == pytest.approx(0.002)


def test_auto_runs_the_finder_and_the_train_page_shows_its_curve(window, qtbot, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    from test_gui import choose

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.go_to("method")
    field = window.pages["method"].training_form.widgets["learning_rate"]
    field.words["auto"].setChecked(True)
    assert window.state.training.learning_rate == "auto"
    window.state.training = window.state.training.model_copy(
        update={"max_steps": 3, "batch_size": 4, "save_every": 3, "eval_samples": 0, "precision": "float32"}
    )
    train = window.train_page
    window.go_to("train")
    train.start()
    qtbot.waitUntil(lambda: train.finder_plot.total_points() > 0, timeout=120_000)
    assert "learning rate" in train.finder_label.text()
    qtbot.waitUntil(lambda: not train.controller.running, timeout=120_000)
    assert train.last_status == "completed", train.last_error

    from adapter_studio.engine.events import read_events

    event = next(e for e in read_events(train.run_dir / "events.jsonl") if isinstance(e, LrFinder))
    counts = train.finder_plot.point_counts()
    assert counts == {"loss at each step": len(event.rates), "smoothed": len(event.rates)}
    assert train.finder_plot.chosen == event.chosen
    assert train.finder_plot.chosen_line.isVisible()
    assert train.finder_plot.chosen_line.value() == pytest.approx(math.log10(event.chosen))  # log x axis
    assert train.finder_plot.getPlotItem().getAxis("bottom").logMode
    assert f"{event.chosen:.2g}" in train.finder_label.text() and event.reason in train.finder_label.text()
    assert train.more.currentWidget() is train.finder_tab
    assert train.metrics[-1].step == 3
    assert max(m.lr for m in train.metrics) <= event.chosen * (1 + 1e-9)
