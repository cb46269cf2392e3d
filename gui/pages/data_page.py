"""Step 2: pick the data, see its shape, map its columns, and see exactly what trains."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextEdit,
)
from PySide6.QtCore import Qt

from engine.data_shapes import REQUIRED, roles_of
from engine.spec import DataSpec
from gui.pages.base import Page
from gui.worker import run_in_background

AUTO = "(detect)"
NO_COLUMN = "(none)"


class DataPage(Page):
    title = "Data"
    hint = "JSON, JSONL, CSV, TSV, Parquet or TXT. The shape is detected from the columns; map them if needed."

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

        options = QFormLayout()
        self.format = QComboBox()
        self.format.setObjectName("dataFormat")
        self.format.addItems([AUTO, *REQUIRED])
        self.format.activated.connect(lambda _i: self.reload(keep_mapping=False))
        options.addRow("Format", self.format)
        self.mapping_row = QHBoxLayout()
        options.addRow("Columns", self.mapping_row)
        self.eval_split = QDoubleSpinBox()
        self.eval_split.setObjectName("evalSplit")
        self.eval_split.setRange(0.0, 0.9)
        self.eval_split.setSingleStep(0.05)
        self.eval_split.setValue(0.1)
        self.eval_split.setToolTip(DataSpec.model_fields["eval_split"].description)
        self.eval_split.valueChanged.connect(lambda _v: self.commit())
        options.addRow("Held out", self.eval_split)
        self.eval_path = QLineEdit()
        self.eval_path.setPlaceholderText("optional separate evaluation file (replaces the held-out share)")
        self.eval_path.editingFinished.connect(self.commit)
        options.addRow("Eval file", self.eval_path)
        self.system_prompt = QLineEdit()
        self.system_prompt.setPlaceholderText("optional; the model's chat template is used by default")
        self.system_prompt.editingFinished.connect(self.commit)
        options.addRow("System prompt", self.system_prompt)
        self.layout_.addLayout(options)

        self.summary = QLabel("")
        self.summary.setObjectName("dataSummary")
        self.summary.setWordWrap(True)
        self.layout_.addWidget(self.summary)
        split = QSplitter(Qt.Orientation.Vertical)
        self.table = QTableWidget()
        self.table.setObjectName("dataTable")
        self.table.itemSelectionChanged.connect(self.show_rendered)
        split.addWidget(self.table)
        self.rendered = QTextEdit()
        self.rendered.setObjectName("renderedText")
        self.rendered.setReadOnly(True)
        split.addWidget(self.rendered)
        self.layout_.addWidget(split, 1)
        self.combos: dict[str, QComboBox] = {}
        self.preview: Any = None
        self.tokenizer: Any = None
        self._tokenizer_for: str | None = None
        self._workers: list[Any] = []
        self._published: DataSpec | None = None
        state.data_changed.connect(self._from_state)
        state.model_changed.connect(self._load_tokenizer)

    # --- choosing -------------------------------------------------------------------------------
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Dataset", filter="Data (*.json *.jsonl *.csv *.tsv *.parquet *.txt);;All files (*)"
        )
        if path:
            self.path.setText(path)
            self.reload(keep_mapping=False)

    def _from_state(self) -> None:
        data = self.state.data
        if data is None or data is self._published:
            return  # our own update coming back
        self.path.setText(data.path if isinstance(data.path, str) else ",".join(data.path))
        self.format.setCurrentText(data.format or AUTO)
        self.eval_split.blockSignals(True)
        self.eval_split.setValue(data.eval_split)
        self.eval_split.blockSignals(False)
        self.eval_path.setText(data.eval_path or "")
        self.system_prompt.setText(data.system_prompt or "")
        self._load(data)

    def _paths(self) -> str | list[str]:
        parts = [p.strip() for p in self.path.text().split(",") if p.strip()]
        return parts[0] if len(parts) == 1 else parts

    def _mapping(self) -> dict[str, str]:
        return {role: combo.currentText() for role, combo in self.combos.items() if combo.currentText() != NO_COLUMN}

    def _current_spec(self, keep_mapping: bool = True) -> DataSpec:
        base = self.state.data or DataSpec(path=self._paths())
        fmt = None if self.format.currentText() == AUTO else self.format.currentText()
        return base.model_copy(
            update={
                "path": self._paths(),
                "format": fmt,
                "columns": self._mapping() if keep_mapping else {},
                "eval_split": self.eval_split.value(),
                "eval_path": self.eval_path.text().strip() or None,
                "system_prompt": self.system_prompt.text().strip() or None,
            }
        )

    def reload(self, keep_mapping: bool = True) -> None:
        if not self.path.text().strip():
            return
        self._load(self._current_spec(keep_mapping))

    def commit(self) -> None:
        if self.preview is not None:
            self._publish(self._current_spec())

    def _publish(self, data: DataSpec) -> None:
        self._published = data
        self.state.set_data(data)

    def _load(self, spec: DataSpec) -> None:
        from engine.data_preview import preview_data

        self.summary.setText("Reading…")
        self._workers.append(
            run_in_background(
                preview_data, spec, on_result=lambda p, s=spec: self._show(p, s), on_error=self._failed
            )
        )

    def _failed(self, error: BaseException) -> None:
        self.summary.setText(f"<span style='color:#c00'>{html.escape(getattr(error, 'message', str(error)))}</span>")
        self.error(error)

    # --- showing --------------------------------------------------------------------------------
    def _show(self, preview: Any, spec: DataSpec) -> None:
        self.preview = preview
        self._build_mapping(preview)
        columns = preview.columns
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(min(len(preview.rows), 50))
        for r, row in enumerate(preview.rows[:50]):
            for c, column in enumerate(columns):
                value = row.get(column)
                self.table.setItem(r, c, QTableWidgetItem(str(value)[:200] if value is not None else ""))
        detected = "detected" if spec.format is None else "chosen"
        dropped = f"; {len(preview.dropped)} dropped ({preview.dropped[0]}…)" if preview.dropped else ""
        self.summary.setText(
            f"<b>{preview.total_rows}</b> rows, format <b>{preview.format}</b> ({detected}), "
            f"columns: {', '.join(f'{r} ← {c}' for r, c in preview.mapping.items())}{dropped}"
        )
        self._publish(spec.model_copy(update={"format": preview.format, "columns": preview.mapping}))
        if self.table.rowCount():
            self.table.selectRow(0)

    def _build_mapping(self, preview: Any) -> None:
        while self.mapping_row.count():
            item = self.mapping_row.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.combos = {}
        for role in roles_of(preview.format):
            combo = QComboBox()
            combo.setObjectName(f"column_{role}")
            combo.addItems([NO_COLUMN, *preview.columns])
            combo.setCurrentText(preview.mapping.get(role, NO_COLUMN))
            combo.setToolTip(f"Which column holds the {role}")
            combo.activated.connect(lambda _i: self.reload())
            self.mapping_row.addWidget(QLabel(f"{role}:"))
            self.mapping_row.addWidget(combo)

    def _load_tokenizer(self) -> None:
        model = self.state.model
        if model is None or model.source == self._tokenizer_for:
            return
        self._tokenizer_for = model.source

        def load(source: str) -> Any:
            from engine.models import load_tokenizer, resolve_source

            return load_tokenizer(resolve_source(source))

        self._workers.append(
            run_in_background(load, model.source, on_result=self._tokenizer_ready, on_error=lambda e: None)
        )

    def _tokenizer_ready(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.show_rendered()

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
        from engine.data_preview import render_tokens

        try:
            pieces = render_tokens(self._current_spec(), examples[index], self.preview.format, self.tokenizer)
        except Exception as e:  # a preview must never take the window down
            self.rendered.setPlainText(f"cannot render this row: {e}")
            return
        body = "".join(
            f"<span style='background:#c8f7c5'>{html.escape(t)}</span>" if loss else
            f"<span style='color:#777'>{html.escape(t)}</span>"
            for t, loss in pieces
        )
        legend = ("<p><span style='background:#c8f7c5'>green: tokens the model learns (carry loss)</span> · "
                  "<span style='color:#777'>gray: prompt tokens (masked)</span></p>")
        self.rendered.setHtml(legend + f"<pre style='white-space:pre-wrap'>{body}</pre>")
