"""Step 6: the run history — every run folder, overlaid curves, spec differences, and run actions."""

from __future__ import annotations

import html
import json
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.run_compare import curves, spec_diff
from adapter_studio.engine.runs import RESUMABLE, RunSummary, list_runs
from adapter_studio.engine.spec import load_spec_file
from adapter_studio.engine.training.checkpoints import has_checkpoint
from adapter_studio.gui.combine_dialog import FUSION
from adapter_studio.gui.dialogs import unwritable_note
from adapter_studio.gui.evaluation_summary import EvaluationPanel, EvaluationSummaries, EvaluationSummary
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.pages.train_page import format_seconds
from adapter_studio.gui.plots import PALETTE, LivePlot
from adapter_studio.gui.state import StudioState
from adapter_studio.gui.sweep_panel import SweepPanel
from PySide6.QtCore import QItemSelection, QItemSelectionModel, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("Name", "Status", "Model", "Method", "Trainable", "Steps", "Final loss", "Final eval loss",
           "Best eval loss", "Evaluated", "Duration", "Date")  # fmt: skip
# What a header cannot say in a word; shown over the header.
COLUMN_TIPS = {
    "Trainable": "Parameters the method trained",
    "Steps": "Optimizer steps done",
    "Final loss": "Training loss at the last step",
    "Final eval loss": "Loss on the held-out rows at the last evaluation",
    "Best eval loss": "Lowest loss on the held-out rows (the 'best' checkpoint)",
    "Evaluated": "The tuned model's headline score on the Evaluate page's latest evaluation",
    "Duration": "The whole run, each session from its first event to its last: loading, data, training, "
                "evaluations and saving (the Train page's elapsed counts the training steps only)",
}
STATUS_COLORS = {"completed": "#2a7", "cancelled": "#c80", "failed": "#c00", "interrupted": "#85a", "running": "#357"}
RUNS_COLUMN_PX = 150  # a column at most (its text whole in the tooltip), where the table has the room
MIN_COLUMN_PX = 60  # where it has not (_fit_columns)
MIB = 2**20
MAX_OVERLAID = len(PALETTE)  # runs the Curves tab draws at once
# The combine command's options as the Combine… dialog names them.
DIALOG_FIELDS = {"--how": "Combination", "--weights": "Weights", "--density": "Density (TIES / DARE)"}


class SortableItem(QTableWidgetItem):
    """A cell that sorts by a number (or by its text when it has none)."""

    def __init__(self, text: str, key: float | str | None = None) -> None:
        super().__init__(text)
        self.key = key if key is not None else text

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.key, getattr(other, "key", other.text())
        if isinstance(mine, str) != isinstance(theirs, str):
            return isinstance(mine, str)  # missing numbers sort before present ones
        return mine < theirs  # type: ignore[operator]


def _loss(value: float | None) -> tuple[str, float | None]:
    return ("—", None) if value is None else (f"{value:.4f}", value)


