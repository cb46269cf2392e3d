"""The Runs page offscreen: history of every status, overlaid curves, spec diff, and run actions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from adapter_studio.engine.events import Finished, Started
from adapter_studio.gui.pages.runs_page import COLUMNS, RunsPage
from adapter_studio.gui.state import StudioState
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from test_run_history import OOM, fabricate_history, write_events, write_spec

pytestmark = pytest.mark.gui


@pytest.fixture
def history(tmp_path: Path) -> dict[str, Path]:
    return fabricate_history(tmp_path / "runs")


@pytest.fixture
def page(qtbot, history: dict[str, Path]) -> RunsPage:  # type: ignore[no-untyped-def]
    page = RunsPage(StudioState(runs_dir=str(history["done"].parent)))
    qtbot.addWidget(page)
    page.errors = []  # type: ignore[attr-defined]
    page.error = page.errors.append  # type: ignore[method-assign, attr-defined]
    return page


def table(page: RunsPage) -> dict[str, dict[str, str]]:
    rows = {}
    for row in range(page.table.rowCount()):
        cells = {COLUMNS[col]: page.table.item(row, col).text() for col in range(len(COLUMNS))}
        rows[cells["Name"]] = cells
    return rows


def diff_rows(page: RunsPage) -> list[tuple[str, ...]]:
    t = page.diff_table
    return [tuple(t.item(r, c).text() for c in range(3)) for r in range(t.rowCount())]


def test_lists_every_run_with_its_status(page: RunsPage) -> None:
    rows = table(page)
    assert list(rows) == ["resumed", "live", "crashed", "broken", "stopped", "done"]  # newest first
    assert {name: r["Status"] for name, r in rows.items()} == {
        "done": "completed", "stopped": "cancelled", "broken": "failed", "crashed": "interrupted",
        "live": "running", "resumed": "completed",
    }  # fmt: skip
    done = rows["done"]
    assert (done["Model"], done["Method"], done["Trainable"]) == ("tiny-llama", "lora", "16,384")
    assert (done["Steps"], done["Final eval loss"], done["Best eval loss"], done["Duration"]) == (
        "10 / 10", "1.5000", "1.5000", "0:12",
    )  # fmt: skip
    assert rows["crashed"]["Steps"] == "3 / 10"
    assert page.title == "Runs"


def test_selecting_two_runs_overlays_their_curves(page: RunsPage) -> None:
    page.select_runs(["done", "stopped"])
    assert [r.name for r in page.selected_runs()] == ["stopped", "done"]  # table order: newest first
    assert page.loss_plot.point_counts() == {"stopped": 4, "done": 10}
    assert page.eval_plot.point_counts() == {"stopped": 2, "done": 2}  # stopped: its base-model point at step 0 too
    low, high = page.eval_plot.getViewBox().viewRange()[0]
    assert low < 0 and high > 10  # its step-0 point and the training's last step: the loss plot's steps
    assert page.memory_plot.total_points() == 14
    assert len(page.loss_plot.plotItem.legend.items) == 2
    _, ys = page.memory_plot.curves["done"].getData()
    assert ys[-1] == pytest.approx(110.0)  # MiB

    page.select_runs(["broken"])
    assert page.loss_plot.point_counts() == {"broken": 2}
    assert len(page.loss_plot.plotItem.legend.items) == 1  # deselected runs leave the legend


def test_more_runs_selected_than_colours_draw_the_first_and_say_so(page: RunsPage, monkeypatch: Any) -> None:
    """Ctrl+A on 154 runs took 5 s drawing curves two by two in one colour: the plots draw the first
    MAX_OVERLAID, and a line above them says how many of how many."""
    from adapter_studio.gui.pages import runs_page

    monkeypatch.setattr(runs_page, "MAX_OVERLAID", 3)
    page.table.selectAll()
    assert len(page.selected_runs()) == 6
    assert list(page.loss_plot.curves) == [r.name for r in page.selected_runs()[:3]]
    assert not page.curves_note.isHidden()
    assert page.curves_note.text().startswith("The curves of the first 3 of the 6 selected runs")
    page.select_runs(["done", "stopped"])
    assert page.curves_note.isHidden() and set(page.loss_plot.curves) == {"done", "stopped"}


def test_two_runs_show_the_spec_fields_that_differ(page: RunsPage) -> None:
    assert not page.buttons["compare"].isEnabled()
    page.select_runs(["done", "stopped"])
    assert page.buttons["compare"].isEnabled()
    assert diff_rows(page) == [("method.r", "16", "8"), ("training.learning_rate", "0.001", "0.0002")]
    assert page.diff_table.horizontalHeaderItem(1).text() == "stopped"
    assert page.diff_label.text() == "2 fields differ between stopped and done"
    page.show_comparison()
    assert page.tabs.currentIndex() == 1
    page.select_runs(["done", "crashed"])
    assert diff_rows(page) == []
    assert "same spec" in page.diff_label.text()


def test_a_failed_run_shows_its_error(page: RunsPage) -> None:
    page.select_runs(["broken"])
    assert OOM in page.details.toPlainText()
    page.select_runs(["done"])
    assert "Error" not in page.details.toPlainText()


def test_delete_asks_and_removes(page: RunsPage, history: dict[str, Path], monkeypatch, qtbot) -> None:  # type: ignore[no-untyped-def]
    asked: list[list[str]] = []
    monkeypatch.setattr(page, "confirm_delete", lambda names: asked.append(names) or False)
    page.state.set_current_run(history["stopped"])
    page.select_runs(["stopped"])
    page.delete()
    assert asked == [["stopped"]] and history["stopped"].exists()
    page.show()
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)  # a shortcut acts in the active window
    page.table.setFocus()
    QTest.keyClick(page.table, Qt.Key.Key_Delete)  # the key asks too
    assert asked == [["stopped"], ["stopped"]] and history["stopped"].exists()
    QTest.keyClick(page.table, Qt.Key.Key_Tab)  # whole rows: Tab leaves the table for the buttons
    assert not page.table.hasFocus()

    monkeypatch.setattr(page, "confirm_delete", lambda names: asked.append(names) or True)
    page.delete()
    assert not history["stopped"].exists()
    assert "stopped" not in table(page) and len(table(page)) == 5
    assert page.state.current_run is None  # the deleted run is no longer the one Try/Export use
    assert page.status.text() == "Deleted stopped."  # not replaced by the refresh that forgetting it made


def test_a_running_run_cannot_be_deleted_or_renamed(page: RunsPage, history: dict[str, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(page, "confirm_delete", lambda names: pytest.fail("must not ask"))
    monkeypatch.setattr(page, "ask_new_name", lambda current: pytest.fail("must not ask"))
    page.select_runs(["live"])
    assert not page.buttons["delete"].isEnabled() and not page.buttons["rename"].isEnabled()
    page.delete()
    page.rename()
    assert len(page.errors) == 2 and all("still training" in e for e in page.errors)  # type: ignore[attr-defined]
    assert history["live"].exists()


def test_rename_moves_the_folder(page: RunsPage, history: dict[str, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    page.state.set_current_run(history["done"])
    monkeypatch.setattr(page, "ask_new_name", lambda current: "lora-r8-baseline")
    page.select_runs(["done"])
    page.rename()
    target = history["done"].with_name("lora-r8-baseline")
    assert target.is_dir() and not history["done"].exists()
    assert page.state.current_run == target
    assert [r.name for r in page.selected_runs()] == ["lora-r8-baseline"]

    monkeypatch.setattr(page, "ask_new_name", lambda current: "stopped")
    page.rename()
    assert "already exists" in page.errors[-1].message  # type: ignore[attr-defined]


def test_clone_loads_the_spec_into_the_state(page: RunsPage, history: dict[str, Path], qtbot) -> None:  # type: ignore[no-untyped-def]
    assert page.state.model is None
    page.select_runs(["stopped"])
    with qtbot.waitSignal(page.spec_cloned):
        page.clone_spec()
    state = page.state
    assert state.model.source == "/models/tiny-llama"
    assert state.data.path == "/data/reverse.jsonl"
    assert (state.method.name, state.method.r) == ("lora", 16)
    assert state.training.learning_rate == 0.001
    assert state.build_spec().name is None


def test_resume_hands_the_run_to_the_train_page_and_use_sets_the_current_run(
    page: RunsPage, history: dict[str, Path]
) -> None:
    resumed: list[Path] = []
    page.on_resume = resumed.append
    page.select_runs(["done"])
    assert not page.buttons["resume"].isEnabled()  # a completed run has nothing to resume
    page.use_run()
    assert page.state.current_run == history["done"]
    for name in ("crashed", "broken", "stopped"):
        page.select_runs([name])
        assert page.buttons["resume"].isEnabled()
        page.resume()  # the run becomes the current one when the Train page starts it, not before
    assert resumed == [history["crashed"], history["broken"], history["stopped"]]


def test_details_say_whether_resume_goes_on_or_starts_again(page: RunsPage, history: dict[str, Path]) -> None:
    """A search's pruned trial (its checkpoints deleted) read "Resume continues from the last checkpoint", and
    its resume started again from step 0 under a curve that folded back."""
    page.select_runs(["stopped"])
    assert "kept no checkpoint: Resume starts it again from step 0" in page.details.toPlainText()
    saved = history["stopped"] / "checkpoints" / "step-0000010"
    saved.mkdir(parents=True)
    (saved / "state.json").write_text('{"step": 10}')
    page.select_runs(["done"])
    page.select_runs(["stopped"])
    assert "Resume continues from the last checkpoint" in page.details.toPlainText()


def test_refreshes_on_run_changed_and_follows_the_folder_picker(page: RunsPage, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    page.select_runs(["done"])
    new = Path(page.state.runs_dir) / "fresh"
    write_spec(new, {"name": "lora"})
    write_events(new, [
        Started(run_dir=str(new), model="m", method="lora", trainable_params=1, total_params=2, total_steps=1,
                device="cpu"),
        Finished(status="completed", step=1, error=None, train_seconds=1.0, tokens_trained=1),
    ])  # fmt: skip
    page.state.set_current_run(new)
    assert table(page)["fresh"]["Status"] == "completed"
    assert [r.name for r in page.selected_runs()] == ["done"]  # the selection survives a refresh

    other = tmp_path / "elsewhere"
    write_spec(other / "only", {"name": "lora"})
    monkeypatch.setattr(page, "ask_folder", lambda: str(other))
    page.choose_folder()
    assert list(table(page)) == ["only"]
    assert table(page)["only"]["Status"] == "interrupted"  # a spec and no events: it never finished
    assert page.state.runs_dir == str(other)


def save_evaluation(run_dir: Path, tuned: float, *, forgetting: float | None = 1.25, rows: int = 3,
                    classes: Any = None, pairs: Any = None) -> Path:  # fmt: skip
    """A saved evaluation of `run_dir` as evaluate_run writes it, with scores chosen here (no model runs)."""
    from adapter_studio.engine.evaluation.forgetting import Forgetting
    from adapter_studio.engine.evaluation.report import write_evaluation
    from adapter_studio.engine.evaluation.run_eval import EvalSettings, EvaluationResult

    row = {"index": 0, "where": "reverse.jsonl:1", "input": "abc", "expected": "cba", "answers": {"base": "abc",
           "tuned": "cba"}, "exact": {"base": 0.0, "tuned": 1.0}, "scores": {"base": 0.0, "tuned": 1.0},
           "change": 1.0, "differs": True, "regression": False}  # fmt: skip
    result = EvaluationResult(
        run_dir=run_dir, checkpoint="step-10", task="generation", data="held-out rows of the run",
        settings=EvalSettings(), precision="float32",
        metrics={"base": {"exact_match": 0.25, "token_f1": 0.5}, "tuned": {"exact_match": tuned, "token_f1": 0.75},
                 "in_context": {"exact_match": 0.4, "token_f1": 0.6}},
        baselines={"base": "the base model"}, rows=[{**row, "index": i} for i in range(rows)],
        forgetting=None if forgetting is None else Forgetting(loss_base=2.0, loss_tuned=2.0 * forgetting,
                                                              ratio=forgetting, pairs=20),
        classes=classes, pairs=pairs,
    )  # fmt: skip
    return write_evaluation(result)


def evaluated_cell(page: RunsPage, name: str) -> Any:
    row = next(r for r in range(page.table.rowCount()) if page.table.item(r, 0).text() == name)
    return page.table.item(row, COLUMNS.index("Evaluated"))


def test_the_latest_evaluation_shows_in_the_table_and_the_details(
    page: RunsPage, history: dict[str, Path], monkeypatch: Any
) -> None:
    save_evaluation(history["stopped"], 0.5, forgetting=None)
    first = save_evaluation(history["done"], 0.55)
    report = save_evaluation(history["done"], 0.95, rows=7)  # the newest of two
    assert report != first and report.is_file()
    page.refresh()
    cell = evaluated_cell(page, "done")
    assert (cell.text(), cell.key) == ("exact match 0.950", pytest.approx(0.95))
    assert "base model 0.250" in cell.toolTip()
    assert evaluated_cell(page, "stopped").text() == "exact match 0.500"
    assert (evaluated_cell(page, "broken").text(), evaluated_cell(page, "broken").key) == ("", "")

    page.table.sortByColumn(COLUMNS.index("Evaluated"), Qt.SortOrder.DescendingOrder)
    assert [page.table.item(r, 0).text() for r in range(3)] == ["done", "stopped", "resumed"]  # then unevaluated

    page.select_runs(["done"])
    text = page.evaluation.text.toPlainText()
    for shown in ("newest of 2 evaluations", "checkpoint step-10", "7 rows of held-out rows of the run",
                  "forgetting ratio 1.250", "exact match", "token F1", "base", "in-context", "tuned"):  # fmt: skip
        assert shown in text, shown
    assert "0.950" in text and "0.550" not in text  # the newest evaluation, not the first
    assert text.index("base") < text.index("in-context") < text.index("tuned")
    assert page.evaluation.open_button.isEnabled()
    opened: list[Path] = []
    monkeypatch.setattr(page, "open_path", opened.append)
    page.evaluation.open_button.click()
    assert opened == [report]

    page.select_runs(["stopped"])
    assert "forgetting not checked" in page.evaluation.text.toPlainText()
    assert "evaluations" not in page.evaluation.text.toPlainText()  # only one: no count
    assert "classes:" not in page.evaluation.text.toPlainText()


def test_a_preference_runs_evaluation_leads_with_the_pairs_it_ranks_right(
    page: RunsPage, history: dict[str, Path]
) -> None:
    from adapter_studio.engine.evaluation.pairs import PairScores

    scores = {"prefers_chosen": 0.9, "prefers_chosen_per_token": 0.8, "reward_accuracy": 0.95}
    pairs = PairScores(pairs=60, skipped=0, base={**scores, "prefers_chosen": 0.85, "reward_accuracy": 0.0},
                       tuned=scores, margin_base=6.0, margin_tuned=15.0)  # fmt: skip
    save_evaluation(history["done"], 0.25, pairs=pairs)
    page.refresh()
    cell = evaluated_cell(page, "done")
    assert (cell.text(), cell.key) == ("pairs ranked right 0.900", pytest.approx(0.9))
    assert "base model 0.850" in cell.toolTip()
    page.select_runs(["done"])
    text = page.evaluation.text.toPlainText()
    assert "preference pairs: 60 scored" in text and "reward accuracy 0.950" in text and "exact match" in text


def test_a_classifiers_evaluation_says_where_it_is_wrong(page: RunsPage, history: dict[str, Path]) -> None:
    from adapter_studio.engine.evaluation.classes import class_scores, summary

    classes = class_scores([0, 0, 1, 1], [0, 1, 1, 1], {0: "<b>World</b>", 1: "Sports"})
    save_evaluation(history["done"], 0.75, classes=classes)
    page.refresh()
    page.select_runs(["done"])
    assert summary(classes) in page.evaluation.text.toPlainText()  # the labels shown as written, not as markup


def test_a_run_without_evaluation_shows_none(page: RunsPage, monkeypatch: Any) -> None:
    assert not page.evaluation.open_button.isEnabled()  # nothing selected
    page.select_runs(["broken"])
    assert "No evaluation yet" in page.evaluation.text.toPlainText()
    assert not page.evaluation.open_button.isEnabled()
    monkeypatch.setattr(page, "open_path", lambda path: pytest.fail("nothing to open"))
    page.evaluation.open_report()


def test_a_corrupt_results_file_is_skipped(page: RunsPage, history: dict[str, Path]) -> None:
    good = save_evaluation(history["done"], 0.8)
    cut = history["done"] / "evaluations" / "29990101-000000" / "results.json"  # newer than any real one
    cut.parent.mkdir()
    cut.write_text('{"metrics": {"tuned": ', encoding="utf-8")
    only_cut = history["broken"] / "evaluations" / "20250101-000000" / "results.json"
    only_cut.parent.mkdir(parents=True)
    only_cut.write_text("not json", encoding="utf-8")
    page.refresh()
    assert evaluated_cell(page, "done").text() == "exact match 0.800"
    assert evaluated_cell(page, "broken").text() == ""
    page.select_runs(["done"])
    assert "0.800" in page.evaluation.text.toPlainText() and page.evaluation.summary.report == good
    page.select_runs(["broken"])
    assert not page.evaluation.open_button.isEnabled()


def test_refresh_reads_each_evaluation_once(page: RunsPage, history: dict[str, Path], monkeypatch: Any) -> None:
    from adapter_studio.engine.evaluation import run_eval

    save_evaluation(history["done"], 0.5)
    read: list[Path] = []
    real = run_eval.latest_evaluation
    monkeypatch.setattr(run_eval, "latest_evaluation", lambda run_dir: read.append(run_dir) or real(run_dir))
    page.refresh()
    page.refresh()
    page.select_runs(["done"])
    assert read == [history["done"]]  # runs without an evaluations folder are never read; unchanged ones once
    save_evaluation(history["done"], 0.6)
    page.refresh()
    assert read == [history["done"]] * 2 and evaluated_cell(page, "done").text() == "exact match 0.600"


def test_the_runs_table_keeps_its_columns_narrow_enough_to_fit(qtbot: Any, tmp_path: Path) -> None:
    """At 1,280 px Evaluated, Duration and Date sat behind the scroll bar: every column is at most
    RUNS_COLUMN_PX wide (the text whole in its tooltip), the model named without 'embedded:'."""
    from adapter_studio.gui.pages.runs_page import RUNS_COLUMN_PX

    run = tmp_path / "runs" / "lora-20261207-000000"
    run.mkdir(parents=True)
    (run / "spec.yaml").write_text("model: {source: embedded:smollm2-135m-instruct}\ndata: {path: d.jsonl}\n"
                                   "method: {name: lora}\n")  # fmt: skip
    state = StudioState(runs_dir=str(tmp_path / "runs"))
    page = RunsPage(state)
    qtbot.addWidget(page)
    page.refresh()
    assert page.table.rowCount() == 1
    model = page.table.item(0, 2)
    assert model.text() == "smollm2-135m-instruct" and model.toolTip() == "embedded:smollm2-135m-instruct"
    assert all(page.table.columnWidth(c) <= RUNS_COLUMN_PX for c in range(page.table.columnCount()))


def test_the_durations_on_runs_and_train_say_what_each_counts(qtbot: Any, tmp_path: Path) -> None:
    """A run's Duration (Runs) and elapsed (Train) differ by loading, evaluations and saving: each says so."""
    from adapter_studio.gui.pages.train_page import TrainPage

    state = StudioState(runs_dir=str(tmp_path / "runs"))
    page = RunsPage(state)
    train = TrainPage(state)
    qtbot.addWidget(page)
    qtbot.addWidget(train)
    assert "from its first event to its last" in page.table.horizontalHeaderItem(COLUMNS.index("Duration")).toolTip()
    assert "training steps" in train.stats["elapsed"].toolTip()


