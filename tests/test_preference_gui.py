"""The window's objective picker (issue 24): beside the method, a generated form per objective, and a
DPO run started from the window on preference pairs, whose metrics carry the reward fields and whose
rewards and preference accuracy are plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from adapter_studio.engine.spec import TrainingSpec

from tests.conftest import write_jsonl
from tests.test_gui import choose
from tests.test_preference import preference_rows

pytestmark = pytest.mark.gui


def test_objective_picker_forms_and_a_dpo_run_from_the_window(
    window: Any, qtbot: Any, tiny_llama: Path, tmp_path: Path
) -> None:
    from adapter_studio.engine.objectives import OBJECTIVES

    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(80))
    choose(window, qtbot, tiny_llama, pairs)
    assert window.pages["data"].preview.format == "preference"
    page = window.pages["method"]
    window.go_to("method")
    assert window.state.objective.name == "dpo" and page.objective_picker.currentData() == "dpo"  # picked by the data
    for name, cls in OBJECTIVES.items():
        page.select_objective(name)
        assert window.state.objective.name == name
        assert page.objective_form is not None and page.objective_form.model_cls is cls
        assert set(page.objective_form.widgets) == set(cls.model_fields) - {"name"}
        assert cls.description in page.objective_details.text()
        # an objective these pairs cannot train (KTO, supervised) says so before Start, not as a failed run
        assert ("Cannot train" in page.objective_details.text()) == (not cls.trains_on("preference"))
        assert ("or pick DPO above" in page.objective_details.text()) == (not cls.trains_on("preference"))
        # the method's learning rate, as the objective's default lowers it
        assert (f"for {cls.title}" in page.details.text()) == cls.pairwise, page.details.text()
    page.select_objective("dpo")
    page.objective_form.setters["beta"](0.25)  # as typed: the form reports it
    page.objective_form.changed.emit(page.objective_form.values())
    assert window.state.objective == OBJECTIVES["dpo"](beta=0.25)
    assert "preference" in page.objective_details.text()
    window.state.training = TrainingSpec(max_steps=4, batch_size=4, save_every=4, eval_samples=0,
                                         precision="float32")  # fmt: skip
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    metrics = window.train_page.metrics
    assert metrics[-1].step == 4 and all(m.reward_margin is not None for m in metrics)
    assert "beta: 0.25" in (window.train_page.run_dir / "spec.yaml").read_text()
    window.train_page.replot_incremental()
    rewards = window.train_page.plots["rewards"].point_counts()
    assert rewards["chosen"] == rewards["rejected"] == rewards["margin"] == 4
    assert window.train_page.plots["quality"].point_counts()["preference accuracy (batch)"] == 4


@pytest.mark.parametrize("name", ["ipo", "simpo", "orpo", "kto"])
def test_every_other_objective_trains_from_the_window(name: str, window: Any, qtbot: Any, tiny_llama: Path,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from tests.test_preference import kto_rows

    rows = kto_rows(80) if name == "kto" else preference_rows(80)
    choose(window, qtbot, tiny_llama, write_jsonl(tmp_path / "data.jsonl", rows))
    assert window.pages["data"].preview.format == ("kto" if name == "kto" else "preference")
    window.go_to("method")
    window.pages["method"].select_objective(name)
    window.state.training = TrainingSpec(max_steps=3, batch_size=4, save_every=3, eval_every=3, eval_samples=0,
                                         precision="float32")  # fmt: skip
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    metrics = window.train_page.metrics
    # A KTO batch whose answers are all desirable (or all not) has no margin between the two kinds.
    margins = [m.reward_margin is not None for m in metrics]
    assert metrics[-1].step == 3 and (any(margins) if name == "kto" else all(margins))
    assert all((m.preference_accuracy is None) == (name == "kto") for m in metrics)
    assert f"name: {name}" in (window.train_page.run_dir / "spec.yaml").read_text()


def test_the_data_picks_an_objective_that_trains_on_it(window: Any, qtbot: Any, tiny_llama: Path,
                                                       tmp_path: Path) -> None:  # fmt: skip
    """Pairs bring DPO, KTO's marked answers KTO, other data the supervised objective back; an objective
    chosen that fits the data stays, and the Data page says when the data changed it."""
    from tests.test_data import alpaca_rows
    from tests.test_preference import kto_rows

    data = window.pages["data"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(20))
    steps = [(pairs, "dpo"), (write_jsonl(tmp_path / "kto.jsonl", kto_rows(20)), "kto"),
             (write_jsonl(tmp_path / "sft.jsonl", alpaca_rows()), "sft")]  # fmt: skip

    def load(path: Path) -> None:
        data.path.setText(str(path))
        data.reload(keep_mapping=False)
        qtbot.waitUntil(lambda: not data.busy and data.summary.text() != "Reading…", timeout=30_000)

    choose(window, qtbot, tiny_llama, steps[-1][0])
    assert window.state.objective.name == "sft" and "Objective: <b>" not in data.summary.text()
    for path, name in steps:
        load(path)
        assert window.state.objective.name == name
        assert f"Objective: <b>{window.state.objective.title}</b>" in data.summary.text()
        assert window.pages["method"].objective_picker.currentData() == name
    window.pages["method"].select_objective("ipo")
    assert window.state.objective.name == "ipo"  # on supervised data: the next pairs keep it
    load(pairs)
    assert window.state.objective.name == "ipo" and data.preview.format == "preference"
