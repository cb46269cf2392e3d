"""Step 8: evaluate the trained run — base, tuned and a no-training baseline scored on the same rows,
forgetting on general instructions, the rows that changed, and the report kept in the run folder."""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from adapter_studio.engine.runs import trains_a_classifier
from adapter_studio.engine.training.checkpoints import checkpoint_label
from adapter_studio.gui.pages.base import Page, number_cell, wrapped_label
from adapter_studio.gui.pages.train_page import format_seconds
from adapter_studio.gui.pages.try_page import example_labels
from adapter_studio.gui.plots import legend_below
from adapter_studio.gui.spin_boxes import SpinBox
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QFontMetrics
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("base", "in_context", "features", "tuned")
SHOTS = "Training rows shown to the base model as worked examples (0: no in-context baseline)."
CLASSIFIER_SHOTS = ("A classifier's encoder takes no examples: its baseline is a logistic regression on the base "
                    "model's frozen features (the Features column)")  # fmt: skip
CLASSIFIER_FORGETTING = "a classifier answers with its labels, not general text to forget"
EMPTY = "∅"  # an empty answer, as engine.evaluation.report writes it
COLUMN_TITLES = {"base": "Base", "in_context": "In-context", "features": "Features", "tuned": "Tuned"}
COLOURS = {"base": "#9e9e9e", "in_context": "#fb8c00", "features": "#43a047", "tuned": "#1e88e5"}
# A preference run's pair scores as rows of the scores table (engine.evaluation.pairs.PAIR_METRICS).
PAIR_ROWS = {"prefers_chosen": "pairs ranked right", "prefers_chosen_per_token": "… per token",
             "reward_accuracy": "reward accuracy"}  # fmt: skip
# Under the chart's bars, on two lines where a preference run's three more groups leave each little room.
TICKS = {"pairs ranked right": "ranked\nright", "… per token": "per\ntoken"}
EXAMPLE_HEADERS = ("Row", "Input", "Expected")
CLASS_HEADERS = ("Rows", "Precision", "Recall", "F1")


class _Progress(QObject):
    """Carries the engine's progress calls from the worker thread to the page (a queued signal)."""

    changed = Signal(str, int, int)


