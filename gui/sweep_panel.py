"""The method sweep on the Runs page: tick methods, train them one after another through the Train
page (so each is watched live like any run), then one table and one scatter chart of quality against
cost. The engine side (plan, rows, CSV) is `engine.training.sweep`; this module only drives and draws it.

The Auto button starts the automatic search (`engine.search`) on a budget: its trials run through the
Train page too, and land in the same table and scatter, with the winner highlighted.

The quality picked above the table also ranks it (best first, its value in the last column); for an
evaluation's metric (exact match, ROUGE-L, macro-F1, forgetting…), "Evaluate runs" evaluates the runs that
have no evaluation on their held-out rows yet (engine.evaluation.ranking)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.evaluation.ranking import METRICS, baseline_rows, evaluate_for_ranking, rank
from adapter_studio.engine.events import Finished, Started
from adapter_studio.engine.methods import METHOD_CLASSES
from adapter_studio.engine.search.auto import run_auto_search
from adapter_studio.engine.search.budget import BUDGET_FORMS, format_seconds, parse_budget
from adapter_studio.engine.search.results import SearchResult
from adapter_studio.engine.training.sweep import (
    COSTS,
    PEAK_NOTE,
    PLAN_FILE,
    QUALITY,
    SWEEPS,
    SweepPlan,
    list_sweeps,
    load_sweep,
    plan_sweep,
    rows_to_csv,
    sweep_rows,
)
from adapter_studio.gui.dialogs import show_error
from adapter_studio.gui.pages.base import wrapped_label
from adapter_studio.gui.pages.model_page import human_bytes, human_count
from adapter_studio.gui.plots import PALETTE, ReadableAxis
from adapter_studio.gui.state import StudioState
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

DEFAULT_TICKED = ("lora", "dora", "ia3", "prompt_tuning", "adapter_p", "last_layers")
LABELS = {
    "trainable_params": "trainable parameters", "adapter_bytes": "adapter size (bytes)",
    "peak_memory_bytes": "peak memory (bytes)", "train_seconds": "training time (s)",
    **{m.name: m.title for m in METRICS.values()},
}  # fmt: skip
TABLE = (("method", "Method"), ("status", "Status"), ("trial", "Trial"), ("learning_rate", "Learning rate"),
         ("batch_size", "Batch"), ("trainable_params", "Trainable"),
         ("adapter_bytes", "Adapter"), ("peak_memory_bytes", "Peak memory"), ("train_seconds", "Time"),
         ("tokens_per_s", "Tokens/s"), ("final_eval_loss", "Eval loss"), ("best_eval_loss", "Best eval"),
         ("accuracy", "Accuracy"), ("exact_match", "Exact match"), ("error", "Note"),
         ("targets", "Targets"))  # fmt: skip
LOG_AXES = ("trainable_params", "adapter_bytes")
WINNER = QColor("#d8f0d8")
LABELLED_POINTS = 6  # named on the scatter: the winner and the best; a search's 40 names piled into one blot


def cell_text(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key == "trainable_params":
        return human_count(int(value))
    if key in ("adapter_bytes", "peak_memory_bytes"):
        return human_bytes(value)
    if key == "train_seconds":
        return f"{value:.0f} s"
    if key == "tokens_per_s":
        return f"{value:.0f}"
    if key == "learning_rate" and isinstance(value, float):
        return f"{value:.1e}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _summary(plan: SweepPlan, rows: list[dict[str, Any]]) -> str:
    if plan.kind != "auto":
        methods = [r for r in rows if r["status"] != "baseline"]
        ran = sum(1 for r in methods if r["status"] not in ("pending", "refused"))
        baselines = len(rows) - len(methods)
        also = f"; {baselines} approaches without training beside them (dashed lines)" if baselines else ""
        return f"Sweep {plan.name}: {ran} of {len(methods)} methods trained{also}."
    trials = [r for r in rows if r.get("trial") != "winner"]
    counts = {s: sum(1 for r in trials if r["status"] == s) for s in ("completed", "pruned", "stopped", "failed")}
    how = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    best = "the best run is highlighted" if plan.best_run_dir else "no winner"
    return f"Automatic search {plan.name}: {len(trials)} trials ({how}); {best}."


class SweepPanel(QWidget):
    """Plan, run and show method sweeps. `start_run(spec)` starts one run on the Train page;
    `run_finished` must be connected to the Train page's RunResult signal."""

    sweep_finished = Signal(object)  # the SweepPlan, when its last method has run (or it was stopped)
    # Set by the main window: starts a job on the Train page (TrainPage.run_job); False when busy.
    start_job: Callable[[Callable[..., Any], str], bool] | None = None
    max_trials: int | None = None  # tests keep the search short

    def __init__(self, state: StudioState, start_run: Callable[[Any], None]) -> None:
        super().__init__()
        self.state = state
        self.start_run = start_run
        self.plan: SweepPlan | None = None  # shown
        self.running: SweepPlan | None = None  # being run
        self.rows: list[dict[str, Any]] = []
        self.auto_folder: Path | None = None  # the automatic search being run

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("Methods to train, one after another, on the\nsame model, data, steps and seed:"))
        self.methods = QListWidget()
        self.methods.setObjectName("sweepMethods")
        for cls in METHOD_CLASSES:
            name = cls.model_fields["name"].default
            item = QListWidgetItem(cls.title)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(cls.description)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in DEFAULT_TICKED else Qt.CheckState.Unchecked)
            self.methods.addItem(item)
        left_layout.addWidget(self.methods, 1)
        self.start_button = QPushButton("Start sweep")
        self.start_button.setObjectName("startSweep")
        self.start_button.setToolTip("Each method uses its own defaults and recommended learning rate; the steps, "
                                     "batch size, sequence length, seed and evaluation come from the Method page.")
        self.start_button.clicked.connect(self.start)
        self.continue_button = QPushButton("Continue sweep")
        self.continue_button.setObjectName("continueSweep")
        self.continue_button.setToolTip("Train the methods this sweep has not run yet")
        self.continue_button.clicked.connect(self.continue_shown)
        left_layout.addWidget(self.start_button)
        left_layout.addWidget(self.continue_button)
        left_layout.addWidget(QLabel("Or let it search: methods, learning rates and\nbatch sizes on short trials, "
                                     "the losers\nstopped early, the winner trained fully."))
        auto_row = QHBoxLayout()
        auto_row.addWidget(QLabel("budget"))
        self.budget = QLineEdit("20m")
        self.budget.setObjectName("autoBudget")
        self.budget.setToolTip(f"Wall-clock time for the whole search and the winner's training: {BUDGET_FORMS}")
        auto_row.addWidget(self.budget, 1)
        self.auto_button = QPushButton("Auto")
        self.auto_button.setObjectName("startAuto")
        self.auto_button.setToolTip("Automatic search on the held-out split; the steps or epochs on the Method page "
                                    "are the winner's training length (shortened when the budget is tight).")
        self.auto_button.clicked.connect(self.start_auto)
        auto_row.addWidget(self.auto_button)
        left_layout.addLayout(auto_row)

        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Sweep"))
        self.sweeps = QComboBox()
        self.sweeps.setObjectName("sweepChoice")
        # Sweep names are long: as wide as the longest made the page wider than a 1280-px screen.
        self.sweeps.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.sweeps.setMinimumContentsLength(16)
        self.sweeps.currentIndexChanged.connect(self._picked)
        top.addWidget(self.sweeps, 1)
        axes = QHBoxLayout()  # a row of its own: on one row with the rest they set the page's width
        axes.addWidget(QLabel("Plot quality"))
        self.y_axis = QComboBox()
        self.y_axis.setObjectName("sweepY")
        for key in QUALITY:
            self.y_axis.addItem(LABELS[key], key)
        axes.addWidget(self.y_axis)
        axes.addWidget(QLabel("against"))
        self.x_axis = QComboBox()
        self.x_axis.setObjectName("sweepX")
        for key in COSTS:
            self.x_axis.addItem(LABELS[key], key)
        axes.addWidget(self.x_axis)
        axes.addStretch()
        self.evaluate_button = QPushButton("Evaluate runs")
        self.evaluate_button.setObjectName("evaluateSweep")
        self.evaluate_button.setToolTip("Evaluate the tuned model of each finished run that has no evaluation on its "
                                        "held-out rows yet, to rank the runs by the quality picked")  # fmt: skip
        self.evaluate_button.clicked.connect(self.evaluate_runs)
        top.addWidget(self.evaluate_button)
        self._evaluating: threading.Event | None = None  # set to stop the evaluations under way
        save = QPushButton("Save CSV…")
        save.setObjectName("saveSweepCsv")
        save.clicked.connect(lambda: self.save_csv())
        top.addWidget(save)
        column.addLayout(top)
        column.addLayout(axes)
        self.status = wrapped_label("sweepStatus", "No sweep yet: tick methods and start one.")
        column.addWidget(self.status)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.table = QTableWidget(0, len(TABLE) + 1)  # the last column: the quality the table is ranked by
        self.table.setObjectName("sweepTable")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        split.addWidget(self.table)
        self.scatter = pg.PlotWidget(axisItems={"left": ReadableAxis("left"), "bottom": ReadableAxis("bottom")})
        self.scatter.setObjectName("sweepScatter")
        self.scatter.showGrid(x=True, y=True, alpha=0.25)
        split.addWidget(self.scatter)
        split.setSizes([520, 380])
        column.addWidget(split, 1)
        self.x_axis.currentIndexChanged.connect(self.draw_scatter)
        self.y_axis.currentIndexChanged.connect(self._rank_changed)

        layout = QHBoxLayout(self)
        outer = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(left)
        outer.addWidget(right)
        outer.setSizes([230, 900])
        layout.addWidget(outer)
        self.refresh_list()

    # --- choosing and planning -------------------------------------------------------------------
    def ticked(self) -> list[str]:
        return [
            self.methods.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.methods.count())
            if self.methods.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_ticked(self, names: list[str]) -> None:
        for i in range(self.methods.count()):
            item = self.methods.item(i)
            on = item.data(Qt.ItemDataRole.UserRole) in names
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def start(self) -> None:
        if self.running is not None or self.auto_folder is not None:
            return
        try:
            spec = self.state.build_spec()
        except Exception as e:
            show_error(self, e)
            return
        methods = self.ticked()
        self.status.setText(f"Checking {len(methods)} methods against the model…")
        self.start_button.setEnabled(False)
        self._planner = run_in_background(
            plan_sweep, spec, methods, on_result=self._planned, on_error=self._plan_failed
        )

    def _plan_failed(self, error: BaseException) -> None:
        self.start_button.setEnabled(True)
        self.status.setText("")
        show_error(self, error)

    def _planned(self, plan: SweepPlan) -> None:
        self.refresh_list(select=plan.folder)
        self._run(plan)

    def continue_shown(self) -> None:
        if self.plan is not None and self.running is None:
            self._run(load_sweep(self.plan.folder))

    # --- running -------------------------------------------------------------------------------
    def _run(self, plan: SweepPlan) -> None:
        self.running = plan
        self.plan = plan
        self.start_button.setEnabled(False)
        self.continue_button.setEnabled(False)
        self._next()

    def _next(self) -> None:
        plan = self.running
        if plan is None:
            return
        entry = next((e for e in plan.entries if not e.refused and not e.run_dir), None)
        if entry is None:
            self._done("finished")
            return
        self._current = entry
        self.show_plan(plan)
        done = sum(1 for e in plan.entries if e.run_dir)
        todo = sum(1 for e in plan.entries if not e.refused)
        self.status.setText(f"Training {entry.method} ({done + 1} of {todo}) — watch it on the Train page.")
        self.start_run(plan.spec_for(entry))

    def run_finished(self, result: Any) -> None:
        """The Train page's run ended; record it and go on (a stop by the person ends the sweep)."""
        if isinstance(result, SearchResult):
            self._auto_done(result)
            return
        plan = self.running
        if plan is None or not hasattr(result, "run_dir"):
            return
        self._current.run_dir = str(result.run_dir)
        plan.save()
        if result.status == "cancelled":
            self._done("stopped — Continue sweep trains the methods left")
            return
        self._next()

    def run_failed_to_start(self, error: BaseException) -> None:
        if self.auto_folder is not None:
            self.auto_folder = None
            self._enable(True)
            self.status.setText(f"The automatic search stopped: {getattr(error, 'message', error)}")
            self.refresh_list()
            return
        if self.running is not None:
            self._done(f"stopped: {getattr(error, 'message', error)}")

    def _done(self, how: str) -> None:
        plan = self.running
        self.running = None
        self.start_button.setEnabled(True)
        self.continue_button.setEnabled(True)
        if plan is not None:
            self.show_plan(plan)
            self.status.setText(f"Sweep {plan.name} {how}. Table: {plan.folder / 'sweep.csv'}")
            self.sweep_finished.emit(plan)

    # --- the automatic search --------------------------------------------------------------------
    def start_auto(self) -> None:
        if self.running is not None or self.auto_folder is not None:
            return
        try:
            budget = parse_budget(self.budget.text())
        except UserError as e:  # said beside the field, in the window's words (the engine's say --budget)
            self.status.setText(f"Budget: {e.what} — {e.fix}.")
            self.budget.setFocus()
            return
        try:
            spec = self.state.build_spec()
        except UserError as e:
            show_error(self, e)
            return
        name = f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        max_trials = self.max_trials

        def job(emit: Any, stop: Any) -> SearchResult:
            extra = {"max_trials": max_trials} if max_trials else {}
            return run_auto_search(spec, budget, emit, stop, name=name, **extra)

        self.auto_folder = Path(spec.output_dir).expanduser() / SWEEPS / name
        if self.start_job is None or not self.start_job(job, "searching"):
            self.auto_folder = None
            self.status.setText("A run is going: wait for it, or stop it, before an automatic search.")
            return
        self._enable(False)
        self.status.setText(f"Automatic search {name} for {format_seconds(budget)}: each trial shows on the Train "
                            "page; the table fills in as they end.")

    def job_events(self, events: list[Any]) -> None:
        """The search's trials start and end: show its table as it grows."""
        folder = self.auto_folder
        if folder is None or not any(isinstance(e, (Started, Finished)) for e in events):
            return
        if (folder / PLAN_FILE).exists():
            self.show_plan(load_sweep(folder))

    def _auto_done(self, result: SearchResult) -> None:
        self.auto_folder = None
        self._enable(True)
        self.refresh_list(select=result.folder)
        plan = load_sweep(result.folder)
        self.show_plan(plan)
        counts = {s: sum(1 for t in result.trials if t.status == s) for s in ("completed", "pruned", "stopped")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        how = {"completed": "finished", "cancelled": "was stopped", "failed": "failed"}[result.status]
        winner = f"winner: trial {result.best_trial}, best run {result.run_dir} (highlighted)" if result.run_dir else \
            f"no winner ({result.error})"
        self.sweep_finished.emit(plan)  # first: the Runs page refreshes this panel, which rewrites the status
        self.status.setText(f"Automatic search {result.folder.name} {how} in {format_seconds(result.seconds)}: "
                            f"{len(result.trials)} trials ({summary}); {winner}.")

    def _enable(self, on: bool) -> None:
        for button in (self.start_button, self.continue_button, self.auto_button):
            button.setEnabled(on)

    # --- showing ---------------------------------------------------------------------------------
    def refresh_list(self, select: Path | None = None) -> None:
        plans = list_sweeps(self.state.runs_dir)
        current = select or (self.plan.folder if self.plan else None)
        self.sweeps.blockSignals(True)
        self.sweeps.clear()
        for plan in plans:
            what = "trials" if plan.kind == "auto" else "methods"
            self.sweeps.addItem(f"{plan.name} ({len(plan.entries)} {what})", str(plan.folder))
        index = next((i for i, p in enumerate(plans) if current and p.folder == current), 0)
        self.sweeps.setCurrentIndex(index if plans else -1)
        self.sweeps.blockSignals(False)
        if plans and self.running is None and self.auto_folder is None:
            self.show_plan(plans[index])
        self.continue_button.setEnabled(bool(plans) and self.running is None and self.auto_folder is None)

    def _picked(self, index: int) -> None:
        folder = self.sweeps.itemData(index)
        if folder and self.running is None and self.auto_folder is None:
            self.show_plan(load_sweep(folder))

    def _rank_changed(self) -> None:
        if self.plan is not None:
            self.show_plan(self.plan)
        self._enable_evaluate()

    def _enable_evaluate(self) -> None:
        evaluated = METRICS[self.y_axis.currentData()].evaluated
        self.evaluate_button.setEnabled(self._evaluating is not None or (evaluated and self.plan is not None))

    def show_plan(self, plan: SweepPlan) -> None:
        self.plan = plan
        ranked_by = self.y_axis.currentData()
        self.rows = rank(sweep_rows(plan), ranked_by)
        self.table.setHorizontalHeaderLabels([title for _, title in TABLE] + [f"▼ {LABELS[ranked_by]}"])
        for key in ("peak_memory_bytes", "train_seconds"):  # the runs share this process: what that means
            self.table.horizontalHeaderItem([k for k, _ in TABLE].index(key)).setToolTip(PEAK_NOTE)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            best = bool(plan.best_run_dir) and row["run_dir"] == plan.best_run_dir
            for j, (key, _) in enumerate([*TABLE, (ranked_by, "")]):
                value = row.get(key) if key != "error" else row.get("error") or row.get("note")
                item = QTableWidgetItem(cell_text(key, value))
                if best:  # the automatic search's winner
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                    item.setBackground(QBrush(WINNER))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        if self.running is None and self.auto_folder is None and self._evaluating is None:
            self.status.setText(_summary(plan, self.rows))
        self._enable_evaluate()
        self.draw_scatter()

    # --- evaluating the runs to rank them --------------------------------------------------------
    def evaluate_runs(self) -> None:
        """Evaluate the shown sweep's finished runs for the picked quality; pressed again, stop."""
        if self._evaluating is not None:
            self._evaluating.set()
            self.evaluate_button.setEnabled(False)
            return
        if self.plan is None:
            return
        plan, key, stop = self.plan, self.y_axis.currentData(), threading.Event()
        self._evaluating = stop
        self.evaluate_button.setText("Stop evaluating")
        self.status.setText(f"Evaluating the runs of {plan.name} to rank them by {LABELS[key]}…")

        def job() -> Any:
            runs = [e.run_dir for e in plan.entries if e.run_dir]
            for run_dir in runs:
                if not stop.is_set():
                    yield f"Evaluating {Path(run_dir).name} to rank by {LABELS[key]}…"
                    # The no-training baselines are scored once, with the first run evaluated.
                    evaluate_for_ranking([run_dir], key, None, stop, baselines=not baseline_rows(runs))
            plan.save()  # the table file gets the scores
            return plan

        self._evaluator = run_in_background(job, on_result=self._evaluated, on_error=self._evaluation_failed,
                                            on_yield=self.status.setText)  # fmt: skip

    def _evaluation_ended(self) -> None:
        self._evaluating = None
        self.evaluate_button.setText("Evaluate runs")

    def _evaluated(self, plan: SweepPlan) -> None:
        stopped = self._evaluating is not None and self._evaluating.is_set()
        self._evaluation_ended()
        self.show_plan(load_sweep(plan.folder))
        if stopped:
            self.status.setText("Evaluation stopped: the runs evaluated so far are ranked.")

    def _evaluation_failed(self, error: BaseException) -> None:
        self._evaluation_ended()
        self._enable_evaluate()
        show_error(self, error)

    def draw_scatter(self) -> None:
        x_key, y_key = self.x_axis.currentData(), self.y_axis.currentData()
        plot = self.scatter.getPlotItem()
        plot.clear()
        log_x = x_key in LOG_AXES
        plot.setLogMode(x=log_x, y=False)
        plot.setLabel("bottom", LABELS[x_key])
        plot.setLabel("left", LABELS[y_key])
        for row in self.rows:  # no training, no cost to place it at: a level to beat
            if row["status"] == "baseline" and row.get(y_key) is not None:
                # The label starts at the line's left end (centred there, its first half was cut off), light on
                # the dark plot.
                line = pg.InfiniteLine(pos=row[y_key], angle=0, pen=pg.mkPen("#888", style=Qt.PenStyle.DashLine),
                                       label=row["method"], labelOpts={"position": 0.02, "color": "#bbb",
                                                                       "anchors": [(0, 1), (0, 1)]})  # fmt: skip
                plot.addItem(line)
        points = [(r, r.get(x_key), r.get(y_key)) for r in self.rows if r["status"] != "baseline"]
        points = [(r, x, y) for r, x, y in points if x is not None and y is not None and (x > 0 or not log_x)]
        best = self.plan.best_run_dir if self.plan else None
        higher = METRICS[y_key].higher_is_better
        ranked = sorted(points, key=lambda p: p[2], reverse=higher)
        named = {id(r) for r, _, _ in ranked[:LABELLED_POINTS]} | {id(r) for r, _, _ in points if r["run_dir"] == best}
        for i, (row, x, y) in enumerate(points):
            color = PALETTE[i % len(PALETTE)]
            name = f"{row['method']} ({row['trial']})" if row.get("trial") else row["method"]
            winner = bool(best) and row["run_dir"] == best
            # PlotDataItem, not ScatterPlotItem: only the former follows the plot's log mode.
            item = plot.plot([x], [y], pen=None, symbol="star" if winner else "o", symbolSize=18 if winner else 11,
                             symbolBrush=color, symbolPen="k", name=name)
            item.setToolTip(f"{name}: {LABELS[x_key]} {cell_text(x_key, x)}, {LABELS[y_key]} {y:.4g}")
            if id(row) in named:
                label = pg.TextItem(name, anchor=(0, 1), color=color)
                label.setPos(math.log10(x) if log_x else x, y)  # TextItem positions are in the log view's units
                plot.addItem(label)
        if not points:
            where = "press Evaluate runs" if METRICS[y_key].evaluated else "it comes from the runs' evaluations"
            plot.setTitle(f"no {LABELS[y_key]} yet: {where}", size="9pt")
            plot.enableAutoRange()
            return
        plot.setTitle(f"{LABELS[y_key]}: {'higher' if higher else 'lower'} is better", size="9pt")
        levels = [row[y_key] for row in self.rows if row["status"] == "baseline" and row.get(y_key) is not None]
        _fit_range(plot, [math.log10(x) if log_x else x for _, x, _ in points], [y for *_, y in points] + levels)

    def csv_text(self) -> str:
        return rows_to_csv(self.rows)

    def save_csv(self, path: str | None = None) -> None:
        if self.plan is None:
            return
        default = str(self.plan.folder / "sweep.csv")
        path = path or QFileDialog.getSaveFileName(self, "Save sweep table", default, "CSV (*.csv)")[0]
        if path:
            Path(path).write_text(self.csv_text(), encoding="utf-8")


def _fit_range(plot: pg.PlotItem, xs: list[float], ys: list[float]) -> None:
    """Every point inside the plot with room right of it and above it for its name (auto range fitted the
    points alone: the rightmost sat on the edge, its symbol and name cut off). `xs` in the view's units."""
    width = (max(xs) - min(xs)) or abs(xs[0]) * 0.2 or 1.0
    height = (max(ys) - min(ys)) or abs(ys[0]) * 0.1 or 1.0
    plot.setXRange(min(xs) - 0.1 * width, max(xs) + 0.5 * width, padding=0)
    plot.setYRange(min(ys) - 0.1 * height, max(ys) + 0.2 * height, padding=0)
