"""Step 5: export the trained run in one click — adapter only, or merged into the base weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapter_studio.gui.pages.base import Page
from adapter_studio.gui.pages.model_page import human_bytes
from adapter_studio.gui.worker import run_in_background
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QTextBrowser


class ExportPage(Page):
    title = "Export"
    hint = ("Exports are written beside the target and renamed into place, then reloaded from disk and "
            "compared with the trained model. Nothing half-written is ever left behind.")

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        row = QHBoxLayout()
        self.run_label = QLabel("No run yet: train one on the Train page, or pick a run folder.")
        self.run_label.setObjectName("exportRun")
        row.addWidget(self.run_label, 1)
        pick = QPushButton("Run folder…")
        pick.clicked.connect(self.pick_run)
        row.addWidget(pick)
        self.layout_.addLayout(row)
        buttons = QHBoxLayout()
        self.adapter_button = QPushButton("Export adapter…")
        self.adapter_button.setObjectName("exportAdapter")
        self.adapter_button.clicked.connect(lambda: self.ask_and_export("adapter"))
        self.merged_button = QPushButton("Export merged model…")
        self.merged_button.setObjectName("exportMerged")
        self.merged_button.clicked.connect(lambda: self.ask_and_export("merged"))
        buttons.addWidget(self.adapter_button)
        buttons.addWidget(self.merged_button)
        buttons.addStretch()
        self.layout_.addLayout(buttons)
        self.status = QLabel("")
        self.status.setObjectName("exportStatus")
        self.layout_.addWidget(self.status)
        self.results = QTextBrowser()
        self.results.setObjectName("exportResults")
        self.results.setPlaceholderText(  # an empty box read as if something had failed to show
            "Each export of this run is listed here: where it went, its size, its files, and how closely "
            "the reloaded copy matches the trained model."
        )
        self.layout_.addWidget(self.results, 1)
        self.exports: dict[str, str] = {}
        self._worker: Any = None
        state.run_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        run = self.state.current_run
        enabled = run is not None and self._worker is None
        self.adapter_button.setEnabled(enabled)
        self.merged_button.setEnabled(enabled)
        if run is None:
            return
        self.run_label.setText(f"Run: <b>{run.name}</b> <span style='color:gray'>({run})</span>")
        try:
            from adapter_studio.engine.inference.trained import run_spec

            method = run_spec(run).method
        except Exception as e:
            self.status.setText(f"Cannot read this run: {getattr(e, 'message', e)}")
            return
        self.merged_button.setEnabled(enabled and method.mergeable)
        self.merged_button.setToolTip(
            "" if method.mergeable else f"{method.title} cannot be merged into the base weights: export the adapter."
        )

    def pick_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.state.runs_dir)
        if folder:
            self.state.set_current_run(Path(folder))

    def ask_and_export(self, kind: str) -> None:
        run = self.state.current_run
        if run is None:
            return
        folder = QFileDialog.getExistingDirectory(self, f"Where to put the {kind} export")
        if folder:
            self.export(kind, Path(folder) / f"{run.name}-{kind}")

    def export(self, kind: str, target: Path) -> None:
        from adapter_studio.engine.export.run_export import export_run

        run = self.state.current_run
        if run is None or self._worker is not None:
            return
        self.status.setText(f"Exporting {kind} to {target}… (loading, writing, then verifying)")
        self.adapter_button.setEnabled(False)
        self.merged_button.setEnabled(False)
        self._worker = run_in_background(
            export_run, run, kind, target, on_result=self._done, on_error=self._failed
        )

    def _done(self, result: Any) -> None:
        self._worker = None
        self.exports[result.kind] = str(result.path)
        files = sorted(p.name for p in Path(result.path).iterdir())
        self.status.setText(
            f"<b style='color:#2a7'>verified</b> — {result.kind} export reloaded from disk, "
            f"max logit difference {result.verified_max_diff:.2e}"
        )
        self.results.append(
            f"<p><b>{result.kind}</b>: {result.path} — {human_bytes(result.bytes)}, verified "
            f"(max logit difference {result.verified_max_diff:.2e})<br>"
            f"<span style='color:gray'>{', '.join(files)}</span></p>"
        )
        self.refresh()

    def _failed(self, error: BaseException) -> None:
        self._worker = None
        self.status.setText(f"<b style='color:#c00'>Export failed</b>: {getattr(error, 'message', error)}")
        self.refresh()
        self.error(error)

    @property
    def busy(self) -> bool:
        return self._worker is not None
