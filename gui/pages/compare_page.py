"""Compare methods before training: trainable parameters, adapter size and the memory of a step,
side by side for the chosen model, with the device's memory marked so "fits" is seen at a glance (the chart
itself: gui.cost_chart).

Estimates come from `adapter_studio.engine.estimate.costs` (meta-device models, no weights) on a worker thread; edits
are debounced and only the newest request's answer is shown."""

from __future__ import annotations

import csv
import functools
import html
import io
import json
import re
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from adapter_studio.engine.estimate.baselines import BASELINES
from adapter_studio.engine.estimate.baselines import TITLES as BASELINE_TITLES
from adapter_studio.engine.methods import METHOD_CLASSES, METHODS
from adapter_studio.gui.cost_chart import HIGHLIGHT, ROW_PX, CostChart, has_numbers
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.pages.model_page import human_bytes
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import qdebounced

# "fits" beside the memory, before the family: at 1,280 px the last columns sit behind a scroll bar.
ADAPTER_SIZE_TIP = ("The trained weights' file (safetensors). An export adds the tokenizer's files (a few MiB) and a "
                    "README; a merged export is the whole model's size.")
COLUMNS = ("method", "trainable", "share %", "adapter size", "memory total", "fits", "mergeable", "family")
MAX_COLUMN_PX = 260
FIRST_DRAW_S = 0.05  # the chart's redraw takes ~20 ms; computing beside it would double that
TRAINING_KEYS = ("batch_size", "gradient_checkpointing", "optimizer", "precision", "devices", "distributed")
# Ticked at first: the library people compare (LoRA and its variants, bottleneck adapters, soft prompts,
# IA3, BitFit, last layers, full fine-tuning). All 50 rows are 650 px of chart, past the fold of any window,
# axes and legend included; the rest are a tick (or "All") away.
COMMON = ("lora", "dora", "rslora", "loraplus", "adalora", "adapter_h", "adapter_p", "parallel_adapter",
          "prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "llama_adapter", "ia3", "bitfit",
          "last_layers", "full")  # fmt: skip
_WHERE = re.compile(r"^[a-z_]+(?:\.[a-z_]+)+: ")  # a spec field's path leading a message ("method.runs: ")


def step_length(state: Any) -> tuple[int, str] | None:
    """Tokens per row in the longest training step, from the Data page's counts, with what it is; None
    until the data is measured. Batches are padded to their longest row, so the step holding the longest
    row is the peak: estimating every row at max length read 6.4 GiB for a demo run that peaked at
    2.3 GiB (issue 26)."""
    stats = state.measured_lengths()
    if not stats or not stats["lengths"]:
        return None
    limit = stats["max_length"]
    if stats["format"] == "text" or (state.data.packing and stats["packing_applies"]):
        return limit, f"packed rows fill max length {limit}"
    if stats["format"] in ("preference", "kto"):  # a step's rows are a pair's sides (or answers), not pairs
        return min(stats["longest_row"], limit), "the data's longest answer with its prompt"
    longest = min(max(stats["lengths"]), limit)
    return longest, "the data's longest row"


def labelled_share(state: Any) -> float | None:
    """The share of training tokens that carry a loss, from the Data page's counts; None until measured
    (the estimate then projects every position through the output head, the upper bound)."""
    stats = state.measured_lengths()
    return stats.get("labelled_share") if stats else None


def step_rows(assumed: dict[str, Any]) -> str:
    """A step's batch as the memory estimate counts it: rows, or a preference objective's pairs (or KTO's
    answers), two rows each."""
    batch, rows = assumed["batch_size"], assumed.get("rows_per_step", assumed["batch_size"])
    if rows == batch:
        return f"{batch} rows"
    if assumed.get("objective") == "kto":
        return f"{batch} answers ({rows} rows: each beside a mismatched one for KTO's KL estimate)"
    return f"{batch} pairs ({rows} rows: chosen and rejected; a bound, as each prompt is read once for both)"


