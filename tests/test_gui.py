"""The real window, offscreen: choose a tiny model and data, train, watch the plots, export both ways."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from adapter_studio.engine.spec import TrainingSpec
from PySide6.QtWidgets import QApplication, QMenu, QMessageBox

pytestmark = pytest.mark.gui


def error_dialogs() -> list[QMessageBox]:
    return [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]


def menu_action(window, text: str):  # type: ignore[no-untyped-def]
    return next(a for menu in window.menuBar().findChildren(QMenu) for a in menu.actions() if a.text() == text)


def choose(window, qtbot, model: Path, data: Path) -> None:  # type: ignore[no-untyped-def]
    window.pages["model"].choose(str(model))
    qtbot.waitUntil(lambda: window.state.model_summary is not None, timeout=60_000)
    page = window.pages["data"]
    page.path.setText(str(data))
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: page.preview is not None, timeout=30_000)


def test_train_watch_and_export_from_the_window(window, qtbot, tiny_llama, alpaca_jsonl, tmp_path):  # type: ignore[no-untyped-def]
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    data_page = window.pages["data"]
    assert data_page.preview.format == "alpaca"
    assert data_page.table.rowCount() == 50
    qtbot.waitUntil(lambda: data_page.tokenizer is not None, timeout=30_000)
    data_page.show_rendered()
    assert "carry loss" in data_page.rendered.toHtml()

    window.go_to("method")
    form = window.pages["method"].form
    assert {"r", "alpha", "dropout", "target_modules"} <= set(form.field_names)
    targets = form.widgets["target_modules"]
    names = [targets.list.item(i).text() for i in range(targets.list.count())]
    assert {"q_proj", "v_proj", "o_proj", "gate_proj"} <= set(names), names  # the model's real layers
    assert form.widgets["r"].minimum() == 1  # r=0 cannot even be typed
    window.state.training = TrainingSpec(max_steps=30, batch_size=4, learning_rate=0.01, save_every=15,
                                         eval_samples=2, precision="float32")

    train = window.train_page
    window.go_to("train")
    train.start()
    qtbot.waitUntil(lambda: train.loss_plot.total_points() >= 6, timeout=120_000)
    assert train.memory_plot.total_points() >= 3
    qtbot.waitUntil(lambda: not train.controller.running, timeout=300_000)
    assert train.last_status == "completed", train.last_error
    losses = [m.loss for m in train.metrics]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2  # it learnt, for real
    assert train.progress.value() == 30
    assert all(m.memory_bytes > 0 for m in train.metrics)

    export = window.pages["export"]
    window.go_to("export")
    for kind in ("adapter", "merged"):
        export.export(kind, tmp_path / kind)
        assert not export.gguf_button.isEnabled()  # it stayed on while another export ran, doing nothing
        qtbot.waitUntil(lambda: not export.busy, timeout=120_000)
        assert kind in export.exports, export.status.text()
        assert "verified" in export.status.text()
        assert "open the folder" in export.results.toPlainText()  # a link to it, and where to read how to load it
    from adapter_studio.engine import events

    def read_only(path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    real = events.EventLog
    events.EventLog = read_only  # type: ignore[assignment, misc]  # the run folder cannot note the export
    try:
        export.export("adapter", tmp_path / "adapter-again")
        qtbot.waitUntil(lambda: not export.busy, timeout=120_000)
    finally:
        events.EventLog = real  # type: ignore[misc]
    assert "could not note it (Permission denied): the run's history will not list it" in export.results.toPlainText()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        diff = (adapter(ids).logits - merged(ids).logits).abs().max()
    assert diff < 1e-4
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n{oops\n', "line 3"),
    ],
    ids=["missing file", "malformed jsonl line"],
)
def test_bad_data_gives_a_dialog_not_a_crash(window, qtbot, tmp_path, content, expected):  # type: ignore[no-untyped-def]
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content)
    page = window.pages["data"]
    page.path.setText(str(path))
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: bool(error_dialogs()), timeout=10_000)
    texts = " ".join(d.text() for d in error_dialogs())
    assert expected in texts
    assert "Traceback" not in texts
    for d in error_dialogs():
        d.close()


def test_a_missing_column_is_said_beside_the_boxes_that_map_it(window, qtbot, tmp_path):  # type: ignore[no-untyped-def]
    """No dialog: the page keeps the rows on show, with a box per role and the role left to pick said in red
    (tests/test_data_page.py picks it and loads the file)."""
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "a", "reply": "b"}\n')
    page = window.pages["data"]
    page.path.setText(str(path))
    page.format.setCurrentText("alpaca")
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: "Pick the column for" in page.summary.text(), timeout=10_000)
    assert "columns found are question, reply" in page.summary.text() and "<b>output</b>" in page.summary.text()
    assert page.combos["instruction"].currentText() == "question" and page.table.rowCount() == 1
    assert not error_dialogs()


def test_spec_file_with_r_zero_is_refused_with_the_line(window, qtbot, tmp_path, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model:\n  source: {tiny_llama}\ndata:\n  path: {alpaca_jsonl}\nmethod:\n  name: lora\n  r: 0\n")
    from adapter_studio.engine.errors import UserError

    with pytest.raises(UserError, match=r"spec.yaml:7.*method.r"):
        window.apply_spec_file(spec)


def test_method_picker_walks_every_method_and_starts_a_run(window, qtbot, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    from adapter_studio.engine.methods import METHODS

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    page = window.pages["method"]
    window.go_to("method")
    for name, cls in METHODS.items():
        page.select(name)
        assert window.state.method.name == name
        assert page.form is not None and page.form.model_cls is cls
        assert cls.title in page.details.text()
        for field, widget in page.form.widgets.items():
            assert widget.toolTip() == (cls.model_fields[field].description or ""), field
    page.select("ia3")
    window.state.training = TrainingSpec(max_steps=5, batch_size=4, save_every=5, eval_samples=0,
                                         precision="float32")
    window.train_page.start()
    qtbot.waitUntil(lambda: not window.train_page.controller.running, timeout=120_000)
    assert window.train_page.last_status == "completed", window.train_page.last_error
    assert window.train_page.metrics[-1].step == 5


def test_stop_keeps_a_checkpoint_and_resume_goes_on_with_that_run(window, qtbot, tiny_llama, alpaca_jsonl, tmp_path):  # type: ignore[no-untyped-def]
    """Found walking the window: Resume went on with whichever run "Use for Try/Export" had made current (a
    completed one: nothing trained), the smoothed curve began at the previous run's last value, a stopped
    run kept its last ETA and a resumed one showed an ETA from the old session's clock."""
    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    window.state.training = TrainingSpec(max_steps=3000, batch_size=2, save_every=1000, eval_samples=0,
                                         precision="float32")
    train = window.train_page
    menu_action(window, "Stop").trigger()  # with nothing running
    assert "stopping" not in train.state_label.text()
    window.go_to("try")
    menu_action(window, "Start training").trigger()  # it trained unseen behind the page shown
    assert window.stack.currentWidget() is train
    qtbot.waitUntil(lambda: len(train.metrics) >= 5, timeout=60_000)
    train.stop()
    qtbot.waitUntil(lambda: not train.controller.running, timeout=60_000)
    assert train.last_status == "cancelled"
    checkpoints = list((train.run_dir / "checkpoints").glob("step-*"))
    assert checkpoints
    assert train.resume_button.isEnabled() and train.stats["ETA"].text() == "—"
    stopped, trained = train.run_dir, train.metrics[-1].step
    window.state.set_current_run(tmp_path / "another-run")  # "Use for Try/Export" on the Runs page
    train._smoothed = (99.0, 5)  # where the last run's smoothed curve ended
    window.go_to("runs")
    menu_action(window, "Resume").trigger()  # it passed its `checked` (False) as the run folder: a TypeError
    assert window.stack.currentWidget() is train
    _, smoothed = train.loss_plot.series["smoothed"].view()
    assert smoothed[0] == train.metrics[0].loss and train.stats["ETA"].text() == "—"  # the replayed history
    qtbot.waitUntil(lambda: train.metrics[-1].step > trained + 2, timeout=60_000)
    assert train.run_dir == stopped and window.state.current_run == stopped
    assert train.stats["ETA"].text() != "—"  # this session's steps: time left again
    train.stop()
    qtbot.waitUntil(lambda: not train.controller.running, timeout=60_000)
    assert train.last_status == "cancelled"


