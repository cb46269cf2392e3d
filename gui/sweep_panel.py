"""The method sweep on the Runs page: tick methods, train them one after another through the Train
page (so each is watched live like any run), then one table and one scatter chart of quality against
cost. The engine side (plan, rows, CSV) is `engine.training.sweep`; this module only drives and draws it."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from adapter_studio.engine.methods import METHOD_CLASSES
from adapter_studio.engine.training.sweep import (
    COSTS,
    QUALITY,
    SweepPlan,
    list_sweeps,
    load_sweep,
    plan_sweep,
    rows_to_csv,
    sweep_rows,
)
from adapter_studio.gui.dialogs import show_error
from adapter_studio.gui.pages.model_page import human_bytes, human_count
from adapter_studio.gui.plots import PALETTE
from adapter_studio.gui.state import StudioState
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
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
    "final_eval_loss": "final eval loss", "best_eval_loss": "best eval loss", "accuracy": "accuracy",
    "exact_match": "exact match", "final_loss": "final training loss",
}  # fmt: skip
TABLE = (("method", "Method"), ("status", "Status"), ("trainable_params", "Trainable"),
         ("adapter_bytes", "Adapter"), ("peak_memory_bytes", "Peak memory"), ("train_seconds", "Time"),
         ("tokens_per_s", "Tokens/s"), ("final_eval_loss", "Eval loss"), ("best_eval_loss", "Best eval"),
         ("accuracy", "Accuracy"), ("exact_match", "Exact match"), ("error", "Note"))  # fmt: skip
LOG_AXES = ("trainable_params", "adapter_bytes")


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
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class SweepPanel(QWidget):
    """Plan, run and show method sweeps. `start_run(spec)` starts one run on the Train page;
    `run_finished` must be connected to the Train page's RunResult signal."""

    sweep_finished = Signal(object)  # the SweepPlan, when its last method has run (or it was stopped)

    def __init__(self, state: StudioState, start_run: Callable[[Any], None]) -> None:
        super().__init__()
        self.state = state
        self.start_run = start_run
        self.plan: SweepPlan | None = None  # shown
        self.running: SweepPlan | None = None  # being run
        self.rows: list[dict[str, Any]] = []

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

        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Sweep"))
        self.sweeps = QComboBox()
        self.sweeps.setObjectName("sweepChoice")
        self.sweeps.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.sweeps.currentIndexChanged.connect(self._picked)
        top.addWidget(self.sweeps, 1)
        top.addWidget(QLabel("quality"))
        self.y_axis = QComboBox()
        self.y_axis.setObjectName("sweepY")
        for key in QUALITY:
            self.y_axis.addItem(LABELS[key], key)
        top.addWidget(self.y_axis)
        top.addWidget(QLabel("against"))
        self.x_axis = QComboBox()
        self.x_axis.setObjectName("sweepX")
        for key in COSTS:
            self.x_axis.addItem(LABELS[key], key)
        top.addWidget(self.x_axis)
        save = QPushButton("Save CSV…")
        save.setObjectName("saveSweepCsv")
        save.clicked.connect(lambda: self.save_csv())
        top.addWidget(save)
        column.addLayout(top)
        self.status = QLabel("No sweep yet: tick methods and start one.")
        self.status.setObjectName("sweepStatus")
        self.status.setWordWrap(True)
        column.addWidget(self.status)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.table = QTableWidget(0, len(TABLE))
        self.table.setObjectName("sweepTable")
        self.table.setHorizontalHeaderLabels([title for _, title in TABLE])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        split.addWidget(self.table)
        self.scatter = pg.PlotWidget()
        self.scatter.setObjectName("sweepScatter")
        self.scatter.showGrid(x=True, y=True, alpha=0.25)
        split.addWidget(self.scatter)
        split.setSizes([520, 380])
        column.addWidget(split, 1)
        for combo in (self.x_axis, self.y_axis):
            combo.currentIndexChanged.connect(self.draw_scatter)

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
        if self.running is not None:
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

    # --- showing ---------------------------------------------------------------------------------
    def refresh_list(self, select: Path | None = None) -> None:
        plans = list_sweeps(self.state.runs_dir)
        current = select or (self.plan.folder if self.plan else None)
        self.sweeps.blockSignals(True)
        self.sweeps.clear()
        for plan in plans:
            self.sweeps.addItem(f"{plan.name} ({len(plan.entries)} methods)", str(plan.folder))
        index = next((i for i, p in enumerate(plans) if current and p.folder == current), 0)
        self.sweeps.setCurrentIndex(index if plans else -1)
        self.sweeps.blockSignals(False)
        if plans and self.running is None:
            self.show_plan(plans[index])
        self.continue_button.setEnabled(bool(plans) and self.running is None)

    def _picked(self, index: int) -> None:
        folder = self.sweeps.itemData(index)
        if folder and self.running is None:
            self.show_plan(load_sweep(folder))

    def show_plan(self, plan: SweepPlan) -> None:
        self.plan = plan
        self.rows = sweep_rows(plan)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            for j, (key, _) in enumerate(TABLE):
                self.table.setItem(i, j, QTableWidgetItem(cell_text(key, row.get(key))))
        self.table.resizeColumnsToContents()
        if self.running is None:
            ran = sum(1 for r in self.rows if r["status"] not in ("pending", "refused"))
            self.status.setText(f"Sweep {plan.name}: {ran} of {len(self.rows)} methods trained.")
        self.draw_scatter()

    def draw_scatter(self) -> None:
        x_key, y_key = self.x_axis.currentData(), self.y_axis.currentData()
        plot = self.scatter.getPlotItem()
        plot.clear()
        log_x = x_key in LOG_AXES
        plot.setLogMode(x=log_x, y=False)
        plot.setLabel("bottom", LABELS[x_key])
        plot.setLabel("left", LABELS[y_key])
        points = [(r, r.get(x_key), r.get(y_key)) for r in self.rows]
        points = [(r, x, y) for r, x, y in points if x is not None and y is not None and (x > 0 or not log_x)]
        for i, (row, x, y) in enumerate(points):
            color = PALETTE[i % len(PALETTE)]
            # PlotDataItem, not ScatterPlotItem: only the former follows the plot's log mode.
            plot.plot([x], [y], pen=None, symbol="o", symbolSize=11, symbolBrush=color, symbolPen="k",
                      name=row["method"])
            label = pg.TextItem(row["method"], anchor=(0, 1), color=color)
            label.setPos(math.log10(x) if log_x else x, y)  # TextItem positions are in the log view's units
            plot.addItem(label)
        if not points:
            plot.setTitle(f"no {LABELS[y_key]} yet: it comes from the runs' evaluations", size="9pt")
        else:
            better = "higher" if y_key in ("accuracy", "exact_match") else "lower"
            plot.setTitle(f"{LABELS[y_key]}: {better} is better", size="9pt")
        plot.enableAutoRange()

    def csv_text(self) -> str:
        return rows_to_csv(self.rows)

    def save_csv(self, path: str | None = None) -> None:
        if self.plan is None:
            return
        default = str(self.plan.folder / "sweep.csv")
        path = path or QFileDialog.getSaveFileName(self, "Save sweep table", default, "CSV (*.csv)")[0]
        if path:
            Path(path).write_text(self.csv_text(), encoding="utf-8")