def cost_overrides(state: Any) -> list[str]:
    """`--set` items that carry the window's current choices into every method's estimate."""
    items = [
        f"training.{key}={getattr(state.training, key)}"
        for key in TRAINING_KEYS
        if getattr(state.training, key) is not None
    ]
    measured = step_length(state)
    if measured is not None:  # the estimate's sequence length is data.max_length
        items.append(f"data.max_length={max(measured[0], 8)}")
    elif state.data is not None and state.data.max_length:
        items.append(f"data.max_length={state.data.max_length}")
    if state.model is not None:
        items += [f"model.quantization={state.model.quantization}", f"model.dtype={state.model.dtype}"]
    if state.objective.name != "sft":  # a preference step holds two rows a pair, and maybe a frozen copy
        items.append(f"objective.name={state.objective.name}")
    if state.data_tasks:  # Poly's router has a weight per task and skill: count the data's tasks
        items.append(f"method.tasks={json.dumps(state.data_tasks)}")
    defaults = type(state.method).model_fields
    for field, value in state.method.model_dump().items():
        # Scalar settings the person changed on the chosen method (a rank, a reduction factor, a prompt length)
        # apply to every method that has them; untouched ones and lists (target modules) stay each method's own
        # default. LoRA's untouched r of 8 gave VeRA (256 of its own) a rank of 8, and VeRA picked gave LoRA 256.
        changed = field in defaults and value != defaults[field].default
        if field != "name" and changed and isinstance(value, (int, float, bool, str)):
            items.append(f"method.{field}={value}")
    return items


def estimate_rows(source: str, overrides: list[str], current: Any, share: float | None = None,
                  labels: int | None = None) -> Generator[list[dict[str, Any]], None, list]:
    """Every method with the shared settings, and the chosen method exactly as configured.

    Yields at once what is known without applying a method again (the chosen method, and every method
    whose structure is cached: batch, length, precision and optimizer edits only change arithmetic),
    with `pending` rows for the rest; then fills those in one by one (yielding an empty list between
    them, where a newer request can stop this one) and yields the complete table. `share` and `labels` are
    the data's (the tokens that carry a loss; a classifier's labels)."""
    from adapter_studio.engine.estimate.table import estimate_table as table

    estimate_table = functools.partial(table, labelled_share=share, num_labels=labels)

    exact_overrides = [
        *overrides,
        *[
            f"method.{k}={','.join(v) if isinstance(v, list) else v}"
            for k, v in current.model_dump().items()
            if k != "name" and isinstance(v, list) and v
        ],
    ]
    exact = estimate_table(source, current.name, _own(exact_overrides, current.name))[0]
    rows = [exact if r["method"] == current.name else r for r in estimate_table(source, "all", overrides,
                                                                                 cached_only=True)]  # fmt: skip
    # The baseline that fits the model's task (in-context examples for a text generator, frozen features
    # for a classifier) closes the list; it has none of the methods' fields.
    plain = [o for o in overrides if not o.startswith("method.")]
    rows += [r for r in estimate_table(source, ",".join(BASELINES), plain) if "error" not in r]
    yield list(rows)  # a copy: the list is filled in further while the window reads this one
    pending = [i for i, r in enumerate(rows) if r.get("pending")]
    if not pending:
        return rows
    # Let the window draw the first answer before taking the interpreter lock for the rest.
    time.sleep(FIRST_DRAW_S)
    for i in pending:
        yield []  # a pause where a newer request can stop this one
        name = rows[i]["method"]
        rows[i] = estimate_table(source, name, _own(overrides, name))[0]
    yield rows
    return rows


def _own(overrides: list[str], name: str) -> list[str]:
    """The overrides that apply to one method: every non-method item, and the method fields it has."""
    fields = METHODS[name].model_fields
    return [o for o in overrides if not o.startswith("method.") or o[7:].split("=", 1)[0] in fields]