def test_ctrl_return_in_the_try_pages_message_box_generates_not_trains(window, qtbot, monkeypatch):  # type: ignore[no-untyped-def]
    """Ctrl+Return, a usual "send" key, started a training run unseen from the Try page (the window's Start), and
    Tab typed tabs into the box for ever: Generate could not be reached by keyboard."""
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QKeyEvent
    from PySide6.QtTest import QTest

    page = window.pages["try"]
    generated: list[bool] = []
    monkeypatch.setattr(window.train_page, "start", lambda: pytest.fail("training started"))
    page.prompt.submitted.disconnect()
    page.prompt.submitted.connect(lambda: generated.append(True))
    window.show()
    window.go_to("try")
    page.prompt.setFocus()
    QTest.keyClick(page.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert generated == [True] and page.prompt.toPlainText() == ""  # no new line typed either
    QTest.keyClick(page.prompt, Qt.Key.Key_Tab)
    assert "\t" not in page.prompt.toPlainText()
    shifted = QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return,
                        Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
    assert not page.prompt._is_submit(shifted)  # Ctrl+Shift+Return stays the window's Resume


def test_a_run_deleted_on_disk_is_no_longer_the_pages_run(window, tmp_path):  # type: ignore[no-untyped-def]
    """Try, Evaluate and Export went on showing a run whose folder was deleted, and an export of it said "not a
    run folder … (`adapter-studio runs` lists them)"."""
    import shutil

    from test_run_history import fabricate_history

    run = fabricate_history(tmp_path / "runs")["done"]
    window.state.set_current_run(run)
    window.go_to("export")
    assert run.name in window.pages["export"].run_label.text()
    shutil.rmtree(run)
    window.go_to("evaluate")
    assert window.state.current_run is None
    assert window.statusBar().currentMessage() == f"The run done is no longer there ({run}): pick one on the Runs page"
    assert window.pages["evaluate"].status.text().startswith("No run yet")
    assert window.pages["export"].run_label.text().startswith("No run yet")
    assert window.pages["try"].status.text().startswith("No run yet")
    other = fabricate_history(tmp_path / "more")["stopped"]  # deleted while the Export page shows it
    window.state.set_current_run(other)
    window.go_to("export")
    shutil.rmtree(other)
    window.pages["export"].ask_and_export("adapter")  # it said "not a run folder … (`adapter-studio runs` …)"
    assert window.state.current_run is None
    assert window.pages["export"].status.text() == f"The run stopped is no longer there ({other}): pick one on the " \
                                                   "Runs page"


def test_run_resume_in_the_menu_resumes_the_run_picked_on_the_runs_page(window, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Run › Resume did nothing, silently, for a stopped run picked on the Runs page."""
    from test_run_history import fabricate_history

    runs = fabricate_history(tmp_path / "history")
    window.runs_page.set_runs_dir(str(tmp_path / "history"))
    resumed: list[Path] = []
    monkeypatch.setattr(window, "_resume_run", resumed.append)
    window.runs_page.select_runs(["done"])  # finished: nothing to resume
    menu_action(window, "Resume").trigger()
    assert resumed == [] and window.statusBar().currentMessage().startswith("Nothing to resume: stop a run")
    window.runs_page.select_runs(["stopped"])
    menu_action(window, "Resume").trigger()
    assert [p.resolve() for p in resumed] == [runs["stopped"].resolve()]


def test_the_plots_on_show_follow_a_theme_chosen(window):  # type: ignore[no-untyped-def]
    """Settings › Theme › Dark turned the window dark and left every plot white until the next start."""
    from PySide6.QtCore import QSettings
    from PySide6.QtGui import QColor

    plot = window.train_page.loss_plot
    try:
        for theme, background, text in (("dark", "#1e1f22", "#dfe1e5"), ("light", "#ffffff", "#000000")):
            window.set_theme(theme)
            assert plot.backgroundBrush().color() == QColor(background)
            assert plot.getPlotItem().getAxis("left").textPen().color() == QColor(text)
    finally:
        QSettings().remove("appearance/theme")


@pytest.mark.parametrize(("line", "shown"), [
    ("training.gradient_checkpointing = off: a step fits", "gradient checkpointing = off: a step fits"),
    ("data.eval_split = 0.1003: 598 rows: 60 held out", "Held out = 0.1003: 598 rows: 60 held out"),  # the Data page's
    ("data.max_length = 256: the longest row", "Max length = 256: the longest row"),
    ("step 3 loss 0.6883", "step 3 loss 0.6883"),  # not a default's line
])  # fmt: skip
def test_the_train_log_names_defaults_as_the_boxes_do(line: str, shown: str) -> None:
    """The log said "training.gradient_checkpointing = off"; the window's box is "gradient checkpointing"."""
    from adapter_studio.gui.pages.train_page import in_form_words

    assert in_form_words(line) == shown


def test_start_waits_for_the_method_page_to_read(window, qtbot, tiny_llama, alpaca_jsonl):  # type: ignore[no-untyped-def]
    """IA3 with a feed-forward module not among its targets showed "feedforward_modules: Value error, …" (under
    Advanced, folded) and Start trained with the settings before; BitFit on Llama, "Cannot train" on the page,
    started and left a failed run folder."""
    from adapter_studio.engine.errors import UserError

    choose(window, qtbot, tiny_llama, alpaca_jsonl)
    page = window.pages["method"]
    page.select("ia3")
    page._method_edited({"target_modules": ["q_proj"], "feedforward_modules": ["down_proj"]})
    assert page.validation.text() == "feedforward modules: down_proj is not among the target modules (q_proj)"
    with pytest.raises(UserError, match="Method page: feedforward modules: down_proj is not among"):
        window.state.build_spec()
    page._method_edited({"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]})
    assert page.validation.text() == "" and window.state.build_spec().method.feedforward_modules == ["down_proj"]
    page.select("bitfit")  # this Llama has no biases
    assert "Cannot train" in page.details.text()
    refused: list[BaseException] = []
    window.train_page.error = refused.append  # type: ignore[method-assign]
    window.train_page.start()
    assert "BitFit" in str(refused[0]) and not window.train_page.controller.running  # no run, no run folder
    assert not list(Path(window.state.runs_dir).glob("bitfit-*"))


def test_model_loading_settings_reach_the_spec_and_quantization_is_explained(window, qtbot, tiny_llama):  # type: ignore[no-untyped-def]
    page = window.pages["model"]
    page.choose(str(tiny_llama))
    qtbot.waitUntil(lambda: page.quantization_problems is not None, timeout=60_000)
    note, quantization = page.quantization_note, page.loading_form.widgets["quantization"]
    # With "none" chosen the page says nothing about quantised bases (issue 26: "Not on this machine: 4bit…"
    # under a field reading "none").
    assert quantization.currentText() == "none" and not note.isVisibleTo(page) and note.text() == ""
    quantization.setCurrentText("4bit")
    assert window.state.model.quantization == "4bit" and note.isVisibleTo(page)
    if page.quantization_problems["4bit"] is not None:  # no CUDA GPU or no bitsandbytes here
        assert "Not on this machine" in note.text() and "choose none" in note.text()
        assert ("CUDA GPU" in note.text()) == (not torch.cuda.is_available())
        assert "Not on this machine" in quantization.toolTip()  # the reason before choosing, too
    else:
        assert "less memory" in note.text()
    quantization.setCurrentText("none")  # still open: a spec's 4bit can be set back here
    assert window.state.model.quantization == "none" and not note.isVisibleTo(page)
    page.loading_form.widgets["dtype"].setCurrentText("bfloat16")
    assert window.state.model.dtype == "bfloat16" and window.state.model.source == str(tiny_llama)
    page.choose(str(tiny_llama) + "/")  # another model keeps the loading choices
    assert window.state.model.dtype == "bfloat16"
    assert page.loading_form.widgets["dtype"].currentText() == "bfloat16"


def plotted_ticks(plot) -> list[str]:  # type: ignore[no-untyped-def]
    """The tick labels of a plot's y axis as pyqtgraph draws them."""
    axis = plot.getAxis("left")
    low, high = axis.range
    ticks = axis.tickValues(low, high, axis.height())
    return [text for spacing, values in ticks for text in axis.tickStrings(values, axis.autoSIPrefixScale, spacing)]


def test_a_flat_memory_use_is_drawn_flat(window, qtbot):  # type: ignore[no-untyped-def]
    """Walking the window: 710.262–710.273 MiB filled the Memory plot's height, its noise drawn as a cliff."""
    from adapter_studio.engine.events import Metrics

    train = window.train_page
    window.go_to("train")
    train.on_events([Metrics(step=i + 1, epoch=0.0, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=400.0,
                             tokens_seen=i, memory_bytes=int((710.262 + 0.011 * (i % 2)) * 2**20))
                     for i in range(10)])  # fmt: skip
    low, high = train.memory_plot.getViewBox().viewRange()[1]
    assert high - low >= 0.1 * 710 and low < 710.262 and high > 710.273
    train.on_events([Metrics(step=11, epoch=0.0, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=400.0,
                             tokens_seen=11, memory_bytes=2000 * 2**20)])  # it grows: the axis follows it
    qtbot.waitUntil(lambda: train.memory_plot.getViewBox().viewRange()[1][1] >= 2000, timeout=10_000)
    train.memory_plot.setYRange(0, 5000, padding=0)  # the person zooms: the plot keeps their range
    train.on_events([Metrics(step=12, epoch=0.0, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=400.0,
                             tokens_seen=12, memory_bytes=2000 * 2**20)])  # fmt: skip
    assert train.memory_plot.getViewBox().viewRange()[1] == [0, 5000]


def test_closing_during_an_export_asks_and_waits_for_it(window, qtbot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The window closed at once while an export was written, which the app's exit then cut short unsaid."""
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QCloseEvent

    export = window.pages["export"]
    export._worker = object()  # an export under way
    asked: list[str] = []
    answers = iter([QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes])
    monkeypatch.setattr(QMessageBox, "question", lambda _w, title, *a: asked.append(title) or next(answers))
    event = QCloseEvent()
    window.closeEvent(event)
    assert asked == ["An export is being written"] and not event.isAccepted() and export.busy
    QTimer.singleShot(50, lambda: asked.append(window.statusBar().currentMessage()))  # said while it waits
    QTimer.singleShot(200, lambda: setattr(export, "_worker", None))  # it finishes
    event = QCloseEvent()
    window.closeEvent(event)
    assert asked[1:] == ["An export is being written", "Quitting when the export has been written…"]
    assert event.isAccepted() and not export.busy


@pytest.mark.parametrize("kind", ["adapter", "merged", "gguf"])
def test_a_second_export_of_a_run_goes_to_a_new_folder(window, tmp_path: Path, monkeypatch, kind: str) -> None:  # type: ignore[no-untyped-def]
    """The window names the export's folder itself (<run>-adapter in the folder picked), and a second export was
    refused with the command line's "--out: … already exists — pick a new folder name"."""
    from adapter_studio.gui.pages import export_page

    page = window.pages["export"]
    window.state.current_run = tmp_path / "runs" / "lora-1"
    window.state.current_run.mkdir(parents=True)
    (window.state.current_run / "spec.yaml").write_text("")  # a run folder (a gone one is said, not exported)
    name = "lora-1-gguf-q8_0" if kind == "gguf" else f"lora-1-{kind}"
    for taken in (name, f"{name}-2"):
        (tmp_path / "out" / taken).mkdir(parents=True)
    monkeypatch.setattr(export_page.QFileDialog, "getExistingDirectory", lambda *a: str(tmp_path / "out"))
    targets: list[Path] = []
    monkeypatch.setattr(page, "export", lambda k, target: targets.append(target))
    monkeypatch.setattr(page, "export_gguf", lambda q, target: targets.append(target))
    page.gguf_type.setCurrentIndex(page.gguf_type.findData("q8_0"))
    page.ask_and_export_gguf() if kind == "gguf" else page.ask_and_export(kind)
    assert targets == [tmp_path / "out" / f"{name}-3"]


def test_the_export_page_lists_a_runs_earlier_exports_and_only_that_runs(window, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Exports made in an earlier session (or by the command line) were not listed, and a run's exports stayed
    listed under the next run chosen."""
    from adapter_studio.engine.events import Export, log_export
    from test_run_history import fabricate_history

    runs = fabricate_history(tmp_path / "runs")  # "done" has an adapter export, to /exports/a (not there)
    kept = tmp_path / "out" / "done-merged"
    kept.mkdir(parents=True)
    log_export(runs["done"], Export(kind="merged", path=str(kept), bytes=3 * 2**20, verified_max_diff=2e-5), None)
    page = window.pages["export"]
    window.state.set_current_run(runs["done"])
    text = page.results.toPlainText()
    assert text.startswith("Exported before:")
    assert re.search(r"^adapter \(\d\d \w{3} \d{4} \d\d:\d\d\): ", text, re.MULTILINE)  # when it was made
    assert "/exports/a — 1 B, verified (max logit difference 0.00e+00) · no longer there" in text
    assert f"{kept} — 3.0 MiB, verified (max logit difference 2.00e-05) · open the folder" in text
    window.state.set_current_run(runs["stopped"])  # none exported
    assert page.results.toPlainText() == ""


@pytest.mark.parametrize(
    ("losses", "weight", "last"),
    [
        ([3.0, 2.0], 0.0, 2.0),  # weight 0: the raw loss
        ([2.0] * 5, 0.9, 2.0),  # a flat loss is its own average from the first step
        ([3.0] + [1.4] * 19, 0.9, 1.4 + 1.6 * 0.1 * 0.9**19 / (1 - 0.9**20)),  # the first loss nearly forgotten
    ],
    ids=["raw", "flat", "a first high loss"],
)
def test_the_smoothed_loss_is_corrected_for_its_start(losses: list[float], weight: float, last: float) -> None:
    """Started at the first loss, after 20 steps at 0.9 the smoothed curve read 2.1 over losses of 1.4."""
    from adapter_studio.gui.plots import ema

    state = None
    for loss in losses:
        smoothed, *rest = ema(state, loss, weight)
        state = (rest[0], rest[1])
    assert smoothed == pytest.approx(last)  # 1.425 after the high first loss, not 2.1


def test_the_quality_plot_is_drawn_on_the_training_steps(window, qtbot):  # type: ignore[no-untyped-def]
    """The first evaluation alone was drawn at the middle of an axis of its own (19.5–20.5): the Quality
    plot spans the loss curve's steps and its own (a step-0 evaluation of the base), until the person zooms."""
    from adapter_studio.engine.events import Eval, Metrics

    train = window.train_page
    window.go_to("train")

    def steps(first: int, last: int) -> list[Metrics]:
        return [Metrics(step=i, epoch=0.0, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=400.0, tokens_seen=i,
                        memory_bytes=2**20) for i in range(first, last + 1)]  # fmt: skip

    train.on_events([Eval(step=0, eval_loss=2.0, exact_match=0.1), *steps(1, 20),
                     Eval(step=20, eval_loss=1.5, exact_match=0.4), *steps(21, 40)])  # fmt: skip
    train.replot_incremental()
    low, high = train.quality_plot.getViewBox().viewRange()[0]
    assert low < 0 and high > 40 and high - low < 50, (low, high)  # both ends, and a little room
    train.on_events(steps(41, 80))  # the loss goes on: the quality plot's steps follow it
    train.replot_incremental()
    assert 80 < train.quality_plot.getViewBox().viewRange()[0][1] < 90
    train.quality_plot.setXRange(10, 30, padding=0)  # the person zooms: kept
    train.on_events(steps(81, 90))
    train.replot_incremental()
    assert train.quality_plot.getViewBox().viewRange()[0] == [10, 30]
    # and the loss plot still follows its data (auto range is applied when it is drawn)
    qtbot.waitUntil(lambda: 90 <= train.loss_plot.getViewBox().viewRange()[0][1] < 100, timeout=10_000)


def test_plots_read_as_plain_numbers_with_the_legend_off_the_curves(window, qtbot):  # type: ignore[no-untyped-def]
    """Issue 26: a loss from 0.6 to 0.01 read "600" under "loss (x0.001)", a learning rate of 0.001 read "1.0"
    under "lr (x0.001)", and the Memory plot's legend sat on its curve."""
    from adapter_studio.engine.events import Metrics

    train = window.train_page
    window.go_to("train")
    losses = [0.6 * (0.01 / 0.6) ** (i / 39) for i in range(40)]  # falls 60× over 40 steps
    train.on_events([Metrics(step=i + 1, epoch=i / 40, loss=loss, lr=1e-3 * (1 - i / 40), grad_norm=1.0,
                             tokens_per_s=400.0, tokens_seen=500 * i, memory_bytes=(1600 + 10 * i) * 2**20)
                     for i, loss in enumerate(losses)])  # fmt: skip
    qtbot.waitUntil(lambda: train.loss_plot.getAxis("left").range[1] > 0.5, timeout=10_000)
    window.train_page.more.setCurrentWidget(train.lr_plot)
    qtbot.waitUntil(lambda: 0 < train.lr_plot.getAxis("left").range[1] < 0.01, timeout=10_000)

    for plot, label, top in ((train.loss_plot, "loss", 0.6), (train.lr_plot, "lr", 1e-3)):
        axis = plot.getAxis("left")
        assert "x0.001" not in axis.labelString() and label in axis.labelString()
        values = [float(t) for t in plotted_ticks(plot)]
        assert values and max(values) <= top * 1.2 and max(values) >= top * 0.5, (label, values)

    # The log-scale option: the loss's ticks then run over decades, 0.01 … 0.1 … (not 10^-2 or 600).
    train.log_loss.setChecked(True)
    assert train.loss_plot.getAxis("left").logMode
    qtbot.waitUntil(lambda: train.loss_plot.getAxis("left").range[0] < -1.5, timeout=10_000)
    decades = [float(t) for t in plotted_ticks(train.loss_plot)]
    assert 0.01 in decades and 0.1 in decades, decades
    train.log_loss.setChecked(False)
    assert not train.loss_plot.getAxis("left").logMode

    # Every legend sits outside the area where the curves are drawn.
    for plot in (train.loss_plot, train.memory_plot):
        legend, view = plot.legend, plot.getViewBox()
        assert legend.items and legend.isVisible()
        assert not legend.sceneBoundingRect().intersects(view.sceneBoundingRect()), plot.objectName()


def test_a_plot_filled_in_a_hidden_tab_fits_its_tab_when_shown(window, qtbot):  # type: ignore[no-untyped-def]
    """The Rewards plot's four legend entries were laid out in one row while its tab was hidden; shown in the
    narrower tab, the plot stayed as wide as that row, and its right edge (the last steps) was cut off."""
    from adapter_studio.engine.events import Eval, Metrics

    train = window.train_page
    window.go_to("train")
    window.resize(1100, 700)
    train.on_events([
        *[Metrics(step=i, epoch=i / 30, loss=0.69, lr=5e-4, grad_norm=1.0, tokens_per_s=300.0, tokens_seen=100 * i,
                  memory_bytes=2**31, rewards_chosen=0.01 * i, rewards_rejected=-0.01 * i, reward_margin=0.02 * i,
                  preference_accuracy=0.6) for i in range(1, 31)],
        Eval(step=30, eval_loss=0.6, reward_margin=0.5, preference_accuracy=0.62),
    ])  # fmt: skip
    plot = train.rewards_plot
    train.more.setCurrentWidget(plot)
    qtbot.waitUntil(lambda: plot.isVisible() and plot.width() > 100, timeout=10_000)
    qtbot.wait(50)
    assert len(plot.legend.items) == 4
    assert plot.plotItem.geometry().width() <= plot.width() + 1, (plot.plotItem.geometry().width(), plot.width())
    assert plot.legend.sceneBoundingRect().right() <= plot.width() + 1


def test_walkthrough_pictures_try_after_the_run_with_answers(  # type: ignore[no-untyped-def]
    qtbot, tmp_path, tiny_llama, monkeypatch, thread_pool_kept
):
    """Issue 26: the walk-through took the Try picture before any run existed (an empty page in the README).
    Now Runs and Try come after training: the run selected, a held-out example answered by both models."""
    import pyqtgraph as pg
    import yaml
    from adapter_studio.engine.imports import OPENMP_WAITING
    from adapter_studio.gui.main_window import MainWindow
    from adapter_studio.gui.walkthrough import walkthrough
    from conftest import reversal_pairs, wind_down, write_jsonl

    for name, value in OPENMP_WAITING.items():  # what create_app sets for a real start
        monkeypatch.setenv(name, value)
    rows = [{"instruction": "Write the word below backwards.", "input": q.removeprefix("reverse "), "output": a}
            for q, a in reversal_pairs(60, seed=4)]  # fmt: skip
    spec = {
        "model": {"source": str(tiny_llama)},
        "data": {"path": str(write_jsonl(tmp_path / "words.jsonl", rows)), "eval_split": 0.2, "max_length": 96},
        "method": {"name": "lora"},
        "training": {"max_steps": 4, "batch_size": 4, "learning_rate": 0.01, "save_every": 4, "eval_samples": 0,
                     "precision": "float32"},
        "output_dir": str(tmp_path / "runs"),
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    app = QApplication.instance()
    # The walk-through themes the application (create_app); later tests get it back as it was.
    theme = (app.style().name(), app.palette(), {k: pg.getConfigOption(k) for k in ("background", "foreground")})
    try:
        code = walkthrough(str(tmp_path / "spec.yaml"), tmp_path / "shots", ["name=words-walk"])
    finally:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, MainWindow):
                wind_down(widget, qtbot)
                widget.deleteLater()
        app.setStyle(theme[0])
        app.setPalette(theme[1])
        pg.setConfigOptions(**theme[2])  # the thread pool: thread_pool_kept

    report = json.loads((tmp_path / "shots" / "report.json").read_text())
    assert code == 0 and report["status"] == "completed"
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["words-walk"]  # --set name=… was dropped
    shots = [Path(path).name for path in report["screenshots"]]
    assert shots.index("train_finished.png") < shots.index("runs.png") < shots.index("try.png")
    answers = report["try"]
    assert answers["prompt"].endswith(answers["expected"][::-1])  # a held-out row: "…\n\nabc", expected "cba"
    # Both answers finished before the picture. The base model's is text; the tuned one's may be empty (a
    # tiny model trained 4 steps can stop at once): what it says is the Try page tests' business.
    assert answers["status"].startswith("Done — run <b>") and answers["base"] and "tuned" in answers
    assert (tmp_path / "shots" / "try.png").stat().st_size > 10_000


def test_the_window_fits_a_1024_by_700_screen(window, qtbot, tiny_llama, tmp_path):  # type: ignore[no-untyped-def]
    """Every page's least size, the Compare chart's rows (one per method), the sweep panel's controls and a
    preference file's seven column boxes included: the window was once 1,378 px wide (the sweep's controls on
    one row) and 1,089 px high (the chart's rows), then 1,240 × 718 (the column boxes on one row; the sweep's
    controls unscrolled), more than a 1,366 × 768 laptop shows under a title bar and a taskbar."""
    window.pages["model"].choose(str(tiny_llama))
    window.go_to("compare")
    qtbot.waitUntil(window.pages["compare"].complete, timeout=120_000)
    least = window.minimumSizeHint()
    assert least.width() <= 1024 and least.height() <= 700, least
    pairs = tmp_path / "votes.jsonl"  # the shape with the most roles, none of them placed
    pairs.write_text('{"question": "hi", "response_a": "hello", "response_b": "go", "vote": "A"}\n')
    page = window.pages["data"]
    window.go_to("data")
    page.path.setText(str(pairs))
    page.reload(keep_mapping=False)
    qtbot.waitUntil(lambda: len(page.combos) == 7, timeout=30_000)
    least = window.minimumSizeHint()
    assert least.width() <= 1024 and least.height() <= 700, least


def test_long_statuses_wrap_instead_of_widening_the_window(window) -> None:  # type: ignore[no-untyped-def]
    """A stage's detail (a model path) or a model's note on one unwrapped line pushed the window wider than the
    screen; these labels wrap."""
    long = "loading model: " + "/home/someone/models/a-long-folder-name" * 4 + "/model-Q4_K_M.gguf"
    window.train_page.set_state(long)
    window.pages["model"].status.setText(long)
    window.pages["method"].validation.setText(long)
    for label in (window.train_page.state_label, window.pages["model"].status, window.pages["method"].validation):
        assert label.wordWrap() and label.minimumSizeHint().width() < 600, label.objectName()


def test_the_train_page_shows_only_the_plot_tabs_that_apply(window) -> None:  # type: ignore[no-untyped-def]
    """At 1,280 px six tabs scrolled the quality curve out of sight behind a Rewards tab no supervised run fills."""
    from adapter_studio.engine.objectives import OBJECTIVES

    train, state = window.train_page, window.state
    shown = lambda: [train.more.tabText(i) for i in range(train.more.count()) if train.more.isTabVisible(i)]  # noqa: E731
    assert shown() == ["Quality", "Learning rate", "Grad norm", "Tokens/s"]
    state.set_objective(OBJECTIVES["dpo"]())
    assert "Rewards" in shown()
    state.set_objective(OBJECTIVES["sft"]())
    state.set_training(state.training.model_copy(update={"learning_rate": "auto"}))
    assert shown() == ["Quality", "Learning rate", "Grad norm", "Tokens/s", "LR finder"]


def test_step_axes_tick_whole_steps_and_name_the_seconds(window) -> None:  # type: ignore[no-untyped-def]
    train = window.train_page
    train.quality_plot.add("exact match", 1, 0.0)  # a flat 0 was drawn on a -0.4 to 0.4 axis
    train.quality_plot.refresh()
    low, high = train.quality_plot.getViewBox().viewRange()[1]
    assert low == pytest.approx(0) and high == pytest.approx(1.02)
    axis = train.loss_plot.getAxis("bottom")
    ticks = [v for _, values in axis.tickValues(3.0, 5.0, 400) for v in values]  # a few steps: pyqtgraph ticked 3.5
    assert ticks and all(float(v).is_integer() for v in ticks)
    train.x_axis.setCurrentText("elapsed seconds")
    assert axis.labelText == "elapsed seconds" and not axis.whole_numbers
    train.x_axis.setCurrentText("step")
    assert axis.labelText == "step" and axis.whole_numbers


def test_the_progress_bar_counts_steps_and_is_busy_between_them(window) -> None:  # type: ignore[no-untyped-def]
    """It read '0 / 100 steps' (Qt's default) while a 150-step run loaded, and sat full at ETA 0:00 for a 47-s
    evaluation after the last step."""
    from adapter_studio.engine.events import Finished, Metrics, Stage, Started

    train = window.train_page
    assert train.progress.text() == ""  # no run yet
    train._reset()  # as Start does
    assert train.progress.maximum() == 0  # busy: loading
    train.on_events([Started(run_dir="r", model="m", method="lora", trainable_params=1, total_params=2, total_steps=20,
                             device="cpu", precision="float32"), Stage(stage="training")])  # fmt: skip
    assert (train.progress.maximum(), train.progress.text()) == (20, "0 / 20 steps")
    train.on_events([Metrics(step=20, epoch=1.0, loss=0.5, lr=1e-3, grad_norm=1.0, tokens_per_s=10.0, tokens_seen=100,
                             memory_bytes=2**20), Stage(stage="evaluating")])  # fmt: skip
    assert train.progress.maximum() == 0 and "evaluating at step 20 of 20" in train.state_label.text()  # the count
    train.on_events([Finished(status="completed", step=20, error=None, train_seconds=1.0, tokens_trained=100)])
    assert train.progress.text() == "20 / 20 steps"


def test_the_runs_folder_chosen_is_kept_across_starts_and_the_demo(window, qtbot, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Loading the demo (as every start does) set the runs folder to its `runs`: the folder chosen in Settings
    or on the Runs page was forgotten at each start, and new runs went to `runs` in the start folder."""
    from adapter_studio.gui.dialogs import RUNS_DIR_KEY, remembered_runs_dir
    from adapter_studio.gui.main_window import DEMO_SPEC
    from PySide6.QtCore import QSettings

    chosen = str(window.state.runs_dir)
    window.apply_spec_file(DEMO_SPEC, demo=True)  # the demo's spec, without loading its model
    assert window.state.runs_dir == chosen
    other = str(tmp_path / "my runs")
    window.pages["runs"].set_runs_dir(other)
    assert QSettings().value(RUNS_DIR_KEY) == other and remembered_runs_dir() == other  # the next start's
    QSettings().remove(RUNS_DIR_KEY)
    monkeypatch.chdir(tmp_path)
    assert remembered_runs_dir() == str(tmp_path / "runs")  # absolute: a later change of folder moves nothing
    monkeypatch.setattr("os.access", lambda *_a, **_k: False)  # started from a folder it cannot write (/)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert remembered_runs_dir() == str(tmp_path / "home" / "AdapterStudio" / "runs")


def test_settings_runs_folder_says_when_new_runs_cannot_be_written_there(window, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Settings › Runs folder… took a read-only folder unsaid (the Runs page, not open, said it) until Start failed."""
    import os

    from adapter_studio.gui import dialogs, main_window

    shared, mine = tmp_path / "shared", tmp_path / "mine"
    shared.mkdir()
    mine.mkdir()
    real = os.access
    monkeypatch.setattr(dialogs.os, "access", lambda path, mode: Path(path) != shared and real(path, mode))
    for folder, said in [(shared, f" — new runs cannot be written here ({shared} is read-only): pick another "
                                  "folder to train"), (mine, "")]:  # fmt: skip
        monkeypatch.setattr(main_window.QFileDialog, "getExistingDirectory", lambda *a, f=folder: str(f))
        window.choose_runs_dir()
        assert window.state.runs_dir == str(folder)  # kept: its runs can still be read
        assert window.statusBar().currentMessage() == f"Runs folder: {folder}{said}"


@pytest.mark.parametrize("value", ["hello", "3"])
def test_a_settings_file_edited_by_hand_still_opens_the_window(value, qtbot, tmp_path):  # type: ignore[no-untyped-def]
    """`geometry=hello` stopped the window opening with a TypeError; a runs folder that is a file is said
    on the Runs page in the window's words."""
    from adapter_studio.gui.main_window import MainWindow
    from adapter_studio.gui.state import StudioState
    from conftest import wind_down
    from PySide6.QtCore import QSettings

    QSettings().setValue("window/geometry", value)
    a_file = tmp_path / "runs.txt"
    a_file.write_text("")
    try:
        shown = MainWindow(StudioState(runs_dir=str(a_file)))
        qtbot.addWidget(shown, before_close_func=lambda w: wind_down(w, qtbot))
    finally:
        QSettings().remove("window/geometry")
    assert (shown.width(), shown.height()) == (1280, 820)
    status = shown.pages["runs"].status.text()
    assert status == f"Cannot read the runs: {a_file} is a file, not a folder of runs — pick a folder with Choose… " \
                     "or type one above"


def test_the_window_opens_again_as_it_was_left(window, qtbot, tiny_llama, alpaca_jsonl, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Quitting forgot the model, the data and the method's settings: the next plain start opened the demo."""
    import shutil

    from adapter_studio.gui import last_session
    from adapter_studio.gui.main_window import MainWindow
    from adapter_studio.gui.state import StudioState
    from conftest import wind_down
    from test_run_history import fabricate_history

    monkeypatch.setattr(last_session, "session_file", lambda: tmp_path / "config" / "last-session.yaml")
    data = tmp_path / "mine.jsonl"
    shutil.copy(alpaca_jsonl, data)
    choose(window, qtbot, tiny_llama, data)
    window.state.training = window.state.training.model_copy(update={"max_steps": 7})
    run = fabricate_history(tmp_path / "history")["stopped"]
    window.state.set_current_run(run)
    window.go_to("runs")
    window.close()  # kept as it closes, with the page and the run it showed
    again = MainWindow(StudioState(runs_dir=str(tmp_path / "runs")))
    qtbot.addWidget(again, before_close_func=lambda w: wind_down(w, qtbot))
    assert again.restore_session()
    state = again.state
    assert (state.model.source, state.data.path, state.training.max_steps) == (str(tiny_llama), str(data), 7)
    assert (again.stack.currentWidget(), state.current_run) == (again.pages["runs"], run.resolve())
    assert "Opened as you left it" in again.statusBar().currentMessage()
    qtbot.waitUntil(lambda: again.pages["data"].preview is not None, timeout=30_000)
    assert not again.pages["data"].format_chosen  # detected, it reopened as "chosen"

    shutil.rmtree(run)  # a run deleted since: the set-up opens without it
    state.set_current_run(None)
    assert again.restore_session() and state.current_run is None

    moved = data.rename(tmp_path / "elsewhere.jsonl")  # gone since: the demo opens, and the status bar says why
    assert not again.restore_session()
    assert f"data file not found: {data}" in again.statusBar().currentMessage()
    again.load_demo()  # quit on the demo, untouched: the set-up kept before stays for when its data is back
    last_session.save_session(again.state)
    moved.rename(data)
    assert again.restore_session() and again.state.training.max_steps == 7
