"""The Evaluate page offscreen: a real evaluation on a worker thread, progress, the score table and bar
chart, forgetting, the per-example table and its regressions filter, Stop, and errors shown, not raised."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pyqtgraph as pg
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.training.run import run
from adapter_studio.gui.pages.evaluate_page import EvaluatePage
from adapter_studio.gui.state import StudioState

from tests.conftest import write_jsonl

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def lora_run(tiny_llama: Path, alpaca_jsonl: Path, make_spec: Any) -> Path:
    lora = {"name": "lora", "target_modules": ["q_proj", "v_proj"]}
    result = run(make_spec(tiny_llama, alpaca_jsonl, lora, learning_rate=1e-2, max_steps=10, save_every=5,
                           eval_samples=0))  # fmt: skip
    assert result.status == "completed", result.error
    return result.run_dir


@pytest.fixture
def page(qtbot: Any) -> EvaluatePage:
    page = EvaluatePage(StudioState())
    qtbot.addWidget(page)
    page.errors = []  # type: ignore[attr-defined]
    page.error = page.errors.append  # type: ignore[method-assign]
    page.show()
    yield page
    page.stop()
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)  # no evaluation outlives its test


def start(page: EvaluatePage, run_dir: Path, *, limit: int = 8, shots: int = 2) -> None:
    page.state.set_current_run(run_dir)
    page.limit.setValue(limit)
    page.shots.setValue(shots)
    page.evaluate_button.click()


def test_evaluates_and_shows_table_chart_forgetting_and_rows(page: EvaluatePage, qtbot: Any, lora_run: Path) -> None:
    assert not page.evaluate_button.isEnabled()  # no run yet
    page.state.set_current_run(lora_run)
    checkpoints = [page.checkpoint.itemText(i) for i in range(page.checkpoint.count())]
    assert checkpoints == ["best", "last", "step-0000010", "step-0000005"]
    page.checkpoint.setCurrentText("step-0000010")
    seen: list[int] = []
    page.progress.valueChanged.connect(seen.append)
    said: list[str] = []  # the status line after each progress call: rows done, and the time left
    page._progress.changed.connect(lambda *_: said.append(page.status.text()))
    start(page, lora_run)
    assert page.busy and page.stop_button.isEnabled() and not page.evaluate_button.isEnabled()
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    assert page.errors == []  # type: ignore[attr-defined]
    result = page.result
    assert result.checkpoint == "step-0000010" and len(result.rows) == 8
    assert len(set(seen)) > 3 and page.progress.value() == page.progress.maximum()  # it moved, and ended full
    assert any(re.search(r"\(\d+/\d+, about \d+:\d\d left\)$", t) for t in said), said
    # the table: one row per metric, one column per model, the numbers of the result
    assert page.columns() == ["base", "in_context", "tuned"]
    assert page.scores.rowCount() == 5 and page.scores.columnCount() == 3
    assert [page.scores.horizontalHeaderItem(j).text() for j in range(3)] == ["Base", "In-context", "Tuned"]
    assert page.scores.item(0, 2).text() == f"{result.metrics['tuned']['exact_match']:.3f}"
    assert page.scores.item(4, 0).text() == f"{result.metrics['base']['bleu']:.3f}"
    bars = [i for i in page.chart.getPlotItem().items if isinstance(i, pg.BarGraphItem)]
    assert len(bars) == 3 and [list(b.opts["height"]) for b in bars][2] == list(result.metrics["tuned"].values())
    assert f"ratio {result.forgetting.ratio:.3f}" in page.forgetting.text()
    # the per-example table, and the regressions filter
    shown = page.shown_rows()
    assert page.examples.rowCount() == len(shown) == sum(r["change"] != 0 or r["differs"] for r in result.rows)
    headers = [page.examples.horizontalHeaderItem(j).text() for j in range(page.examples.columnCount())]
    assert headers == ["Row", "Input", "Expected", "Base", "In-context", "Tuned", "Change"]
    if shown:
        assert page.examples.item(0, 5).toolTip() == (shown[0]["answers"]["tuned"] or "(an empty answer)")
        assert page.examples.item(0, 1).toolTip() == shown[0]["input"]  # the whole input; the cell leads with
        assert shown[0]["input"].split("reverse ")[-1] in page.examples.item(0, 1).text()  # what differs
        assert page.examples.item(0, 6).text() == f"{shown[0]['change']:+.2f}"
        shown[0]["answers"]["tuned"] = ""  # an empty answer reads as the report writes it (it was a blank cell)
        page._fill_examples()
        assert page.examples.item(0, 5).text() == "∅"
    page.regressions_only.setChecked(True)
    assert page.examples.rowCount() == sum(r["regression"] for r in result.rows)
    assert page.open_report.isEnabled() and result.report.exists()
    assert str(result.report) in page.status.text()
    assert re.search(r"checkpoint (best \(step \d+\)|step \d+):", page.status.text())  # which point of the curves


def test_a_rule_found_in_the_answers_is_noted(page: EvaluatePage, qtbot: Any, lora_run: Path, tmp_path: Path) -> None:
    """Expected answers ending in '#### <number>' are compared by that number, and the status line says so."""
    data = write_jsonl(tmp_path / "sums.jsonl", [{"instruction": f"{i} + 1?", "output": f"so\n#### {i + 1}"}
                                                for i in range(4)])  # fmt: skip
    page.data_path.setText(str(data))
    page.forgetting_box.setChecked(False)
    start(page, lora_run, limit=4, shots=0)
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    assert page.errors == [] and all("extracted" in r for r in page.result.rows)  # type: ignore[attr-defined]
    assert "Note: 4 of 4 expected answers end in a final number after '####'" in page.status.text()


def test_a_preference_run_shows_how_it_ranks_the_pairs(page: EvaluatePage, qtbot: Any, tiny_llama: Path, make_spec: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    from adapter_studio.engine.objectives import OBJECTIVES

    from tests.test_preference import preference_rows

    spec = make_spec(tiny_llama, write_jsonl(tmp_path / "pairs.jsonl", preference_rows(40)), max_steps=2,
                     eval_samples=0, data={"eval_split": 0.2})  # fmt: skip
    result = run(spec.model_copy(update={"objective": OBJECTIVES["dpo"]()}))
    assert result.status == "completed", result.error
    page.forgetting_box.setChecked(False)
    start(page, result.run_dir, shots=0)
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    p = page.result.pairs
    assert page.errors == [] and p is not None and p.pairs == 8  # type: ignore[attr-defined]
    assert page.pairs.isVisible() and f"reward accuracy <b>{p.tuned['reward_accuracy']:.3f}</b>" in page.pairs.text()
    # the pair ranking leads the table and the chart: what a preference run was trained to change
    titles = [page.scores.verticalHeaderItem(i).text() for i in range(page.scores.rowCount())]
    assert titles[:3] == ["pairs ranked right", "… per token", "reward accuracy"] and "exact match" in titles
    tuned = page.columns().index("tuned")
    assert page.scores.item(0, tuned).text() == f"{p.tuned['prefers_chosen']:.3f}"
    assert page.scores.item(0, 0).text() == f"{p.base['prefers_chosen']:.3f}"
    assert page.scores.item(2, 0).text() == "—"  # the base has no reward accuracy: its rewards are its own
    bars = [i for i in page.chart.getPlotItem().items if isinstance(i, pg.BarGraphItem)]
    assert len(bars[0].opts["height"]) == len(titles) - 1 and len(bars[-1].opts["height"]) == len(titles)
    page.state.set_current_run(None)  # no run: nothing of it stays on show
    assert page.pairs.text() == ""


def test_a_classifier_shows_its_classes_and_confusions(page: EvaluatePage, qtbot: Any, tiny_bert_cls: Path,
                                                       classification_csv: Path, make_spec: Any) -> None:  # fmt: skip
    result = run(make_spec(tiny_bert_cls, classification_csv, learning_rate=1e-2, max_steps=20, eval_samples=0))
    assert result.status == "completed", result.error
    assert not page.classes_panel.isVisibleTo(page)  # no run: no classes
    start(page, result.run_dir, limit=24, shots=0)
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    c = page.result.classes
    assert page.errors == [] and c is not None and page.classes_panel.isVisibleTo(page)  # type: ignore[attr-defined]
    assert "classes: the weakest is" in page.classes_label.text() and "<b>" in page.classes_label.text()
    headers = [page.class_table.horizontalHeaderItem(j).text() for j in range(page.class_table.columnCount())]
    assert headers == ["Rows", "Precision", "Recall", "F1", "F1 features"]
    assert [page.class_table.verticalHeaderItem(i).text() for i in range(2)] == c.labels == ["negative", "positive"]
    assert page.class_table.item(1, 3).text() == f"{c.per_class['positive']['f1']:.3f}"
    counts = [[int(page.confusion.item(i, j).text()) for j in range(2)] for i in range(2)]
    assert counts == c.confusion and sum(map(sum, counts)) == len(page.result.rows)
    assert page.confusion.item(0, 1).toolTip().endswith("rows of 'negative' chosen as 'positive'")
    assert not page.shots.isEnabled() and "takes no examples" in page.shots.toolTip()  # it read 4, unused
    assert "a classifier answers with its labels" in page.forgetting.text()
    assert not page.forgetting_box.isEnabled() and not page.extract.isEnabled()  # ticked, they read as used
    page.state.set_current_run(None)
    assert not page.classes_panel.isVisibleTo(page)
    assert page.forgetting_box.isEnabled() and page.extract.isEnabled()


def test_stop_ends_it_and_saves_nothing(page: EvaluatePage, qtbot: Any, lora_run: Path) -> None:
    said: list[str] = []  # at the click: it read "Evaluating: … (16/190)" for seconds, Stop still on

    def stop(stage: str) -> None:
        if stage == "base" and not said:
            page.stop()
            said.append(page.status.text() if not page.stop_button.isEnabled() else "Stop still on")

    page._progress.changed.connect(lambda stage, done, total: stop(stage))
    before = set((lora_run / "evaluations").glob("*"))
    page.state.set_current_run(lora_run)
    shown = page.result and page.result.report  # the last saved evaluation, if a test before saved one
    start(page, lora_run, limit=40)
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    assert page.errors == [] and (page.result and page.result.report) == shown  # type: ignore[attr-defined]
    assert "stopped" in page.status.text()
    assert said == ["Stopping after the answers under way… (nothing is saved)"]
    assert set((lora_run / "evaluations").glob("*")) == before
    assert page.evaluate_button.isEnabled() and not page.stop_button.isEnabled()


def test_a_mistake_is_shown_not_raised(page: EvaluatePage, qtbot: Any, lora_run: Path) -> None:
    page.extract.setText("####(")
    start(page, lora_run)
    qtbot.waitUntil(lambda: not page.busy, timeout=WAIT_MS)
    (error,) = page.errors  # type: ignore[attr-defined]
    assert isinstance(error, UserError) and error.where == "--extract"
    assert "failed" in page.status.text()


def test_the_window_lists_the_page(window: Any) -> None:
    titles = [window.steps.item(i).text() for i in range(window.steps.count())]
    assert "8 · Evaluate" in titles and titles[-1] == "9 · Export"
    window.go_to("evaluate")
    assert window.stack.currentWidget() is window.pages["evaluate"]


def test_shows_the_last_saved_evaluation(page: EvaluatePage, lora_run: Path, tmp_path: Path) -> None:
    import shutil

    from adapter_studio.engine.evaluation.run_eval import EvalSettings, evaluate_run

    assert page.empty_note.isVisibleTo(page) and not page.chart.isVisibleTo(page)  # not bare axes: what comes
    saved = evaluate_run(lora_run, EvalSettings(limit=3, in_context=0, forgetting=False))
    page.state.set_current_run(lora_run)  # no evaluation runs: the saved one is read back
    assert not page.busy and page.result is not None
    assert not page.empty_note.isVisibleTo(page) and page.chart.isVisibleTo(page)
    assert page.shots.isEnabled() and page.forgetting.text() == "Forgetting: not measured (switched off)."
    assert page.result.metrics == saved.metrics and page.result.rows == saved.rows
    assert page.result.report == saved.report and page.columns() == ["base", "tuned"]
    assert page.scores.columnCount() == 2
    assert page.scores.item(0, 1).text() == f"{saved.metrics['tuned']['exact_match']:.3f}"
    assert "last evaluation" in page.status.text() and page.open_report.isEnabled()
    fresh = shutil.copytree(lora_run, tmp_path / "run", ignore=shutil.ignore_patterns("evaluations"))
    page.state.set_current_run(fresh)  # a run never evaluated: nothing shown
    assert page.result is None and page.scores.rowCount() == 0 and page.examples.rowCount() == 0
    assert not page.open_report.isEnabled()


def test_the_score_chart_follows_the_theme(qtbot: Any) -> None:
    """In the dark theme the axis text is light: a chart fixed to white left it unreadable."""
    kept = {k: pg.getConfigOption(k) for k in ("background", "foreground")}
    pg.setConfigOptions(background="#1e1f22", foreground="#dfe1e5")  # what gui.theme sets for dark
    try:
        page = EvaluatePage(StudioState())
        qtbot.addWidget(page)
        assert page.chart.backgroundBrush().color().name() == "#1e1f22"
    finally:
        pg.setConfigOptions(**kept)