def test_the_current_run_is_selected_when_nothing_else_is(qtbot: Any, tmp_path: Path) -> None:
    """After a run the page showed empty curves and 'Select a run to see its details'."""
    fabricate_history(tmp_path / "runs")
    state = StudioState(runs_dir=str(tmp_path / "runs"))
    page = RunsPage(state)
    qtbot.addWidget(page)
    newest = max((tmp_path / "runs").iterdir(), key=lambda p: p.name)
    state.set_current_run(newest)
    assert [r.path.resolve() for r in page.selected_runs()] == [newest.resolve()]


def test_a_runs_folder_that_cannot_be_written_is_said(page: RunsPage, tmp_path: Path, monkeypatch: Any) -> None:
    """A read-only folder typed on the page was taken (and kept for later starts) until Start failed."""
    import os

    from adapter_studio.gui import dialogs

    shared = tmp_path / "shared"
    shared.mkdir()
    real = os.access
    monkeypatch.setattr(dialogs.os, "access", lambda path, mode: Path(path) != shared and real(path, mode))
    page.set_runs_dir(str(shared / "runs"))  # not there: it would be made in the read-only folder
    assert page.status.text().endswith(f"new runs cannot be written here ({shared} is read-only): pick another "
                                       "folder to train")  # fmt: skip
    page.set_runs_dir(str(tmp_path / "mine"))
    assert page.status.text() == f"0 runs in {tmp_path / 'mine'}"


def test_the_table_narrows_its_columns_to_show_them_all(page: RunsPage, qtbot) -> None:  # type: ignore[no-untyped-def]
    """At 1,280 px the table needed a horizontal scroll: Duration cut, Date (the column sorted by) out of sight."""
    page.resize(1100, 700)
    page.show()
    qtbot.waitExposed(page)
    wide = sum(page.table.columnWidth(c) for c in range(page.table.columnCount()))
    page.resize(850, 700)
    qtbot.waitUntil(lambda: page.table.horizontalScrollBar().maximum() == 0)
    narrow = [page.table.columnWidth(c) for c in range(page.table.columnCount())]
    assert sum(narrow) <= page.table.viewport().width() < wide and min(narrow) > 0
