"""Step 2: pick the data, see its shape, map its columns, and see exactly what trains.

Everything slow (reading, checking, tokenising, counting lengths) runs off the main thread through
`run_in_background`; the results come back as plain values from the engine.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
import shiboken6
from adapter_studio.engine.data.examples import SHOWN_ROWS, check_label_names, held_out_count
from adapter_studio.engine.data.files import path_list
from adapter_studio.engine.data.roles import ALTERNATIVE, REQUIRED, roles_of
from adapter_studio.engine.data.shapes import ColumnsNotMapped
from adapter_studio.engine.defaults import task_of
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.spec import DataSpec
from adapter_studio.gui.data_texts import cell_text, describe_stats, dropped_text, in_page_words, pick_columns
from adapter_studio.gui.label_names import FIELD as LABEL_NAMES
from adapter_studio.gui.label_names import label_names_box, label_names_text, parse_label_names, parsed_or
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.spin_boxes import DoubleSpinBox, SpinBox
from adapter_studio.gui.worker import ProgressRelay, run_in_background
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import qdebounced

AUTO = "(detect)"
NO_COLUMN = "(none)"
MAPPING_CHARS = 10  # a column box shows this many characters (its list shows every name whole)
MAPPING_PER_ROW = 3  # column boxes side by side: preference data has five, and the window fits 1,024 px
MAX_COLUMN_PX = 360  # a long text column leaves room for the others
# The held-out spin box's lowest value, shown as "auto": data.eval_split left empty, for the engine's rule.
AUTO_SPLIT = -0.01  # one step of its two decimals under 0: -0.02 was taken, and read as auto
AUTO_LENGTH = 7  # the max-length box's lowest value, shown as "auto": data.max_length left empty (8 at least)
STATS_DELAY_MS = 300  # wait for the typing to stop before counting tokens again
FALLBACK_MAX_LENGTH = 512


class DataPage(Page):
    title = "Data"
    hint = (
        "JSON, JSONL, CSV, TSV, Parquet, TXT or a saved data set folder (several: separate with commas). "
        "The shape is detected from the columns; map them if needed."
    )

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        row = QHBoxLayout()
        self.path = QLineEdit()
        self.path.setObjectName("dataPath")
        self.path.returnPressed.connect(self.reload)
        browse = QPushButton("Open…")
        browse.clicked.connect(self.browse)
        row.addWidget(self.path)
        row.addWidget(browse)
        self.layout_.addLayout(row)

        fields = DataSpec.model_fields
        options = QFormLayout()
        self.format = QComboBox()
        self.format.setObjectName("dataFormat")
        self.format.addItems([AUTO, *REQUIRED])
        self.format.activated.connect(lambda _i: self.reload(keep_mapping=False))
        options.addRow("Format", self.format)
        self.mapping_row = QGridLayout()  # rows of MAPPING_PER_ROW boxes: five in one row kept the window 1,240 px wide
        self.mapping_row.setContentsMargins(0, 0, 0, 0)
        options.addRow("Columns", self.mapping_row)
        self.eval_split = DoubleSpinBox()
        self.eval_split.setObjectName("evalSplit")
        self.eval_split.setRange(AUTO_SPLIT, 0.9)
        self.eval_split.setSingleStep(0.05)
        self.eval_split.setSpecialValueText("auto")  # shown at AUTO_SPLIT, the lowest value
        self.eval_split.setValue(AUTO_SPLIT)
        self._split_tip = fields["eval_split"].description
        self.eval_split.setToolTip(self._split_tip)
        self.eval_split.valueChanged.connect(lambda _v: self._changed())
        held_row = QHBoxLayout()  # two rows' worth of fields on one: at 1,024 × 640 the table below showed one row
        held_row.addWidget(self.eval_split, 2)
        self.eval_path = QLineEdit()
        self.eval_path.setObjectName("evalPath")
        self.eval_path.setPlaceholderText("optional: a file of held-out rows (replaces the share)")
        self.eval_path.editingFinished.connect(self._eval_path_changed)
        held_row.addWidget(QLabel("or an eval file:"))
        held_row.addWidget(self.eval_path, 3)
        options.addRow("Held out", held_row)
        self.system_prompt = QLineEdit()
        self.system_prompt.setObjectName("systemPrompt")
        self.system_prompt.setPlaceholderText("optional; the model's chat template is used by default")
        self.system_prompt.setToolTip(fields["system_prompt"].description)
        self.system_prompt.editingFinished.connect(self._changed)
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.system_prompt, 1)
        self.template = QLineEdit()
        self.template.setObjectName("promptTemplate")
        self.template.setPlaceholderText(r"optional, e.g. Question: {instruction}\n{input}\nAnswer: ")
        self.template.setToolTip(fields["template"].description + r" Write \n for a line break.")
        self.template.editingFinished.connect(self._changed)
        prompt_row.addWidget(QLabel("template:"))
        prompt_row.addWidget(self.template, 1)
        options.addRow("System prompt", prompt_row)
        self.label_names = label_names_box()  # shown instead of the prompt row for classification (no prompt)
        self.label_names.editingFinished.connect(self._label_names_changed)
        options.addRow(LABEL_NAMES, self.label_names)
        self.options, self.prompt_row = options, prompt_row
        options.setRowVisible(self.label_names, False)
        length_row = QHBoxLayout()
        self.max_length = SpinBox()
        self.max_length.setObjectName("maxLength")
        self.max_length.setRange(AUTO_LENGTH, 131072)  # 1-7 showed as typed and trained as 8, the spec's least
        self.max_length.setSingleStep(64)
        self.max_length.setSpecialValueText("auto")
        self.max_length.setToolTip(fields["max_length"].description + " auto: the model's limit, at most 512.")
        self.max_length.valueChanged.connect(lambda _v: self._max_length_changed())
        self.packing = QCheckBox("Pack short rows together")
        self.packing.setObjectName("packing")
        self.packing.setToolTip(fields["packing"].description)
        self.packing.toggled.connect(lambda _v: self._changed())
        length_row.addWidget(self.max_length)
        length_row.addWidget(self.packing)
        length_row.addStretch(1)
        options.addRow("Max length", length_row)
        self.layout_.addLayout(options)

        self.summary = wrapped_label("dataSummary")
        self.layout_.addWidget(self.summary)
        split = QSplitter(Qt.Orientation.Vertical)
        self.table = QTableWidget()
        self.table.setObjectName("dataTable")
        # One line a row, full text in the tooltip: wrapped into 100-px columns, a row took two lines that
        # both ended in "…" and the table showed two rows (issue 26).
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self.show_rendered)
        split.addWidget(self.table)
        split.addWidget(self._build_lengths())
        self.rendered = QTextEdit()
        self.rendered.setObjectName("renderedText")
        self.rendered.setReadOnly(True)
        split.addWidget(self.rendered)
        split.setSizes([200, 220, 160])  # the rows, their lengths, one row's training text (in proportion)
        self.layout_.addWidget(split, 1)

        self.combos: dict[str, QComboBox] = {}
        self.preview: Any = None
        self.tokenizer: Any = None
        self.stats: dict[str, Any] | None = None
        self.auto_max_length = FALLBACK_MAX_LENGTH
        self._stats_tokenizer: Any = None  # a copy: the stats thread must not share the page's
        self._tokenizer_for: str | None = None
        self._pending: set[object] = set()
        self._published: DataSpec | None = None
        self._loaded: DataSpec | None = None  # the spec last read (or being read)
        self._before_failure: DataSpec | None = None  # the state's data when a read failed and cleared it
        self._cleared_eval: str | None = None  # an evaluation file cleared with its data, to be said once
        self._detected: dict[str, str] = {}  # the columns detection mapped for the file shown
        self._carried: dict[str, str] = {}  # the columns chosen for the last file, for the next
        self._column_note = ""  # said once: which of them were kept, or are not in the new file
        self._stats_generation = 0
        self._stats_done = 0
        self._stats_running = False
        self._last_error = ""
        self._stats_timer = QTimer(self)
        self._stats_timer.setSingleShot(True)
        self._stats_timer.setInterval(STATS_DELAY_MS)
        self._stats_timer.timeout.connect(self._compute_stats)
        self._counting = ProgressRelay(self)
        self._counting.said.connect(lambda part, done: self.length_stats.setText(f"Counting tokens… {part} {done:.0%}"))
        state.data_changed.connect(self._from_state)
        state.model_changed.connect(self._load_tokenizer)

    def _build_lengths(self) -> QWidget:
        box = QWidget()
        layout = QHBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        self.histogram = pg.PlotWidget()
        self.histogram.setObjectName("lengthHistogram")
        self.histogram.setLabel("bottom", "tokens per row")
        self.histogram.setLabel("left", "rows")
        self.histogram.setMinimumHeight(150)
        self.histogram_bars = pg.BarGraphItem(x=[], height=[], width=1)
        self.histogram.addItem(self.histogram_bars)
        self.max_length_line = pg.InfiniteLine(
            pos=FALLBACK_MAX_LENGTH, angle=90, pen=pg.mkPen("#c0392b", width=2),
            label="max length", labelOpts={"position": 0.9, "color": "#c0392b"},
        )  # fmt: skip
        self.histogram.addItem(self.max_length_line)
        # Until the first count: empty axes over the usual lengths, not a lone line at 512 on a 511.6–512.4 axis.
        self.max_length_line.setVisible(False)
        self.histogram.setXRange(0, FALLBACK_MAX_LENGTH * 1.02)
        layout.addWidget(self.histogram, 3)
        side = QVBoxLayout()
        self.length_stats = wrapped_label("lengthStats",
                                          "Token lengths appear once a model is chosen and the data is read.")
        self.length_stats.setTextFormat(Qt.TextFormat.RichText)
        side.addWidget(self.length_stats)
        side.addStretch(1)
        layout.addLayout(side, 2)
        return box

    # --- choosing -------------------------------------------------------------------------------
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Dataset", filter="Data (*.json *.jsonl *.csv *.tsv *.parquet *.txt *.gz);;All files (*)"
        )
        if path:
            self.path.setText(path)
            self.reload(keep_mapping=False)

    def _from_state(self) -> None:
        data = self.state.data
        if data is None or data is self._published:
            return  # our own update coming back
        widgets = (self.eval_split, self.max_length, self.packing)
        for widget in widgets:
            widget.blockSignals(True)
        self.path.setText(data.path if isinstance(data.path, str) else ",".join(data.path))
        self.format.setCurrentText(data.format or AUTO)
        self.eval_split.setValue(AUTO_SPLIT if data.eval_split is None else data.eval_split)
        self.eval_path.setText(data.eval_path or "")
        self.system_prompt.setText(data.system_prompt or "")
        self.template.setText((data.template or "").replace("\n", "\\n"))
        self.max_length.setValue(data.max_length or 0)
        self.packing.setChecked(data.packing)
        self.label_names.setText(label_names_text(data.label_names))
        for widget in widgets:
            widget.blockSignals(False)
        self._load(data)

    @property
    def format_chosen(self) -> bool:
        return self.format.currentText() != AUTO

    def _paths(self) -> str | list[str]:
        return path_list(self.path.text())

    def _mapping(self) -> dict[str, str]:
        return {role: combo.currentText() for role, combo in self.combos.items() if combo.currentText() != NO_COLUMN}

    def _current_spec(self, keep_mapping: bool = True) -> DataSpec:
        base = self.state.data or self._before_failure or DataSpec(path=self._paths())
        fmt = None if self.format.currentText() == AUTO else self.format.currentText()
        template = self.template.text().replace("\\n", "\n")
        split = self.eval_split.value()  # two digits of a share a run saved with up to six (2,000 of 300,000 rows)
        split = base.eval_split if base.eval_split is not None and round(base.eval_split, 2) == split else split
        return base.model_copy(
            update={
                "path": self._paths(),
                "format": fmt,
                "columns": self._mapping() if keep_mapping else {},
                "eval_split": None if split < 0 else split,
                "eval_path": self.eval_path.text().strip() or None,
                "system_prompt": self.system_prompt.text().strip() or None,
                "template": template if template.strip() else None,
                "max_length": self.max_length.value() if self.max_length.value() > AUTO_LENGTH else None,
                "packing": self.packing.isChecked(),
                "label_names": parsed_or(self.label_names.text(), base.label_names),
            }
        )

    def reload(self, keep_mapping: bool = True) -> None:
        if not self.path.text().strip():
            return
        last = self._loaded
        if last is not None and self._paths() != last.path:
            # Another file: its own shape and columns, and not the evaluation file that came with the last
            # one (the demo's, typically) unless one was typed since.
            keep_mapping = False
            # The columns the person chose (not detected): kept where the next file has them (loading SVAMP's
            # twin after mapping output ← equation put gold_answer back, unsaid).
            chosen = self._mapping().items() if self.preview is not None else ()  # not a failed file's guesses
            self._carried = {r: c for r, c in chosen if self._detected.get(r) != c}
            self.format.setCurrentText(AUTO)
            self.label_names.clear()  # the last file's labels
            self.state.data_mistake = None
            if last.eval_path and self.eval_path.text().strip() == last.eval_path:
                self.eval_path.clear()
                self._cleared_eval = last.eval_path
        self._load(self._current_spec(keep_mapping))

    def commit(self) -> None:
        if self.preview is not None:
            self._publish(self._current_spec())

    def _changed(self) -> None:
        """A setting that changes the tokens (not the rows) changed: publish it, count again."""
        self.commit()
        self.show_rendered()
        self._schedule_stats()

    def _max_length_changed(self) -> None:
        """Each digit typed is a value: "32768" rendered a 2 MB row five times, the last for 1.8 s."""
        self.commit()
        self._render_soon()
        self._schedule_stats()

    @qdebounced(timeout=300)
    def _render_soon(self) -> None:
        if shiboken6.isValid(self):
            self.show_rendered()

    def _label_names_changed(self) -> None:
        """Names change the labels the rows are counted and checked under: read them again."""
        current = (self.state.data or self._before_failure or DataSpec(path="-")).label_names
        try:
            names = parse_label_names(self.label_names.text())
        except UserError as e:  # said here instead of the summary, and by Start: the run would train on the ids
            self.summary.setText(f"<span style='color:#c00'>{html.escape(e.message)}</span>")
            self.state.data_mistake = e.message
            return
        said, self.state.data_mistake = self.state.data_mistake, None
        if (names != current or said) and self.path.text().strip():  # read again: the summary too
            self._load(self._current_spec())

    def _eval_path_changed(self) -> None:
        if self.preview is not None:
            self.reload()  # the evaluation file is read and checked like the training file

    def _publish(self, data: DataSpec) -> None:
        self._published = data
        self.state.set_data(data, self.preview.tasks if self.preview is not None else [])

    def _load(self, spec: DataSpec) -> None:
        from adapter_studio.engine.data.preview import preview_data

        self.summary.setText("Reading…")
        self._loaded = spec
        self._background(preview_data, spec, on_result=lambda p, s=spec: self._show(p, s), on_error=self._failed)

    def _background(
        self, func: Any, *args: Any, on_result: Callable[[Any], None], on_error: Callable[[BaseException], None],
        **kwargs: Any,
    ) -> None:  # fmt: skip
        """`run_in_background`, counted in `busy` until its result or error has been handled."""
        token = object()
        self._pending.add(token)

        def finish(handler: Callable[[Any], None], value: Any) -> None:
            if not shiboken6.isValid(self):
                return  # the page was closed while the work ran: nothing left to show it on
            self._pending.discard(token)
            handler(value)

        run_in_background(func, *args, on_result=lambda r: finish(on_result, r), on_error=lambda e: finish(on_error, e),
                          **kwargs)  # fmt: skip

    @property
    def busy(self) -> bool:
        """Whether something is still being read, loaded or counted in the background."""
        return bool(self._pending)

    def _failed(self, error: BaseException) -> None:
        # Nothing of the previous data stays on show or in the state: it is not what would train. The column
        # boxes stay for the same file (a mapping being made), not for another.
        previous = self.state.data
        self._before_failure = previous or self._before_failure  # its settings without a box (max_rows) carry on
        self.state.clear_data()
        failed = self._loaded.path if self._loaded is not None else None
        if not isinstance(error, ColumnsNotMapped) and (previous is None or previous.path != failed):
            self._clear_mapping()
        self.preview = None
        self.stats = None
        self.table.setRowCount(0)  # with no columns, no headers either
        self.table.setColumnCount(0)
        self.rendered.clear()
        self.histogram_bars.setOpts(x=[], height=[], width=1)
        self.eval_split.setSpecialValueText("auto")  # it said "auto: 18 of 299 rows" of the file before
        self.length_stats.setText("")
        if not isinstance(error, ColumnsNotMapped):
            error = in_page_words(error)
            self.summary.setText(f"<span style='color:#c00'>{html.escape(getattr(error, 'message', str(error)))}"
                                 "</span>")  # fmt: skip
            self.error(error)
            return
        # Said here, beside the boxes that fix it (no dialog at each step of the mapping): the file's rows,
        # and a column box per role. Its fix is the spec's (`data.columns: {…}`): the page says it in its words.
        self.format.setCurrentText(error.format)
        self._build_mapping(error.format, error.columns, error.found)
        self._fill_table(error.columns, error.rows)
        said = html.escape(f"{error.where}: {error.what}" if error.where else error.what)
        self.summary.setText(f"<span style='color:#c00'>{said}</span><br>{pick_columns(error)}")

    # --- showing --------------------------------------------------------------------------------
    def _show(self, preview: Any, spec: DataSpec) -> None:
        from adapter_studio.engine.data.preview import describe_labels

        carried, self._carried = self._carried, {}
        if not spec.columns:  # detected: what the person's choices differ from
            self._detected = dict(preview.mapping)
            kept = {r: c for r, c in carried.items()
                    if c in preview.columns and preview.mapping.get(r) != c and r in roles_of(preview.format)}
            gone = ", ".join(f"{r} ← {c}" for r, c in carried.items() if c not in preview.columns)
            self._column_note = f"Columns: {gone}, chosen for the last file, is not in this one." if gone else ""
            if kept:
                chosen = ", ".join(f"{r} ← {c}" for r, c in kept.items())
                self._column_note += f" Columns kept from the last file: {chosen}."
                detected = {r: c for r, c in preview.mapping.items() if c not in kept.values()}  # none read twice
                self._load(spec.model_copy(update={"columns": {**detected, **kept}}))
                return
        self.preview = preview
        self._build_mapping(preview.format, preview.columns, preview.mapping)
        self._fill_table(preview.columns, preview.rows)
        held = held_out_count(preview.usable, None)
        self.eval_split.setSpecialValueText(f"auto: {held:,} of {preview.usable:,} rows")
        # An eval file replaces the held-out share: its box would say rows were kept back that are trained on.
        self.eval_split.setEnabled(not spec.eval_path)
        if spec.eval_path:
            self.eval_split.setSpecialValueText("none: the eval file")
        self.eval_split.setToolTip(f"{Path(spec.eval_path).name} is the held-out set: it replaces the share"
                                   if spec.eval_path else self._split_tip)  # fmt: skip
        detected = "detected" if spec.format is None else "chosen"
        labels = describe_labels(preview.labels)  # the data's own text: escaped
        self.summary.setText(
            f"<b>{preview.total_rows:,}</b> rows, format <b>{preview.format}</b> ({detected}), "
            f"columns: {', '.join(f'{r} ← {c}' for r, c in preview.mapping.items())}"
            f"{dropped_text(preview.dropped, preview.total_rows)}" + (f"<br>{html.escape(labels)}" if labels else "")
        )
        classes = preview.format == "classification"
        self.options.setRowVisible(self.label_names, classes)
        self.options.setRowVisible(self.prompt_row, not classes)
        self.state.data_mistake = self.state.data_mistake if classes else None  # a hidden box's names are not read
        if classes and spec.label_names:
            try:
                check_label_names(spec.label_names, preview.written_labels)  # as training checks them
            except UserError as e:  # named as the box is, not as the spec's field
                said = UserError(e.what, where=LABEL_NAMES, fix=e.fix).message
                self.summary.setText(f"{self.summary.text()}<br><span style='color:#c00'>{html.escape(said)}</span>")
        objective, training = type(self.state.objective), self.state.training
        self.state.data_labels = len(preview.labels) if classes else None
        self._publish(spec.model_copy(update={"format": preview.format, "columns": preview.mapping}))
        if type(self.state.objective) is not objective:  # the data's format picked another objective
            title = self.state.objective.title
            self.summary.setText(f"{self.summary.text()}<br>Objective: <b>{title}</b>, which trains on this "
                                 "format (the Method page offers the others).")  # fmt: skip
        if self.state.training is not training:  # the demo's recipe left with its data (state._leave_demo)
            self.summary.setText(f"{self.summary.text()}<br>Method and training settings: the app's defaults "
                                 "for this data (the demo's were for its dates).")  # fmt: skip
        if self._column_note:
            self.summary.setText(f"{self.summary.text()}<br>{html.escape(self._column_note.strip())}")
            self._column_note = ""
        if self._cleared_eval:
            self.summary.setText(f"{self.summary.text()}<br>Eval file cleared: {html.escape(self._cleared_eval)} "
                                 "came with the previous data.")  # fmt: skip
            self._cleared_eval = None
        if self.table.rowCount():
            self.table.selectRow(0)
        self._schedule_stats()

    def _fill_table(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(min(len(rows), SHOWN_ROWS))
        for r, row in enumerate(rows[:SHOWN_ROWS]):
            for c, column in enumerate(columns):
                text = cell_text(row.get(column))
                item = QTableWidgetItem(" ".join(text[:200].split()))
                item.setToolTip(text[:2000] if len(text) > 40 or "\n" in text else "")
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
        for c in range(self.table.columnCount()):
            self.table.setColumnWidth(c, min(self.table.columnWidth(c), MAX_COLUMN_PX))

    def _clear_mapping(self) -> None:
        while self.mapping_row.count():
            item = self.mapping_row.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.combos = {}

    def _column_picked(self, role: str) -> None:
        """A column moves to the role it is picked for (text <- description left text_pair on it too: read twice)."""
        column = self.combos[role].currentText()
        for other, combo in self.combos.items():
            if other != role and combo.currentText() == column != NO_COLUMN:
                combo.setCurrentText(NO_COLUMN)
        self.reload()

    def _build_mapping(self, fmt: str, columns: list[str], mapping: dict[str, str]) -> None:
        self._clear_mapping()
        for role in roles_of(fmt):
            combo = QComboBox()
            combo.setObjectName(f"column_{role}")
            combo.addItems([NO_COLUMN, *columns])
            combo.setCurrentText(mapping.get(role, NO_COLUMN))
            combo.setToolTip(f"Which column holds the {role}{_role_note(fmt, role)}")
            # As wide as a short name, the popup as wide as the longest: boxes sized to a file's longest column
            # name (SVAMP's verify_condition_index) widened the window past a 1,280-px screen.
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(MAPPING_CHARS)
            combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)
            combo.activated.connect(lambda _i, role=role: self._column_picked(role))
            row, column = divmod(len(self.combos), MAPPING_PER_ROW)
            self.combos[role] = combo
            self.mapping_row.addWidget(QLabel(f"{role}:"), row, 2 * column)
            self.mapping_row.addWidget(combo, row, 2 * column + 1)

    def _load_tokenizer(self) -> None:
        model = self.state.model
        if model is None or model.source == self._tokenizer_for:
            return
        self._tokenizer_for = model.source

        def load(source: str) -> tuple[Any, Any, int]:
            import copy

            from adapter_studio.engine.defaults import DEFAULT_MAX_LENGTH, model_max_length
            from adapter_studio.engine.models.loading import load_config, load_tokenizer, resolve_source

            resolved = resolve_source(source)
            if not resolved.has_weights:
                raise UserError("the model is an architecture alone, without its files")
            tokenizer = load_tokenizer(resolved)
            limit = min(DEFAULT_MAX_LENGTH, model_max_length(load_config(resolved)))
            return tokenizer, copy.deepcopy(tokenizer), limit

        self._background(load, model.source, on_result=self._tokenizer_ready, on_error=self._tokenizer_failed)

    def _tokenizer_failed(self, error: BaseException) -> None:
        """Said where the lengths would be ("appear once a model is chosen" stayed, for an architecture alone)."""
        why = html.escape(getattr(error, "what", str(error)))
        self.length_stats.setText(f"Token lengths need the model's tokenizer, which cannot be read: {why}")

    def _tokenizer_ready(self, loaded: tuple[Any, Any, int]) -> None:
        self.tokenizer, self._stats_tokenizer, self.auto_max_length = loaded
        self.show_rendered()
        self._schedule_stats()

    def show_rendered(self) -> None:
        if self.preview is None:
            return
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        index = rows[0].row() if rows else 0
        examples = self.preview.examples
        if index >= len(examples):
            return
        if self.tokenizer is None:
            self.rendered.setPlainText("(the exact training text appears once the model's tokenizer is loaded)")
            return
        from adapter_studio.engine.data.preview import SHOWN_CHARS_PER_TOKEN, render_tokens, shortened

        try:
            spec = self._current_spec()
            spec = spec.model_copy(update={"max_length": spec.max_length or self.auto_max_length})
            example, cut = shortened(examples[index], SHOWN_CHARS_PER_TOKEN * spec.max_length)
            pieces = render_tokens(spec, example, self.preview.format, self.tokenizer)
        except Exception as e:  # a preview must never take the window down
            self.rendered.setPlainText(f"cannot render this row: {getattr(e, 'message', e)}")
            return
        # Dark text on the green: in the dark theme the default text is light and vanished on it.
        body = "".join(
            f"<span style='background:#c8f7c5; color:#111'>{html.escape(t)}</span>" if loss else
            f"<span style='color:#888'>{html.escape(t)}</span>"
            for t, loss in pieces
        )  # fmt: skip
        learnt, read = (("what the classifier learns (the row's label)", "the text it reads")
                        if self.preview.format == "classification" else
                        ("tokens the model learns (carry loss)", "prompt tokens (masked)"))  # fmt: skip
        legend = (f"<p><span style='background:#c8f7c5; color:#111'>green: {learnt}</span>"
                  f" · <span style='color:#888'>gray: {read}</span></p>")  # fmt: skip
        if cut:
            legend += "<p>This row is far longer than max length: it is shown in part.</p>"
        self.rendered.setHtml(legend + f"<pre style='white-space:pre-wrap'>{body}</pre>")

    # --- token lengths --------------------------------------------------------------------------
    @property
    def stats_busy(self) -> bool:
        """Whether token lengths are being counted (or about to be)."""
        return self._stats_timer.isActive() or self._stats_generation != self._stats_done

    def _schedule_stats(self) -> None:
        if self.preview is None or self._stats_tokenizer is None:
            return
        self._stats_generation += 1
        self._stats_timer.start()

    def _compute_stats(self) -> None:
        from adapter_studio.engine.data.preview import length_stats

        if self.preview is None or self._stats_tokenizer is None:
            self._stats_done = self._stats_generation  # nothing to count
            return
        published = self._current_spec()
        # As the run reads it (format, columns, task, seed): one cache entry (300,000 rows were tokenised twice).
        fmt = published.format or self.preview.format
        task = task_of(self.state.model.task if self.state.model is not None else "auto", fmt)
        spec = published.model_copy(update={"max_length": published.max_length or self.auto_max_length, "format": fmt,
                                            "columns": published.columns or self.preview.mapping})  # fmt: skip
        generation = self._stats_generation
        batch_size = self.state.training.batch_size if self.state.training else None
        if self._stats_running:
            return  # one count at a time (they share a tokenizer); the newer one starts after it
        self._stats_running = True
        self.length_stats.setText("Counting tokens…")
        self._background(
            length_stats,
            spec,
            self._stats_tokenizer,
            batch_size,
            task=task,
            seed=self.state.training.seed,
            progress=self._counting.report,  # minutes for 300,000 rows: say how far
            on_result=lambda s, g=generation, d=published: self._stats_ready(s, g, d),
            on_error=lambda e, g=generation, d=published: self._stats_failed(e, g, d),
        )

    def _stale(self, generation: int) -> bool:
        """After a count: whether settings changed meanwhile (then count again, and drop this one)."""
        self._stats_running = False
        if generation != self._stats_generation:
            self._stats_timer.start()
            return True
        self._stats_done = generation
        return False

    def _stats_ready(self, stats: dict[str, Any], generation: int, data: DataSpec) -> None:
        if self._stale(generation):
            return
        self.stats = stats
        self.state.set_data_lengths(data, stats)  # the Compare page sizes its memory estimate with them
        self._last_error = ""
        self._draw_histogram(stats)
        self.length_stats.setText(describe_stats(stats, self.packing.isChecked()))
        self.length_stats.setToolTip("\n".join(stats["dropped"][:50]))
        if data.eval_split is None and not data.eval_path:  # the split as made (a rare label keeps a training row)
            rows = stats["split_rows"]  # as split, before rows too long for max_length went from either side
            self.eval_split.setSpecialValueText(f"auto: {rows - stats['examples']:,} of {rows:,} rows")
        self.histogram.setLabel("bottom", "tokens per side (a pair's longer)" if stats["format"] == "preference"
                                else "tokens per row")  # fmt: skip

    def _stats_failed(self, error: BaseException, generation: int, data: DataSpec) -> None:
        if self._stale(generation):
            return
        error = in_page_words(error)
        self.stats = None
        self.state.set_data_lengths(data, None)
        message = getattr(error, "message", str(error))
        self.length_stats.setText(f"<span style='color:#c00'>{html.escape(message)}</span>")
        if message != self._last_error:  # one dialog per problem, not one per spin-box step
            self._last_error = message
            self.error(error)

    def _draw_histogram(self, stats: dict[str, Any]) -> None:
        lengths = np.asarray(stats["lengths"], np.int64)
        max_length = stats["max_length"]
        self.max_length_line.setVisible(True)  # first: a hidden label keeps its old text
        self.max_length_line.setValue(max_length)
        self.max_length_line.label.setFormat(f"max length {max_length}")
        if not len(lengths):
            self.histogram_bars.setOpts(x=[], height=[], width=1)
            return
        top = max(int(lengths.max()), max_length) + 1
        bins = np.linspace(0, top, min(40, top) + 1)
        counts, edges = np.histogram(lengths, bins=bins)
        centers = (edges[:-1] + edges[1:]) / 2
        brushes = [pg.mkBrush("#e67e22" if c > max_length else "#3498db") for c in centers]
        self.histogram_bars.setOpts(x=centers, height=counts, width=(edges[1] - edges[0]) * 0.9, brushes=brushes)
        self.histogram.setXRange(0, top * 1.02)


def _role_note(fmt: str, role: str) -> str:
    if role in REQUIRED[fmt]:
        return " (required)"
    other = ALTERNATIVE.get(fmt, ())
    if role in other:  # preference pairs as two answers and which is better
        others = ", ".join(r for r in other if r != role)
        return f" (required with {others} where there is no {' or '.join(REQUIRED[fmt])})"
    return ""