def _value_text(value: Any) -> str:
    if value is None:
        return "—"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class RunsPage(Page):
    title = "Runs"
    hint = (
        "Every run in the runs folder. Select several to overlay their curves, two to compare their "
        "specs; resume a stopped run, or clone its spec to start a new one. Method sweep trains several "
        "methods on the same budget and charts quality against cost."
    )

    spec_cloned = Signal(Path)  # the run whose spec was loaded into the state

    def __init__(
        self,
        state: StudioState,
        on_resume: Callable[[Path], None] | None = None,
        start_run: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(state)
        self.on_resume = on_resume
        self.runs: list[RunSummary] = []
        self.combining = False
        self.evaluations = EvaluationSummaries()

        folder_row = QHBoxLayout()
        folder_row.addWidget(QLabel("Runs folder"))
        self.folder_edit = QLineEdit()
        self.folder_edit.setObjectName("runsFolder")
        self.folder_edit.editingFinished.connect(lambda: self.set_runs_dir(self.folder_edit.text()))
        folder_row.addWidget(self.folder_edit, 1)
        choose = QPushButton("Choose…")
        choose.setObjectName("chooseRunsFolder")
        choose.clicked.connect(self.choose_folder)
        folder_row.addWidget(choose)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setObjectName("refreshRuns")
        self.refresh_button.clicked.connect(self.refresh)
        folder_row.addWidget(self.refresh_button)
        self.layout_.addLayout(folder_row)

        self.table = QTableWidget(0, len(COLUMNS))
        self._natural: list[int] = []  # each column's width for its text (_fit_columns)
        self.table.setObjectName("runsTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        for column, tip in COLUMN_TIPS.items():
            self.table.horizontalHeaderItem(COLUMNS.index(column)).setToolTip(tip)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.sortByColumn(COLUMNS.index("Date"), Qt.SortOrder.DescendingOrder)  # newest first
        self.table.setSortingEnabled(True)
        self.table.itemSelectionChanged.connect(self.on_selection_changed)
        self.table.setMinimumHeight(120)  # the header and three runs, however small the window
        # Whole rows are picked: Tab moves on to the buttons (it stepped from cell to cell, and Resume, Delete…
        # and the rest could not be reached by keyboard); Delete asks, as Delete… does.
        self.table.setTabKeyNavigation(False)
        delete = QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.table,
                           lambda: bool(self.selected_runs()) and self.delete())  # none picked: a key does nothing
        delete.setContext(Qt.ShortcutContext.WidgetShortcut)

        actions = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for key, text, slot, tip in (
            ("resume", "Resume", self.resume, "Continue a cancelled, failed or interrupted run from its checkpoint"),
            ("rename", "Rename…", self.rename, "Rename the run folder"),
            ("delete", "Delete…", self.delete, "Delete the selected run folders"),
            ("open", "Open folder", self.open_folder, "Show the run folder in the file manager"),
            ("clone", "Clone spec", self.clone_spec, "Load this run's settings to start a new run from them"),
            ("use", "Use for Try/Export", self.use_run, "Make this the run that Try and Export work on"),
            # Said on the buttons that wait for a selection: greyed out, they gave no hint what enables them.
            ("compare", "Compare two runs", self.show_comparison,
             "Select two runs (Ctrl+click) to show the spec fields that differ"),
            ("combine", "Combine…", self.combine, "Select two or more finished runs (Ctrl+click) to combine them into "
             "a new one: merge LoRA runs, or fuse bottleneck-adapter runs (AdapterFusion)"),
        ):
            button = QPushButton(text)
            button.setObjectName(f"run_{key}")
            button.setToolTip(tip)
            button.clicked.connect(slot)
            actions.addWidget(button)
            self.buttons[key] = button
        actions.addStretch()

        self.details = QTextBrowser()
        self.details.setObjectName("runDetails")
        self.evaluation = EvaluationPanel(lambda path: self.open_path(path))  # late-bound: tests stub open_path
        self.evaluation.setObjectName("runEvaluationPanel")
        details = QWidget()
        details.setMaximumHeight(110)  # a run's facts take three lines; the table keeps the room
        details_row = QHBoxLayout(details)
        details_row.setContentsMargins(0, 0, 0, 0)
        details_row.addWidget(self.details, 3)
        details_row.addWidget(self.evaluation, 2)
        self.status = wrapped_label("runsStatus")

        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.table, 1)
        top_layout.addLayout(actions)
        top_layout.addWidget(details)
        top_layout.addWidget(self.status)

        self.loss_plot = LivePlot("Training loss", "loss")
        self.loss_plot.setObjectName("runsLossPlot")
        self.eval_plot = LivePlot("Eval loss", "loss")
        self.eval_plot.setObjectName("runsEvalPlot")
        self.eval_plot.follow_steps(self.loss_plot)
        self.memory_plot = LivePlot("Memory", "MiB", min_span=0.1)
        self.memory_plot.setObjectName("runsMemoryPlot")
        plot_row = QSplitter(Qt.Orientation.Horizontal)
        for plot in self.plots.values():
            plot_row.addWidget(plot)
        plots = QWidget()
        plots_layout = QVBoxLayout(plots)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        self.curves_note = wrapped_label("curvesNote")  # said when more runs are selected than the plots draw
        self.curves_note.hide()
        plots_layout.addWidget(self.curves_note)
        plots_layout.addWidget(plot_row, 1)

        compare = QWidget()
        compare_layout = QVBoxLayout(compare)
        self.diff_label = wrapped_label("diffLabel", "Select two runs to see the spec fields that differ.")
        compare_layout.addWidget(self.diff_label)
        self.diff_table = QTableWidget(0, 3)
        self.diff_table.setObjectName("diffTable")
        self.diff_table.setHorizontalHeaderLabels(["Field", "Run A", "Run B"])
        self.diff_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.diff_table.verticalHeader().setVisible(False)
        self.diff_table.horizontalHeader().setStretchLastSection(True)
        compare_layout.addWidget(self.diff_table, 1)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("runsTabs")
        self.tabs.addTab(plots, "Curves")
        self.tabs.addTab(compare, "Compare specs")
        self.sweep = SweepPanel(state, start_run or (lambda _spec: None))
        self.sweep.setObjectName("sweepPanel")
        self.sweep.sweep_finished.connect(self._sweep_finished)
        # Scrolled where the window is short: its controls set the whole window's least height (718 px, more
        # than a 1,366 × 768 laptop shows under a title bar and a taskbar).
        sweep_scroll = QScrollArea()
        sweep_scroll.setWidgetResizable(True)
        sweep_scroll.setFrameShape(QFrame.Shape.NoFrame)
        sweep_scroll.setWidget(self.sweep)
        self.tabs.addTab(sweep_scroll, "Method sweep")

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.tabs)
        split.setSizes([360, 300])
        self.layout_.addWidget(split, 1)
        self._split = split
        self.tabs.currentChanged.connect(self._room_for_sweep)

        state.run_changed.connect(self.refresh)
        self.refresh()

    @property
    def plots(self) -> dict[str, LivePlot]:
        return {"loss": self.loss_plot, "eval_loss": self.eval_plot, "memory": self.memory_plot}

    def on_shown(self) -> None:
        self.refresh()

    def _sweep_finished(self, plan: Any) -> None:
        """A sweep or search ended: its winner is the run to look at (the selection before it stayed)."""
        self.refresh()
        if plan.best_run_dir:
            self.select_runs([Path(plan.best_run_dir)])

    # --- the table --------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read every run folder, keeping the selection where the runs still exist."""
        keep = {r.path for r in self.selected_runs()}
        self.folder_edit.setText(str(self.state.runs_dir))
        try:
            self.runs = list_runs(self.state.runs_dir)
        except UserError as e:  # a file: the fix in the window's words (the engine's names --dir)
            self.runs = []
            self.status.setText(f"Cannot read the runs: {e.what} — pick a folder with Choose… or type one above")
        except (OSError, ValueError) as e:
            self.runs = []
            self.status.setText(f"Cannot read the runs in {self.state.runs_dir}: {e}")
        else:
            count = len(self.runs)
            folder = Path(self.state.runs_dir).expanduser()
            self.status.setText(f"{count} run{'s' * (count != 1)} in {folder}" + unwritable_note(folder))
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(self.runs))
        for row, run in enumerate(self.runs):
            for col, item in enumerate(self._row_items(run)):
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()
        self._natural = [self.table.columnWidth(c) for c in range(self.table.columnCount())]
        self._fit_columns()
        self.table.blockSignals(False)
        kept = [p for p in keep if any(r.path == p for r in self.runs)]
        current = Path(self.state.current_run).resolve() if self.state.current_run is not None else None
        if not kept:  # the run just trained or opened, not an empty page asking for a selection
            kept = [r.path for r in self.runs if current is not None and r.path.resolve() == current][:1]
        self.select_runs(kept)
        self.sweep.refresh_list()

    def _row_items(self, run: RunSummary) -> list[QTableWidgetItem]:
        name = SortableItem(run.name)
        name.setData(Qt.ItemDataRole.UserRole, str(run.path))
        name.setToolTip(str(run.path))
        status = SortableItem(run.status)
        status.setForeground(QColor(STATUS_COLORS.get(run.status, "#000")))
        if run.error:
            status.setToolTip(run.error)
        model = SortableItem(Path(run.model.removeprefix("embedded:")).name or run.model)  # whole in the tooltip
        model.setToolTip(run.model)
        trainable = run.trainable_params
        steps = f"{run.steps} / {run.total_steps}" if run.total_steps else str(run.steps)
        date = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) if run.started else "—"
        duration = format_seconds(run.duration_s) if run.duration_s is not None else "—"
        evaluated = _evaluated_item(self.evaluations.of(run.path))
        return [
            name, status, model, SortableItem(run.method_label),
            SortableItem(f"{trainable:,}" if trainable is not None else "—", trainable),
            SortableItem(steps, run.steps),
            SortableItem(*_loss(run.final_loss)),
            SortableItem(*_loss(run.final_eval_loss)),
            SortableItem(*_loss(run.best_eval_loss)),
            evaluated,
            SortableItem(duration, run.duration_s),
            SortableItem(date, run.started),
        ]  # fmt: skip

    def _row_run(self, row: int) -> RunSummary | None:
        item = self.table.item(row, 0)
        path = Path(item.data(Qt.ItemDataRole.UserRole)) if item else None
        return next((r for r in self.runs if r.path == path), None)

    def selected_runs(self) -> list[RunSummary]:
        """The selected runs, top to bottom as the table shows them."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [run for run in (self._row_run(row) for row in rows) if run is not None]

    def selected_run(self) -> RunSummary | None:
        """The run single-run actions work on: the focused row if selected, else the first selected."""
        selected = self.selected_runs()
        current = self._row_run(self.table.currentRow())
        if current is not None and current in selected:
            return current
        return selected[0] if selected else None

    def select_runs(self, paths_or_names: list[Path | str]) -> None:
        """Select these runs (by folder or name), replacing the selection."""
        wanted = {str(p) for p in paths_or_names}
        selection = QItemSelection()
        for row in range(self.table.rowCount()):
            run = self._row_run(row)
            if run is not None and (run.name in wanted or str(run.path) in wanted):
                selection.select(self.table.model().index(row, 0), self.table.model().index(row, len(COLUMNS) - 1))
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
        self.table.selectionModel().select(selection, flags)
        self.on_selection_changed()

    def on_selection_changed(self) -> None:
        selected = self.selected_runs()
        focus = self.selected_run()
        one = len(selected) == 1
        self.buttons["resume"].setEnabled(one and focus is not None and focus.status in RESUMABLE)
        for key in ("rename", "clone", "use", "open"):
            self.buttons[key].setEnabled(one)
        self.buttons["delete"].setEnabled(bool(selected) and all(r.status != "running" for r in selected))
        self.buttons["rename"].setEnabled(one and focus is not None and focus.status != "running")
        self.buttons["compare"].setEnabled(len(selected) == 2)
        self.buttons["combine"].setEnabled(len(selected) >= 2 and not self.combining
                                           and all(r.status == "completed" for r in selected))  # fmt: skip
        self.show_details(focus)
        self.plot_runs(selected)
        self.fill_diff(selected)

    def show_details(self, run: RunSummary | None) -> None:
        self.evaluation.show_summary(None if run is None else self.evaluations.of(run.path), selected=run is not None)
        if run is None:
            self.details.setHtml("<span style='color:gray'>Select a run to see its details.</span>")
            return
        color = STATUS_COLORS.get(run.status, "#000")
        lines = [f"<b>{run.name}</b> — <b style='color:{color}'>{run.status}</b> · {run.path}",
                 f"model {run.model} · method {run.method_label} · step {run.steps}"
                 + (f" of {run.total_steps}" if run.total_steps else "")]  # fmt: skip
        if run.combined:  # no step of its own: where its adapter came from
            lines.append(html.escape(run.combined.capitalize(), quote=False))
        if run.error:
            lines.append(f"<span style='color:#c00'>Error: {run.error}</span>")
        if run.status in RESUMABLE and not has_checkpoint(run.path):
            lines.append("It kept no checkpoint: Resume starts it again from step 0.")
        elif run.status == "interrupted":
            lines.append("The process ended without finishing (crash or power loss): Resume continues it.")
        elif run.status in RESUMABLE:
            lines.append("Resume continues from the last checkpoint.")
        self.details.setHtml("<br>".join(lines))

    # --- curves and comparison ----------------------------------------------------------------------
    def plot_runs(self, runs: list[RunSummary]) -> None:
        """Overlay the selected runs' loss, eval loss and memory, one colour per run in every plot: the first
        MAX_OVERLAID of them (past the palette two runs share a colour; Ctrl+A on 154 runs froze the window
        5 s drawing curves no one could tell apart)."""
        for plot in self.plots.values():
            plot.clear_series()
        shown = runs[:MAX_OVERLAID]
        self.curves_note.setVisible(len(runs) > len(shown))
        self.curves_note.setText(f"The curves of the first {len(shown)} of the {len(runs)} selected runs, one colour "
                                 "each: select fewer runs to see the others.")  # fmt: skip
        for index, run in enumerate(shown):
            color = PALETTE[index % len(PALETTE)]
            run_curves = curves(run.path)
            for plot, key, scale, symbol in (
                (self.loss_plot, "loss", 1.0, None),
                (self.eval_plot, "eval_loss", 1.0, "o"),
                (self.memory_plot, "memory_bytes", 1 / MIB, None),
            ):
                if key not in run_curves:
                    continue
                plot.ensure(run.name, symbol=symbol)
                curve = plot.curves[run.name]
                curve.setPen(pg.mkPen(color, width=1.5))
                if symbol:
                    curve.setSymbolBrush(color)
                for x, y in zip(*run_curves[key], strict=True):
                    plot.add(run.name, x, y * scale)
        for plot in self.plots.values():
            plot.refresh()

    def fill_diff(self, runs: list[RunSummary]) -> None:
        self.diff_table.setRowCount(0)
        if len(runs) != 2:
            self.diff_label.setText("Select two runs to see the spec fields that differ.")
            self.diff_table.setHorizontalHeaderLabels(["Field", "Run A", "Run B"])
            return
        a, b = runs
        rows = spec_diff(a.path, b.path)
        self.diff_table.setHorizontalHeaderLabels(["Field", a.name, b.name])
        self.diff_label.setText(
            f"{'1 field differs' if len(rows) == 1 else f'{len(rows)} fields differ'} between {a.name} and {b.name}"
            if rows
            else f"{a.name} and {b.name} have the same spec."
        )
        self.diff_table.setRowCount(len(rows))
        for row, (field, value_a, value_b) in enumerate(rows):
            for col, text in enumerate((field, _value_text(value_a), _value_text(value_b))):
                self.diff_table.setItem(row, col, QTableWidgetItem(text))
        self.diff_table.resizeColumnsToContents()

    def show_comparison(self) -> None:
        if len(self.selected_runs()) != 2:
            self.error("Select exactly two runs to compare (Ctrl-click the second).")
            return
        self.tabs.setCurrentIndex(1)

    # --- actions ------------------------------------------------------------------------------------
    def _single(self, action: str, *, allow_running: bool = True) -> RunSummary | None:
        run = self.selected_run()
        if run is None:
            self.error(f"Select a run to {action}.")
        elif not allow_running and run.status == "running":
            self.error(f"{run.name} is still training: stop it before you {action} it.")
            return None
        return run

    def resume(self) -> None:
        run = self._single("resume", allow_running=False)
        if run is None:
            return
        if run.status not in RESUMABLE:
            self.error(f"{run.name} is {run.status}: only cancelled, failed or interrupted runs can be resumed.")
            return
        if self.on_resume is not None:
            self.on_resume(run.path)  # the Train page makes it the current run once it starts
        else:
            self.status.setText(f"Resume {run.name} with: adapter-studio train --resume {shlex.quote(str(run.path))}")

    def rename(self) -> None:
        run = self._single("rename", allow_running=False)
        if run is None:
            return
        new_name = self.ask_new_name(run.name)
        if new_name is None or new_name.strip() == run.name:
            return
        new_name = new_name.strip()
        if not new_name or new_name in (".", "..") or any(c in new_name for c in "/\\:"):
            self.error(UserError(f"'{new_name}' cannot name a folder", where="Rename",
                                 fix="use letters, digits, '-' and '_'"))  # fmt: skip
            return
        target = run.path.with_name(new_name)
        if target.exists():
            self.error(UserError(f"{target} already exists", where="Rename", fix="choose another name"))
            return
        try:
            run.path.rename(target)
        except OSError as e:
            self.error(UserError(f"cannot rename {run.path}: {e.strerror}", where="Rename"))
            return
        self._forget(run.path, replacement=target)
        self.select_runs([target])

    def delete(self) -> None:
        runs = self.selected_runs()
        if not runs:
            self.error("Select the runs to delete.")
            return
        running = [r.name for r in runs if r.status == "running"]
        if running:
            self.error(f"{', '.join(running)} still training: stop it before you delete it.")
            return
        if not self.confirm_delete([r.name for r in runs]):
            return
        deleted = []
        for run in runs:
            try:
                shutil.rmtree(run.path)
            except OSError as e:
                self.error(UserError(f"cannot delete {run.path}: {e.strerror}", where="Delete"))
            else:
                deleted.append(run.path)
        current = self.state.current_run
        self._forget(current if current is not None and Path(current) in deleted else None)
        if deleted:  # after the refresh, whose count of runs replaced it when the current run went
            self.status.setText(f"Deleted {', '.join(p.name for p in deleted)}.")

    def _forget(self, path: Path | None, replacement: Path | None = None) -> None:
        """Point the state away from a run folder that was renamed or deleted, and refresh the table."""
        current = self.state.current_run
        if path is not None and current is not None and Path(current) == path:
            self.state.set_current_run(replacement)  # run_changed refreshes the table
        else:
            self.refresh()

    def combine(self) -> None:
        """Combine the selected finished LoRA runs into a new run, on a worker thread."""
        from adapter_studio.engine.combine_runs import combine_runs
        from adapter_studio.gui.worker import run_in_background

        runs = self.selected_runs()
        choice = self.ask_combine([r.name for r in runs])
        if choice is None:
            return
        if choice.how == FUSION:
            self.fuse([r.path for r in runs])
            return
        self.combining = True
        self.on_selection_changed()
        self.status.setText(f"Combining {len(runs)} runs ({choice.how})…")

        def done(result: Any) -> None:
            self.combining = False
            self.refresh()
            self.select_runs([result.run_dir])
            self.status.setText(
                f"Combined into {result.run_dir.name}: {result.how}, rank {result.rank}, "
                f"{result.trainable_params:,} adapter parameters. Export it like any run."
            )

        def failed(error: BaseException) -> None:
            self.combining = False
            self.on_selection_changed()
            if isinstance(error, UserError) and error.where in DIALOG_FIELDS:  # the dialog's words, not the CLI's
                error = UserError(error.what, where=DIALOG_FIELDS[error.where], fix=error.fix)
            self.status.setText(f"Could not combine: {getattr(error, 'message', error)}")
            self.error(error)

        self.combine_worker = run_in_background(
            combine_runs, [r.path for r in runs], choice.weights, choice.how, density=choice.density,
            output_dir=self.state.runs_dir, name=choice.name, on_result=done, on_error=failed,
        )  # fmt: skip

    def fuse(self, run_dirs: list[Path]) -> None:
        """AdapterFusion trains: load the first run's spec with the fusion method, to start on the Train page."""
        from adapter_studio.engine.combine_runs import fusion_spec

        try:
            spec = fusion_spec(run_dirs)
        except UserError as e:
            self.error(e)
            return
        self.state.load_spec(spec)
        names = ", ".join(p.name for p in run_dirs)
        self.status.setText(f"AdapterFusion of {names} is set up with {run_dirs[0].name}'s model, data and budget: "
                            "change what you like, then Start on the Train page.")  # fmt: skip
        self.spec_cloned.emit(run_dirs[0])

    def ask_combine(self, names: list[str]) -> Any:
        from adapter_studio.gui.combine_dialog import CombineDialog

        dialog = CombineDialog(names, self)
        return dialog.choice() if dialog.exec() == CombineDialog.DialogCode.Accepted else None

    def open_folder(self) -> None:
        run = self._single("open")
        if run is not None:
            self.open_path(run.path)

    def clone_spec(self) -> None:
        run = self._single("clone")
        if run is None:
            return
        try:
            spec = load_spec_file(run.path / "spec.yaml")
        except UserError as e:
            self.error(e)
            return
        self.state.load_spec(spec.model_copy(update={"name": None}))
        self.status.setText(f"Loaded the spec of {run.name}: change what you like, then Start on the Train page.")
        self.spec_cloned.emit(run.path)

    def use_run(self) -> None:
        run = self._single("use")
        if run is not None:
            self.state.set_current_run(run.path)
            self.status.setText(f"{run.name} is the current run for Try and Export.")

    # --- questions (small methods, so tests can answer them) ------------------------------------------
    def choose_folder(self) -> None:
        folder = self.ask_folder()
        if folder:
            self.set_runs_dir(folder)

    def _room_for_sweep(self) -> None:
        """The sweep's controls whole where the window has the room, taken from the table above them."""
        if self.tabs.currentWidget() is not self.sweep.parentWidget().parentWidget():  # its scroll area
            return
        top, tabs = self._split.sizes()
        wanted = self.sweep.minimumSizeHint().height() + self.tabs.tabBar().height() + 8
        spare = top - self._split.widget(0).minimumSizeHint().height()
        grow = min(max(wanted - tabs, 0), max(spare, 0))
        self._split.setSizes([top - grow, tabs + grow])

    def _fit_columns(self) -> None:
        """Each column as wide as its text, at most RUNS_COLUMN_PX (a long evaluation summary pushed Date off the
        page); where the table is narrower than that, the widest columns narrow alike, to MIN_COLUMN_PX at least:
        at 1,280 px Duration was cut and Date, the column sorted by, was out of sight."""
        room = self.table.viewport().width()
        whole = {COLUMNS.index(c) for c in ("Status", "Date")}  # short, and read at a glance: never cut
        cap = RUNS_COLUMN_PX
        widths = [min(w, cap) for w in self._natural]
        while self.table.isVisible() and sum(widths) > room and cap > MIN_COLUMN_PX:
            cap -= 5
            widths = [min(w, RUNS_COLUMN_PX if c in whole else cap) for c, w in enumerate(self._natural)]
        for column, width in enumerate(widths):
            self.table.setColumnWidth(column, width)

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._fit_columns()

    def set_runs_dir(self, folder: str) -> None:
        if folder and folder != str(self.state.runs_dir):
            self.state.set_runs_dir(folder)
            self.refresh()

    def open_path(self, path: Path) -> None:
        """Show a folder in the file manager, or open a file (a report) in its usual application."""
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    def ask_folder(self) -> str | None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", str(self.state.runs_dir))
        return folder or None

    def ask_new_name(self, current: str) -> str | None:
        text, ok = QInputDialog.getText(self, "Rename run", "New folder name:", text=current)
        return text if ok else None

    def confirm_delete(self, names: list[str]) -> bool:
        listing = "\n".join(f"  {n}" for n in names)
        answer = QMessageBox.question(
            self,
            "Delete runs",
            f"Delete {len(names)} run folder{'s' * (len(names) != 1)} with checkpoints and logs?\n{listing}\n"
            "This cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes


def _evaluated_item(summary: EvaluationSummary | None) -> SortableItem:
    """The tuned model's headline score of the latest evaluation; empty (sorted first) without one."""
    headline = summary.headline if summary is not None else None
    if summary is None or headline is None:
        return SortableItem("")
    item = SortableItem(*headline)
    base = summary.first_score("base")
    item.setToolTip(f"{headline[0]} — tuned model, evaluated {summary.when}"
                    + (f"; base model {base:.3f}" if base is not None else ""))  # the cell may be cut: all of it
    return item