class EvaluatePage(Page):
    title = "Evaluate"
    hint = (
        "Is the tuned model better at your task than the base model, and than a baseline without tuning (the "
        "base model shown a few training rows as examples; for a classifier, a simple model on its frozen "
        "features)? What did tuning cost on general instructions (for a model that writes text)? Each "
        "evaluation is saved as a report in the run folder."
    )

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        self.result: Any = None  # the last EvaluationResult
        self.worker: Any = None
        self._stop = threading.Event()
        self._clock: tuple[float, int] | None = None  # (time, rows done) when the first answers came
        self._progress = _Progress(self)
        self._progress.changed.connect(self._show_progress)

        self.status = wrapped_label("evaluateStatus",
                                    "No run yet: train one on the Train page, or pick one on the Runs page.")
        self.layout_.addWidget(self.status)
        self.layout_.addLayout(self._settings())
        buttons = QHBoxLayout()
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setObjectName("evaluateButton")
        self.evaluate_button.clicked.connect(self.evaluate)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopEvaluationButton")
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setObjectName("evaluationProgress")
        self.progress.setFormat("%p%")
        self.open_report = QPushButton("Open report")
        self.open_report.setObjectName("openReportButton")
        self.open_report.clicked.connect(self._open_report)
        for widget in (self.evaluate_button, self.stop_button):
            buttons.addWidget(widget)
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.open_report)
        self.layout_.addLayout(buttons)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self._scores_panel())
        split.addWidget(self._classes_panel())
        split.addWidget(self._examples_panel())
        # The scores first: at 1,280 × 800 the table showed 2 of its 5–8 rows above a half-empty row list.
        split.setStretchFactor(0, 3)
        split.setStretchFactor(2, 2)
        split.setSizes([330, 160, 220])
        self.layout_.addWidget(split, 1)
        state.run_changed.connect(self._run_changed)
        self._run_changed()

    # --- building ---------------------------------------------------------------------------------

    def _settings(self) -> QFormLayout:
        form = QFormLayout()
        data = QHBoxLayout()
        self.data_path = QLineEdit()
        self.data_path.setObjectName("evaluationData")
        self.data_path.setPlaceholderText("the run's held-out rows")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._choose_data)
        data.addWidget(self.data_path, 1)
        data.addWidget(browse)
        form.addRow("Data", data)
        self.checkpoint = QComboBox()
        self.checkpoint.setObjectName("evaluationCheckpoint")
        self.checkpoint.setToolTip("best: the checkpoint with the lowest eval loss (the last when the run kept none).")
        form.addRow("Checkpoint", self.checkpoint)
        self.shots = SpinBox()
        self.shots.setObjectName("inContextExamples")
        self.shots.setRange(0, 32)
        self.shots.setValue(4)
        self.shots.setToolTip(SHOTS)
        form.addRow("In-context examples", self.shots)
        self.extract = QLineEdit()
        self.extract.setObjectName("answerExtraction")
        self.extract.setPlaceholderText(r"optional, e.g. ####\s*(-?[\d.,]+) — the first group is the answer")
        self.extract.setToolTip("A regular expression whose first group is the answer, applied to every answer and "
                                "expected answer. Left empty, answers that end in '#### <number>' (GSM8K's form) "
                                "are compared by that number, and answers that are a number alone (SVAMP's) by "
                                "each answer's last number; a note says so.")  # fmt: skip
        form.addRow("Answer extraction", self.extract)
        self.limit = SpinBox()
        self.limit.setObjectName("evaluationLimit")
        self.limit.setRange(1, 100_000)
        self.limit.setValue(500)
        form.addRow("At most rows", self.limit)
        self.forgetting_box = QCheckBox("Check forgetting on general instructions")
        self.forgetting_box.setObjectName("checkForgetting")
        self.forgetting_box.setChecked(True)
        form.addRow("", self.forgetting_box)
        return form

    def _scores_panel(self) -> QWidget:
        panel = QWidget()
        layout = QHBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        left = QVBoxLayout()
        # Before the first evaluation: what will be here, not bare 0-1 axes and an empty table.
        self.empty_note = wrapped_label("scoresEmpty", "<i>No evaluation of this run yet. Evaluate scores the base "
                                        "model, the tuned model and the in-context baseline on the same rows, side "
                                        "by side as a table and a chart.</i>")  # fmt: skip
        left.addWidget(self.empty_note)
        self.scores = QTableWidget(0, 0)
        self.scores.setObjectName("scoreTable")
        self.scores.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.scores.setMinimumHeight(150)  # the header and four scores
        left.addWidget(self.scores, 1)
        self.forgetting = wrapped_label("forgettingLabel")
        left.addWidget(self.forgetting)
        self.pairs = wrapped_label("pairsLabel")  # a preference run's held-out pairs, ranked by base and tuned
        left.addWidget(self.pairs)
        layout.addLayout(left, 1)
        self.chart = pg.PlotWidget()
        self.chart.setObjectName("scoreChart")  # the theme's background: a white one left its light text unread
        self.chart.setYRange(0, 1)
        self.chart.setMouseEnabled(False, False)
        self.legend = legend_below(self.chart.plotItem)  # inside the plot it covered the tallest bars
        layout.addWidget(self.chart, 1)
        self._show_scores(False)
        return panel

    def _classes_panel(self) -> QWidget:
        """A classifier's scores per class and its confusion matrix (hidden for other runs)."""
        self.classes_panel = QWidget()
        layout = QVBoxLayout(self.classes_panel)
        layout.setContentsMargins(0, 0, 0, 0)
        self.classes_label = wrapped_label("classesLabel")
        layout.addWidget(self.classes_label)
        tabs = QTabWidget()
        self.class_table = QTableWidget(0, 0)
        self.class_table.setObjectName("classTable")
        self.confusion = QTableWidget(0, 0)
        self.confusion.setObjectName("confusionTable")
        self.confusion.setToolTip("Rows: the expected class. Columns: the class the tuned model chose.")
        for table, name in ((self.class_table, "Per class"), (self.confusion, "Confusion matrix")):
            table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
            tabs.addTab(table, name)
        layout.addWidget(tabs, 1)
        self.classes_panel.setVisible(False)
        return self.classes_panel

    def _examples_panel(self) -> QWidget:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.examples_title = QLabel("<b>Rows whose score changed</b>")
        top.addWidget(self.examples_title, 1)
        self.regressions_only = QCheckBox("Regressions only (base right, tuned wrong)")
        self.regressions_only.setObjectName("regressionsOnly")
        self.regressions_only.toggled.connect(self._fill_examples)
        top.addWidget(self.regressions_only)
        layout.addLayout(top)
        self.examples = QTableWidget(0, len(EXAMPLE_HEADERS))
        self.examples.setObjectName("exampleTable")
        self.examples.setHorizontalHeaderLabels(list(EXAMPLE_HEADERS))
        self.examples.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.examples.setWordWrap(False)
        layout.addWidget(self.examples, 1)
        return panel

    # --- the run ----------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _run_changed(self) -> None:
        run = self.state.current_run
        chosen = self.checkpoint.currentText()  # kept when the run's list still has it
        self.checkpoint.clear()
        if run is None:
            self.status.setText("No run yet: train one on the Train page, or pick one on the Runs page.")
        else:
            folder = Path(run) / "checkpoints"
            steps = sorted(p.name for p in folder.glob("step-*")) if folder.exists() else []
            self.checkpoint.addItems(["best", "last", *reversed(steps)])
            self.checkpoint.setCurrentText(chosen)
            self.status.setText(f"Run <b>{Path(run).name}</b>: press Evaluate to score it.")
        # A classifier's encoder takes no examples: its baseline is a logistic regression on frozen features.
        classifier = run is not None and trains_a_classifier(run)
        self.shots.setEnabled(not classifier)
        self.shots.setToolTip(CLASSIFIER_SHOTS if classifier else SHOTS)
        # Ticked and enabled for a classifier, the box then read "not measured" beside the results.
        self.forgetting_box.setEnabled(not classifier)
        self.forgetting_box.setToolTip(f"Not measured for a classifier: {CLASSIFIER_FORGETTING}" if classifier else "")
        self.extract.setEnabled(not classifier)  # a classifier's answers are its labels
        if not self.busy:
            self._show_saved(run)
        self._update_buttons()

    def _show_saved(self, run: Path | None) -> None:
        """The run's newest saved evaluation, or empty results when it has none (a small JSON file: fast)."""
        from adapter_studio.engine.evaluation.run_eval import latest_evaluation

        self.result = latest_evaluation(run) if run is not None else None
        self._show_scores(self.result is not None)
        if self.result is None:
            self.scores.setRowCount(0)
            self.chart.clear()
            self.forgetting.setText("")
            self.pairs.setText("")
            self._fill_classes()
            self._fill_examples()
            return
        self._fill_scores()
        self._fill_examples()
        self.status.setText(f"Run <b>{Path(run).name}</b>: its last evaluation ({self.result.report.parent.name}, "
                            f"checkpoint {self.result.checkpoint}, {len(self.result.rows)} rows). Press Evaluate to "
                            "score it again.")  # fmt: skip

    def _checkpoint_label(self) -> str:
        """The checkpoint just evaluated with its step ('best (step 30)'): the step is what the curves show.
        Not for a saved evaluation: a resumed run may have another best checkpoint since."""
        assert self.result is not None
        return checkpoint_label(self.result.run_dir / "checkpoints" / self.result.checkpoint)

    def _update_buttons(self) -> None:
        self.evaluate_button.setEnabled(self.state.current_run is not None and not self.busy)
        self.stop_button.setEnabled(self.busy)
        self.open_report.setEnabled(self.result is not None and self.result.report is not None)

    def _choose_data(self) -> None:
        kinds = "Data (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"
        path, _ = QFileDialog.getOpenFileName(self, "Data to evaluate on", "", kinds)
        if path:
            self.data_path.setText(path)

    def settings(self) -> Any:
        from adapter_studio.engine.evaluation.run_eval import EvalSettings

        return EvalSettings(
            data=self.data_path.text().strip() or None, checkpoint=self.checkpoint.currentText() or "best",
            in_context=self.shots.value(), extract=self.extract.text().strip() or None, limit=self.limit.value(),
            forgetting=self.forgetting_box.isChecked(),
        )  # fmt: skip

    def evaluate(self) -> None:
        """Start scoring the current run on a worker thread; progress and Stop work while it runs."""
        from adapter_studio.engine.evaluation.run_eval import evaluate_run

        run = self.state.current_run
        if run is None or self.busy:
            return
        self._stop = threading.Event()
        self._clock = None
        self.progress.setValue(0)
        self.status.setText(f"Evaluating <b>{Path(run).name}</b>: loading the models…")
        self.worker = run_in_background(evaluate_run, Path(run), self.settings(), self._progress.changed.emit,
                                        self._stop, on_result=self._done, on_error=self._failed)  # fmt: skip
        self._update_buttons()

    def stop(self) -> None:
        if self.busy and not self._stop.is_set():  # the batch under way ends first: it read "Evaluating: …" for
            self.status.setText("Stopping after the answers under way… (nothing is saved)")  # seconds, Stop still on
            self.stop_button.setEnabled(False)
        self._stop.set()

    def _show_progress(self, stage: str, done: int, total: int) -> None:
        if not self.busy or self._stop.is_set():
            return
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(done)
        names = {"loading": "loading the models", "base": "the base model answers",
                 "tuned": "the tuned model answers", "in_context": "the in-context baseline answers",
                 "features": "the feature baseline learns", "forgetting": "checking forgetting"}  # fmt: skip
        # The count is of every answer of every column (10 rows, three columns: 30), not of rows.
        self.status.setText(f"Evaluating: {names.get(stage, stage)} ({done}/{total}{self._time_left(done, total)})")
        self.status.setToolTip("Answers done of all the answers to give: each row once per column (base, "
                               "in-context, tuned), then the forgetting check")  # fmt: skip

    def _time_left(self, done: int, total: int) -> str:
        """', about m:ss left' at the rate of the rows done since the first answers (loading left out), once
        a twentieth is done; rough where stages differ (a base model that rambles, a tuned one that stops)."""
        now = time.monotonic()
        if self._clock is None:
            if done > 0:
                self._clock = (now, done)
            return ""
        start, first = self._clock
        if done - first < max(1, total // 20):
            return ""
        return f", about {format_seconds((now - start) / (done - first) * (total - done))} left"

    def _done(self, result: Any) -> None:
        self.worker = None
        self.result = result
        self.progress.setValue(self.progress.maximum())
        notes = "".join(f"<br>Note: {html.escape(n, quote=False)}" for n in result.notes)  # e.g. a rule found
        self.status.setText(f"Run <b>{result.run_dir.name}</b>, checkpoint {self._checkpoint_label()}: "
                            f"{len(result.rows)} rows. Report: {html.escape(str(result.report))}{notes}")  # fmt: skip
        self._fill_scores()
        self._fill_examples()
        self._update_buttons()

    def _failed(self, error: BaseException) -> None:
        from adapter_studio.engine.evaluation.run_eval import EvaluationStopped

        self.worker = None
        self.progress.setValue(0)
        self._update_buttons()
        if isinstance(error, EvaluationStopped):
            self.status.setText("Evaluation stopped: nothing was saved.")
            return
        self.status.setText("Evaluation failed.")
        self.error(error)

    def _open_report(self) -> None:
        if self.result is not None and self.result.report is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.result.report)))

    # --- results ----------------------------------------------------------------------------------

    def columns(self) -> list[str]:
        """The models with scores, in the table's order."""
        return [c for c in COLUMNS if self.result is not None and self.result.metrics.get(c)]

    def score_rows(self) -> list[tuple[str, dict[str, float | None]]]:
        """(title, model → score) for the table and the chart: a preference run's pair ranking first (what
        it was trained to change; the base has no reward accuracy, its rewards are its own), then the
        answers' metrics."""
        from adapter_studio.engine.evaluation.metrics import METRIC_TITLES

        rows: list[tuple[str, dict[str, float | None]]] = []
        p = self.result.pairs
        if p is not None:
            for name, title in PAIR_ROWS.items():
                rows.append((title, {"base": p.base.get(name) if name != "reward_accuracy" else None,
                                     "tuned": p.tuned[name]}))  # fmt: skip
        metrics = self.result.metrics
        for name in metrics["tuned"]:
            rows.append((METRIC_TITLES.get(name, name), {c: metrics[c][name] for c in self.columns()}))
        return rows

    def _show_scores(self, shown: bool) -> None:
        self.empty_note.setVisible(not shown)
        self.scores.setVisible(shown)
        self.chart.setVisible(shown)

    def _fill_scores(self) -> None:
        self._show_scores(True)
        columns = self.columns()
        rows = self.score_rows()
        self.scores.setRowCount(len(rows))
        self.scores.setColumnCount(len(columns))
        self.scores.setHorizontalHeaderLabels([COLUMN_TITLES[c] for c in columns])
        self.scores.setVerticalHeaderLabels([title for title, _ in rows])
        for i, (_, values) in enumerate(rows):
            for j, column in enumerate(columns):
                value = values.get(column)
                number_cell(self.scores, i, j, "—" if value is None else f"{value:.3f}")
        self.scores.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.chart.clear()
        width = 0.8 / max(len(columns), 1)
        for j, column in enumerate(columns):
            bars = [(i - 0.4 + width * (j + 0.5), value) for i, (_, values) in enumerate(rows)
                    if (value := values.get(column)) is not None]  # fmt: skip
            self.chart.addItem(pg.BarGraphItem(x=[x for x, _ in bars], height=[h for _, h in bars], width=width * 0.9,
                                               brush=COLOURS[column], name=COLUMN_TITLES[column]))  # fmt: skip
        # With a preference run's three more groups, the labels take two lines ("exact\nmatch"): on one they
        # ran into each other.
        many = len(rows) > len(PAIR_ROWS) + 2
        ticks = [(i, TICKS.get(title, title.replace(" ", "\n", 1)) if many else title)
                 for i, (title, _) in enumerate(rows)]  # fmt: skip
        axis = self.chart.getAxis("bottom")
        axis.setTicks([ticks])
        two_lines = any("\n" in t for _, t in ticks)  # pyqtgraph sizes the axis for one line
        axis.setHeight(QFontMetrics(axis.font()).lineSpacing() * 2 + 12 if two_lines else None)
        self.chart.setXRange(-0.6, len(rows) - 0.4)
        self.chart.setYRange(0, 1.05)
        f = self.result.forgetting
        self.forgetting.setText(
            f"Forgetting: not measured ({_why_no_forgetting(self.result)})." if f is None else
            f"Forgetting: loss on {f.pairs} general instructions {f.loss_base:.3f} → {f.loss_tuned:.3f}, "
            f"<b>ratio {f.ratio:.3f}</b> (1.0: nothing forgotten; above 1: general answers became less likely)."
        )  # fmt: skip
        p = self.result.pairs
        self.pairs.setVisible(p is not None)
        if p is not None:
            from adapter_studio.engine.evaluation.pairs import summary

            # The command line's sentence (numbers and fixed words only), its main figures in bold.
            self.pairs.setText(summary(p, lambda s: f"<b>{s}</b>").replace("->", "→"))
        self._fill_classes()

    def _fill_classes(self) -> None:
        from adapter_studio.engine.evaluation.classes import summary

        c = self.result.classes if self.result is not None else None
        self.classes_panel.setVisible(c is not None)
        if c is None:
            return
        self.classes_label.setText(html.escape(summary(c, lambda s: f"\0{s}\1"), quote=False)
                                   .replace("\0", "<b>").replace("\1", "</b>"))  # labels are the data's text
        headers = [*CLASS_HEADERS, *([f"F1 {COLUMN_TITLES[c.baseline].lower()}"] if c.baseline else [])]
        expected = c.expected_labels()
        self.class_table.setRowCount(len(expected))
        self.class_table.setColumnCount(len(headers))
        self.class_table.setHorizontalHeaderLabels(headers)
        self.class_table.setVerticalHeaderLabels(expected)
        for i, label in enumerate(expected):
            s = c.per_class[label]
            cells = [str(s["rows"]), *(f"{s[k]:.3f}" for k in ("precision", "recall", "f1"))]
            cells += [f"{c.baseline_f1[label]:.3f}"] if c.baseline else []
            for j, text in enumerate(cells):
                number_cell(self.class_table, i, j, text)
        self.class_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.confusion.setRowCount(len(expected))  # OTHER, where there is one, is a column only
        self.confusion.setColumnCount(len(c.labels))
        self.confusion.setHorizontalHeaderLabels(c.labels)
        self.confusion.setVerticalHeaderLabels(expected)
        for i, row in enumerate(c.confusion[: len(expected)]):
            total = max(sum(row), 1)
            for j, count in enumerate(row):
                item = number_cell(self.confusion, i, j, str(count))
                # Shade by the share of the expected class's rows: the diagonal blue, mix-ups red.
                share = count / total
                colour = QColor("#1e88e5" if i == j else "#e53935")
                colour.setAlphaF(min(0.85, share) if count else 0.0)
                item.setBackground(colour)
                if count and share > 0.5:
                    item.setForeground(QColor("white"))  # readable on the darker shades
                item.setToolTip(f"{count} of {sum(row)} rows of {c.labels[i]!r} chosen as {c.labels[j]!r}")

    def shown_rows(self) -> list[dict[str, Any]]:
        """The rows in the per-example table: changed ones, or the regressions only, largest change first."""
        if self.result is None:
            return []
        if self.regressions_only.isChecked():
            return [r for r in self.result.rows if r["regression"]]
        return [r for r in self.result.rows if r["change"] != 0 or r["differs"]]

    def _fill_examples(self) -> None:
        rows = self.shown_rows()
        every = self.result.rows if self.result is not None else []
        answered = [c for c in COLUMNS if every and c in every[0]["answers"]]
        headers = [*EXAMPLE_HEADERS, *(COLUMN_TITLES[c] for c in answered), "Change"]
        self.examples.setColumnCount(len(headers))
        self.examples.setHorizontalHeaderLabels(headers)
        header = self.examples.horizontalHeader()
        for j in range(len(headers)):
            fixed = j == 0 or j == len(headers) - 1
            header.setSectionResizeMode(j, QHeaderView.ResizeMode.ResizeToContents if fixed
                                        else QHeaderView.ResizeMode.Stretch)  # fmt: skip
        self.examples.setRowCount(len(rows))
        inputs = example_labels([r["input"] for r in rows])  # what tells the rows apart comes first
        for i, r in enumerate(rows):
            cells = (Path(r["where"]).name, r["input"], r["expected"], *(r["answers"][c] for c in answered),
                     f"{r['change']:+.2f}")  # fmt: skip
            for j, text in enumerate(cells):
                # An empty answer shows as the report writes it (a blank cell read as nothing shown).
                item = QTableWidgetItem(inputs[i] if j == 1 else " ".join(str(text).split()) or EMPTY)
                item.setToolTip(str(text) or "(an empty answer)")
                self.examples.setItem(i, j, item)
        total = len(self.result.rows) if self.result is not None else 0
        regressions = sum(r["regression"] for r in self.result.rows) if self.result is not None else 0
        said = "1 regression" if regressions == 1 else f"{regressions} regressions"
        self.examples_title.setText(f"<b>Rows whose answer changed</b> ({len(rows)} shown of {total}; {said})")


def _why_no_forgetting(result: Any) -> str:
    if result.task == "classification":
        return CLASSIFIER_FORGETTING
    return "switched off" if not result.settings.forgetting else "no general instructions were read"