class ComparePage(Page):
    title = "Compare"
    hint = (
        "What each method costs on this model before anything is loaded: trainable parameters, adapter "
        "size, and the memory of a training step against your device's memory."
    )

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        split = QSplitter(Qt.Orientation.Horizontal)
        self.ticks = QListWidget()
        self.ticks.setObjectName("compareMethods")
        self.ticks.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.ticks.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        names = [(cls.title, cls.model_fields["name"].default) for cls in METHOD_CLASSES]
        for title, name in [*names, *((BASELINE_TITLES[b], b) for b in BASELINES)]:
            item = QListWidgetItem(title)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(title)  # cut at the list's width
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
            self.ticks.addItem(item)
        self.tick(COMMON)
        self.ticks.itemChanged.connect(lambda _i: self.redraw())
        picker = QWidget()
        picker.setMaximumWidth(240)
        picker.setMinimumWidth(140)  # titles are cut (their tooltips are whole) before the chart is
        picker_column = QVBoxLayout(picker)
        picker_column.setContentsMargins(0, 0, 0, 0)
        picker_column.addWidget(self.ticks, 1)
        tick_row = QHBoxLayout()
        for text, names_ in (("Common", COMMON), ("All", None)):
            button = QPushButton(text)
            button.setObjectName(f"tick{text}")
            button.setToolTip("Chart the common methods" if names_ else "Chart every method in the library")
            button.clicked.connect(lambda _=False, n=names_: (self.tick(n), self.redraw()))
            tick_row.addWidget(button)
        picker_column.addLayout(tick_row)
        self.charted = wrapped_label("chartedCount")
        picker_column.addWidget(self.charted)
        split.addWidget(picker)
        right = QWidget()
        column = QVBoxLayout(right)
        column.setContentsMargins(0, 0, 0, 0)
        self.status = wrapped_label("compareStatus", "Pick a model to compare methods.")
        column.addWidget(self.status)
        # When the chosen method's step does not fit: the change that makes it fit, and a button to make it.
        advice_row = QHBoxLayout()
        self.fit_note = wrapped_label("fitAdvice")
        self.fit_apply = QPushButton("Apply")
        self.fit_apply.setObjectName("applyFit")
        self.fit_apply.clicked.connect(self.apply_fit)
        self.fit_apply.hide()
        advice_row.addWidget(self.fit_note, 1)
        advice_row.addWidget(self.fit_apply)
        column.addLayout(advice_row)
        self.fit_changes: dict[str, Any] | None = None
        self._advised = 0  # the request whose advice was asked for
        self.chart = CostChart()
        self.chart.setObjectName("costChart")
        # What the memory bars assume, and why a method is missing from the bars (kept off the chart).
        self.notes = wrapped_label("compareNotes")
        self.notes.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        chart_box = QWidget()
        chart_column = QVBoxLayout(chart_box)
        chart_column.setContentsMargins(0, 0, 0, 0)
        # The chart keeps 13 px a row (47 methods: 750 px); in a shorter window it scrolls, instead of
        # making the window taller than the screen (1,089 px at 1400 × 900) and running over the notes.
        self.chart_scroll = chart_scroll = QScrollArea()
        chart_scroll.setWidget(self.chart)
        chart_scroll.setWidgetResizable(True)
        chart_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        chart_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        chart_column.addWidget(chart_scroll, 1)
        chart_column.addWidget(self.notes)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("costTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        # An export is bigger than this (9.4 MiB here, 12.7 MiB exported): it also holds the tokenizer and a README.
        self.table.horizontalHeaderItem(COLUMNS.index("adapter size")).setToolTip(ADAPTER_SIZE_TIP)
        self.table.setMinimumHeight(130)  # the header and three rows
        below = QSplitter(Qt.Orientation.Vertical)  # the chart keeps the room its rows need; the table the rest
        below.addWidget(chart_box)
        below.addWidget(self.table)
        below.setStretchFactor(0, 4)  # the chart first: the table is the same numbers, for reading one
        below.setStretchFactor(1, 1)
        below.setChildrenCollapsible(False)
        column.addWidget(below, 1)
        buttons = QHBoxLayout()
        for text, slot in (
            ("Copy table", self.copy_table),
            ("Save CSV…", self.save_csv),
            ("Save chart PNG…", self.save_png),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch()
        column.addLayout(buttons)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([190, 900])  # at 1,024 px the list at its widest cut the memory chart off
        self.layout_.addWidget(split, 1)
        self.rows: list[dict[str, Any]] = []
        self._scrolled_to: str | None = None  # the method last scrolled into view
        self.device_memory: int | None = None
        self._request = 0
        self._workers: dict[int, Any] = {}
        for signal in (
            state.model_described,
            state.method_changed,
            state.objective_changed,
            state.training_changed,
            state.spec_edited,
            state.data_changed,
            state.data_measured,
        ):
            signal.connect(self.request)
        state.method_changed.connect(self._tick_chosen)

    def tick(self, names: tuple[str, ...] | None) -> None:
        """Tick `names` (None: every method), the no-training baselines and the chosen method; untick the rest."""
        self.ticks.blockSignals(True)
        for i in range(self.ticks.count()):
            item = self.ticks.item(i)
            name = item.data(Qt.ItemDataRole.UserRole)
            wanted = names is None or name in names or name in BASELINES or name == self.state.method.name
            item.setCheckState(Qt.CheckState.Checked if wanted else Qt.CheckState.Unchecked)
        self.ticks.blockSignals(False)

    def _tick_chosen(self) -> None:
        """The method picked on the Method page is charted, however the list was ticked."""
        for i in range(self.ticks.count()):
            item = self.ticks.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == self.state.method.name:
                item.setCheckState(Qt.CheckState.Checked)  # redraws

    def on_shown(self) -> None:
        if not self.rows:
            self.request()

    @qdebounced(timeout=30)  # coalesces a burst of edits (typing "128"); the chart should follow within 200 ms
    def request(self) -> None:
        """Recompute off the main thread; a newer request stops older ones and makes their answers stale."""
        if self.state.model is None:
            return
        for worker in self._workers.values():
            worker.quit()  # stops at its next method
        self._request += 1
        number = self._request
        self.status.setText("Estimating…")
        source = self.state.model.source
        overrides = cost_overrides(self.state)
        method = self.state.method
        worker = run_in_background(
            estimate_rows,
            source,
            overrides,
            method,
            labelled_share(self.state),
            self.state.data_labels,
            on_yield=lambda rows, n=number: self._show(rows, n),
            on_result=lambda _r: None,
            on_error=lambda e, n=number: self._failed(e, n),
        )
        self._workers[number] = worker
        worker.finished.connect(lambda n=number: self._workers.pop(n, None))  # also after quit()

    def _failed(self, error: BaseException, number: int) -> None:
        self._workers.pop(number, None)
        if number == self._request:
            self.status.setText(f"<span style='color:#c00'>Cannot estimate: {getattr(error, 'message', error)}</span>")

    def _show(self, rows: list[dict[str, Any]], number: int) -> None:
        if not rows or number != self._request:
            return  # a pause between methods, or an older request's answer
        updating = sum(1 for r in rows if r.get("pending"))
        previous = {r["method"]: r for r in self.rows if not r.get("pending")}
        # Until a method is recomputed, its last answer stays on the chart rather than a gap.
        rows = [{**previous[r["method"]], "stale": True} if r.get("pending") and r["method"] in previous else r
                for r in rows]
        self.rows = rows
        # Only the baseline that fits the model's task has a row: the other one's tick would tick nothing.
        present = {r["method"] for r in rows}
        for i in range(self.ticks.count()):
            item = self.ticks.item(i)
            name = item.data(Qt.ItemDataRole.UserRole)
            item.setHidden(name in BASELINES and name not in present)
        # Each process's memory: its share where several CPU processes share one machine (the engine's).
        self.device_memory = next((r["device_memory_bytes"] for r in rows if r.get("device_memory_bytes")), None)
        shared_by = next((r["memory_shared_by"] for r in rows if r.get("memory_shared_by")), None)
        current = next((r for r in rows if r["method"] == self.state.method.name), None)
        self.state.last_estimate = current
        self.redraw()
        self._advise(current, number)
        where = f"against {human_bytes(self.device_memory)} of device memory" if self.device_memory else ""
        if shared_by and self.device_memory:
            whole = human_bytes(self.device_memory * shared_by)
            where = f"against {human_bytes(self.device_memory)} each ({whole} shared by {shared_by})"
        progress = f" Updating {updating} more…" if updating else ""
        t = self.state.training
        devices = f" Memory is per process: {t.devices} processes ({t.distributed})." if t.devices > 1 else ""
        self.status.setText(
            f"{sum(not r.get('baseline') for r in rows)} methods and the no-training baseline on "
            f"{self.state.model.source} {where}. The chosen method is "
            "highlighted, as you set it; the others keep their own defaults, but for the settings you changed "
            "(a rank, a batch, a length)."
            f"{devices}{progress}"
        )

    def _advise(self, current: dict[str, Any] | None, number: int) -> None:
        """Ask, off the main thread, what makes the chosen method fit when it does not (engine.estimate.fit)."""
        if not current or current.get("fits") is not False or current.get("stale") or current.get("pending"):
            self._show_advice(None, number)
            return
        if self._advised == number:
            return  # asked already for this request (the rows arrive in several parts)
        self._advised = number
        from adapter_studio.engine.estimate.fit import fit_advice
        from adapter_studio.engine.spec import DataSpec, RunSpec

        s = self.state
        spec = RunSpec(model=s.model, data=s.data or DataSpec(path="-"), method=s.method, objective=s.objective,
                       training=s.training)
        measured = step_length(s)
        run_in_background(fit_advice, spec, measured[0] if measured else None, labelled_share(s),
                          on_result=lambda advice, n=number: self._show_advice(advice, n),
                          on_error=lambda _e, n=number: self._show_advice(None, n))  # fmt: skip

    def _show_advice(self, advice: Any, number: int) -> None:
        if number != self._request:
            return  # an older request's answer
        self.fit_changes = advice.changes if advice is not None else None
        self.fit_apply.setVisible(bool(self.fit_changes))
        if advice is None or advice.changes == {}:
            self.fit_note.setText("")
            return
        from adapter_studio.engine.estimate.fit import describe

        row = self.state.last_estimate or {}
        need = human_bytes(row.get("memory_bytes", {}).get("total", advice.needed))
        told = (f"<span style='color:#c00'><b>{html.escape(row.get('title') or self.state.method.name)} does not "
                f"fit</b></span>: a step needs about {need} of {human_bytes(advice.available)}.")  # fmt: skip
        if advice.changes:
            told += (f" It fits with <b>{html.escape(describe(advice.changes))}"
                     f"</b>: about {human_bytes(advice.needed)}.")  # fmt: skip
        else:
            told += f" {html.escape(advice.text[0].upper() + advice.text[1:])}."
        self.fit_note.setText(told)

    def apply_fit(self) -> None:
        """Make the advised change on the pages it belongs to (the estimate follows)."""
        if self.fit_changes:
            self.state.apply_changes(self.fit_changes)

    def notes_text(self, rows: list[dict[str, Any]]) -> str:
        """Under the chart: what one step's memory assumes, and each method that cannot run here and why."""
        lines = []
        problem = self.state.objective_problem()  # the estimates below assume the objective's own batches
        if problem:
            lines.append(f"<span style='color:#c00'><b>Cannot train:</b> {html.escape(problem)} on the Method "
                         "page.</span>")
        assumed = next((r["assumptions"] for r in rows if "assumptions" in r), None)
        if assumed is not None:
            measured = step_length(self.state)
            batch, tokens = step_rows(assumed), assumed["seq_len"]
            if measured is not None:
                lines.append(
                    f"Memory: the peak step, {batch} × {tokens} tokens: {measured[1]} (each batch is "
                    "padded to its longest row)."
                )
                share = assumed.get("labelled_share")
                if share is not None:
                    lines.append(f"The output layer scores only the {100 * share:.0f}% of tokens that carry a loss "
                                 "(the answers), where the method lets it.")
            else:
                lines.append(
                    f"Memory: worst case, {batch} × {tokens} tokens (every row at the full length). "
                    "Once the Data page has counted the tokens, the data's longest row is used."
                )
        copies = [r for r in rows if r.get("assumptions", {}).get("reference_copy_bytes")]
        if copies:
            from adapter_studio.engine.objectives import OBJECTIVES

            named = ", ".join(html.escape(r["title"]) for r in copies[:3])
            named += f" and {len(copies) - 3} more" if len(copies) > 3 else ""
            first = copies[0]
            lines.append(f"{OBJECTIVES[first['assumptions']['objective']].title} compares with the model before "
                         f"training: methods that change the base weights ({named}) keep a frozen copy of it, counted "
                         f"in their weights ({human_bytes(first['assumptions']['reference_copy_bytes'])} for "
                         f"{html.escape(first['title'])}); the others switch their adapter off.")  # fmt: skip
        for r in rows:
            if r.get("baseline") and has_numbers(r):
                lines.append(f"<b>{html.escape(r['title'])}</b>: the memory of evaluating with it, batch "
                             f"{r['assumptions']['batch_size']}, not a training step; {html.escape(r['note'])}.")
        refused = [r for r in rows if "error" in r]
        if refused:
            reasons = "<br>".join(
                f"<b>{html.escape(r.get('title', r['method']))}</b>: {html.escape(_WHERE.sub('', r['error']))}"
                for r in refused
            )
            lines.append(f"Not available with this model and these settings: {reasons}")
        return "<br>".join(lines)

    def complete(self) -> bool:
        """Every method's answer is in and current."""
        return bool(self.rows) and not any(r.get("pending") or r.get("stale") for r in self.rows)

    def visible_rows(self) -> list[dict[str, Any]]:
        chosen = {
            self.ticks.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.ticks.count())
            if self.ticks.item(i).checkState() == Qt.CheckState.Checked
        }
        return [r for r in self.rows if r["method"] in chosen]

    def redraw(self) -> None:
        rows = self.visible_rows()
        methods = [r for r in self.rows if not r.get("baseline")]
        self.charted.setText(f"Charted: {sum(not r.get('baseline') for r in rows)} of {len(methods)} methods"
                             if methods else "")  # fmt: skip
        self.chart.show_rows(rows, self.state.method.name, self.device_memory)
        self.notes.setText(self.notes_text(rows))
        self.table.setUpdatesEnabled(False)  # one repaint for the whole table, not one per cell
        self.table.setRowCount(len(rows))
        highlight, plain = pg.mkBrush(HIGHLIGHT), QBrush()
        on_highlight = QBrush(QColor("#111"))  # the dark theme's light text vanished on the orange
        for i, r in enumerate(rows):
            chosen = r["method"] == self.state.method.name
            background = highlight if chosen else plain
            for j, value in enumerate(self._cells(r)):
                item = self.table.item(i, j)
                if item is None:
                    item = QTableWidgetItem()
                    self.table.setItem(i, j, item)
                item.setText(value)
                item.setToolTip(value if len(value) > 30 else "")  # a refusal's reason, cut by the column
                item.setBackground(background)
                item.setData(Qt.ItemDataRole.ForegroundRole, on_highlight if chosen else None)  # None: the theme's
        self.table.resizeColumnsToContents()
        for column in range(self.table.columnCount()):
            # A refusal's long reason would widen its column past the window and push the others out.
            self.table.setColumnWidth(column, min(self.table.columnWidth(column), MAX_COLUMN_PX))
        self.table.setUpdatesEnabled(True)
        self._bring_chosen_into_view(rows)

    def _bring_chosen_into_view(self, rows: list[dict[str, Any]]) -> None:
        """The highlighted row in sight in the chart and the table (full fine-tuning sits below the fold), once
        for each method picked: redraws as estimates stream in must not pull back a person who scrolls."""
        chosen = next((i for i, r in enumerate(rows) if r["method"] == self.state.method.name), None)
        if chosen is None or self._scrolled_to == self.state.method.name:
            return
        self._scrolled_to = self.state.method.name
        self.table.scrollToItem(self.table.item(chosen, 0))
        self.chart_scroll.ensureVisible(0, self.chart.row_top(chosen), 0, 3 * ROW_PX)

    def _cells(self, r: dict[str, Any]) -> list[str]:
        if not has_numbers(r):
            note = _WHERE.sub("", r.get("error", "estimating…"))
            return [r.get("title", r["method"]), "—", "—", "—", "—", note, "", r.get("family", "")]
        total = r["memory_bytes"]["total"]
        fits = "—" if "fits" not in r else ("yes" if r["fits"] else "NO")  # the engine's (CPU processes share RAM)
        return [
            r.get("title", r["method"]),
            f"{r['trainable_params']:,}",
            f"{100 * r['trainable_share']:.4g}",
            human_bytes(r["adapter_bytes"]),
            f"{total / 2**30:.2f} GiB",  # one unit down the column (1009.0 MiB sat above 1.3 GiB)
            fits,
            "—" if r.get("baseline") else "yes" if r.get("mergeable") else "no",
            r.get("family", ""),
        ]

    def table_text(self, delimiter: str) -> str:
        out = io.StringIO()
        writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in self.visible_rows():
            writer.writerow(self._cells(r))
        return out.getvalue()

    def copy_table(self) -> None:
        QApplication.clipboard().setText(self.table_text("\t"))

    def save_csv(self, path: str | None = None) -> None:
        path = path or QFileDialog.getSaveFileName(self, "Save table", "method-costs.csv", "CSV (*.csv)")[0]
        if path:
            Path(path).write_text(self.table_text(","), encoding="utf-8")

    def save_png(self, path: str | None = None) -> None:
        path = path or QFileDialog.getSaveFileName(self, "Save chart", "method-costs.png", "PNG (*.png)")[0]
        if path:
            self.chart.grab().save(path)
