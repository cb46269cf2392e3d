"""Step 5: export the trained run in one click — adapter only, merged into the base weights, or as
GGUF for llama.cpp, Ollama and LM Studio (read back and compared with the trained model)."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import shiboken6
from adapter_studio.engine.events import Log, Stage
from adapter_studio.engine.export import gguf_writer, llama_cpp
from adapter_studio.engine.export.gguf_writer import BY_LLAMA_CPP
from adapter_studio.engine.export.run_gguf import GGUF_CHOICES, export_gguf, merge_refusal
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.pages.model_page import human_bytes
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QTextBrowser

GGUF_DEFAULT = "q8_0"
GGUF_LABELS = {"lora": "lora (adapter for llama.cpp)"}
GGUF_NOTE = (
    "GGUF files run in llama.cpp, Ollama and LM Studio. Every GGUF is read back and its answers to the "
    "run's held-out prompts are compared with the trained model's."
)


NO_RUN = "No run yet: train one on the Train page, or pick a run folder."

class _Stages(QObject):
    """Carries the export's stage texts and warnings from the worker thread to the page (queued signals)."""

    changed = Signal(str)
    warned = Signal(str)


class ExportPage(Page):
    title = "Export"
    hint = (
        "Adapter: the trained part alone, small, for peft on the same base. Merged: a whole model for "
        "transformers. GGUF: one file for llama.cpp, Ollama or LM Studio. Each is reloaded after writing and "
        "compared with the trained model; its README.md says how to load it."
    )

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        row = QHBoxLayout()
        self.run_label = wrapped_label("exportRun", NO_RUN)
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
        buttons.addSpacing(16)
        buttons.addWidget(QLabel("GGUF:"))
        self.gguf_type = self._gguf_types()
        buttons.addWidget(self.gguf_type)
        self.gguf_button = QPushButton("Export GGUF…")
        self.gguf_button.setObjectName("exportGguf")
        self.gguf_button.clicked.connect(self.ask_and_export_gguf)
        buttons.addWidget(self.gguf_button)
        buttons.addStretch()
        self.layout_.addLayout(buttons)
        note = wrapped_label("ggufNote", GGUF_NOTE)
        note.setStyleSheet("color: gray")
        self.layout_.addWidget(note)
        self._stages = _Stages(self)
        self._stages.changed.connect(self._show_stage)
        self._stages.warned.connect(self._warned)
        self._warnings: list[str] = []  # the export under way's (its run folder could not note it)
        self._gguf_target: Path | None = None
        self.status = wrapped_label("exportStatus")  # a refusal's message can be long
        self.layout_.addWidget(self.status)
        self.results = QTextBrowser()
        self.results.setObjectName("exportResults")
        self.results.setOpenExternalLinks(True)  # each export's "open the folder"
        self.results.setPlaceholderText(  # an empty box read as if something had failed to show
            "Each export of this run is listed here, earlier ones too: where it went, its size, its files, "
            "and how closely the reloaded copy matches the trained model."
        )
        self.layout_.addWidget(self.results, 1)
        self.exports: dict[str, str] = {}
        self._listed: Path | None = None  # the run whose exports the box lists
        self._worker: Any = None
        state.run_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        run = self.state.current_run
        if run != self._listed:  # another run's exports stayed listed under this one's name
            self._listed = run
            self.results.setHtml(earlier_exports(run) if run is not None else "")
        enabled = run is not None and self._worker is None
        self.adapter_button.setEnabled(enabled)
        self.merged_button.setEnabled(enabled)
        self.gguf_button.setEnabled(enabled)
        if run is None:  # none yet, or the run shown was deleted: its name stayed
            self.run_label.setText(NO_RUN)
            self.status.setText("")
            return
        self.run_label.setText(f"Run: <b>{run.name}</b> <span style='color:gray'>({run})</span>")
        try:
            from adapter_studio.engine.inference.trained import run_spec, run_task

            spec = run_spec(run)
        except Exception as e:
            self.status.setText(f"Cannot read this run: {getattr(e, 'message', e)}")
            return
        method = spec.method
        self.merged_button.setEnabled(enabled and method.mergeable)
        self.merged_button.setToolTip(
            "" if method.mergeable else f"{method.title} cannot be merged into the base weights: export the adapter."
        )
        # What export_gguf would refuse without reading the model (its architecture is checked on export).
        no_gguf = gguf_writer.refusal_for_task(run_task(spec)) or merge_refusal(method)
        for widget in (self.gguf_button, self.gguf_type):
            widget.setEnabled(enabled and no_gguf is None)
        self.gguf_button.setToolTip(f"{no_gguf}: export the adapter or the merged model." if no_gguf else "")

    def pick_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.state.runs_dir)
        if folder:
            self.state.set_current_run(Path(folder))

    def _run_still_there(self) -> Path | None:
        """The current run, unless its folder went since it was chosen: then none, said on the page."""
        if gone := self.state.forget_gone_run():
            self.status.setText(esc(gone))
        return self.state.current_run

    def ask_and_export(self, kind: str) -> None:
        run = self._run_still_there()
        if run is None:
            return
        folder = QFileDialog.getExistingDirectory(self, f"Where to put the {kind} export")
        if folder:
            self.export(kind, free_name(Path(folder), f"{run.name}-{kind}"))

    def export(self, kind: str, target: Path) -> None:
        from adapter_studio.engine.export.run_export import export_run

        run = self.state.current_run
        if run is None or self._worker is not None:
            return
        self.status.setText(f"Exporting {kind} to {target}… (loading, writing, then verifying)")
        for button in (self.adapter_button, self.merged_button, self.gguf_button):  # GGUF stayed on, doing nothing
            button.setEnabled(False)
        self._warnings = []
        self._worker = run_in_background(export_run, run, kind, target, emit=self._emit_stage, on_result=self._done,
                                         on_error=self._failed)  # fmt: skip

    def _gguf_types(self) -> QComboBox:
        box = QComboBox()
        box.setObjectName("ggufType")
        box.setToolTip(
            "f16 / bf16: full precision; q8_0: 8-bit, nearly lossless (the default); q4_k_m, q5_k_m, q6_k: "
            "smaller K-quants made by llama.cpp; lora: the adapter alone, for llama.cpp's --lora"
        )
        have_llama_cpp = llama_cpp.installed()
        for quant in GGUF_CHOICES:
            box.addItem(GGUF_LABELS.get(quant, quant), quant)
            if quant in BY_LLAMA_CPP and not have_llama_cpp:
                index = box.count() - 1
                box.model().item(index).setEnabled(False)  # type: ignore[attr-defined]
                hint = f"{quant} is made by llama.cpp's quantizer. {llama_cpp.INSTALL_HINT}"
                box.setItemData(index, hint, Qt.ItemDataRole.ToolTipRole)
        box.setCurrentIndex(box.findData(GGUF_DEFAULT))
        return box

    def ask_and_export_gguf(self) -> None:
        run = self._run_still_there()
        if run is None:
            return
        quant = self.gguf_type.currentData()
        folder = QFileDialog.getExistingDirectory(self, f"Where to put the GGUF ({quant}) export")
        if folder:
            self.export_gguf(quant, free_name(Path(folder), f"{run.name}-gguf-{quant}"))

    def export_gguf(self, quant: str, target: Path) -> None:
        run = self.state.current_run
        if run is None or self._worker is not None:
            return
        self._gguf_target, self._warnings = target, []
        self.status.setText(f"Exporting GGUF ({esc(quant)}) to {esc(target)}…")
        for button in (self.adapter_button, self.merged_button, self.gguf_button):
            button.setEnabled(False)
        self._worker = run_in_background(
            export_gguf, run, quant, target, emit=self._emit_stage, on_result=self._gguf_done, on_error=self._failed
        )

    def _emit_stage(self, event: Any) -> None:
        """Called by the engine on the worker thread: pass stage texts and warnings on to the main thread."""
        if not shiboken6.isValid(self._stages):
            return
        if isinstance(event, Stage):
            self._stages.changed.emit(event.detail or event.stage)
        elif isinstance(event, Log) and event.level == "warning":
            self._stages.warned.emit(event.message)

    def _warned(self, message: str) -> None:
        self._warnings.append(message)

    def _show_stage(self, text: str) -> None:
        if self._worker is not None and self._gguf_target is not None:
            self.status.setText(f"Exporting GGUF to {esc(self._gguf_target)}… <i>{esc(text)}</i>")

    def _gguf_done(self, result: Any) -> None:
        self._worker = None
        self._gguf_target = None
        self.exports[f"gguf-{result.quant}"] = str(result.file)
        file = Path(result.file)
        size = file.stat().st_size if file.is_file() else result.bytes
        folder = Path(result.folder)
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        v = result.verification
        self.status.setText(
            f"<b style='color:#2a7'>written and read back</b> — GGUF {esc(result.quant)}, "
            f"{v.prompts} held-out prompts compared with the trained model (see the table below)"
        )
        text = (
            f"<p><b>gguf {esc(result.quant)}</b>: {esc(file)} — {human_bytes(size)}"
            f"<br><span style='color:gray'>{esc(', '.join(files))}</span></p>"
            f"{table_html(v.rows())}"
        )
        if v.parted_note():
            text += f"<p style='color:#b35900'>{esc(v.parted_note())}</p>"
        if v.max_logit_diff is not None:
            text += f"<p>max logit difference (transformers' GGUF reader): {v.max_logit_diff:.2e}</p>"
        if v.tokens_agree is not None:
            text += f"<p>llama.cpp tokenises {v.tokens_agree} / {v.prompts} prompts as transformers does</p>"
        if result.ollama_command:
            text += f"<p>Run it in Ollama:</p><pre>{esc(result.ollama_command)}</pre>"
        text += "".join(f"<p style='color:#b35900'>{esc(w)}</p>" for w in self._warnings)
        self.results.append(text)
        self.refresh()

    def _done(self, result: Any) -> None:
        self._worker = None
        self.exports[result.kind] = str(result.path)
        files = sorted(p.name for p in Path(result.path).iterdir())
        self.status.setText(
            f"<b style='color:#2a7'>verified</b> — {result.kind} export reloaded from disk, its output scores "
            f"within {result.verified_max_diff:.2e} of the trained model's (max logit difference)"
        )
        folder = QUrl.fromLocalFile(str(result.path)).toString()
        warned = "".join(f"<br><span style='color:#b35900'>{esc(w)}</span>" for w in self._warnings)
        self.results.append(
            f"<p><b>{result.kind}</b>: {esc(result.path)} — {human_bytes(result.bytes)}, verified "
            f"(max logit difference {result.verified_max_diff:.2e}) · <a href='{folder}'>open the folder</a> "
            f"(its README.md says how to load it)<br><span style='color:gray'>{esc(', '.join(files))}</span>"
            f"{warned}</p>"
        )
        self.refresh()

    def _failed(self, error: BaseException) -> None:
        self._worker = None
        self._gguf_target = None
        message = esc(getattr(error, "message", error))
        self.status.setText(f"<b style='color:#c00'>Export failed</b>: {message}")
        self.refresh()
        self.error(error)

    @property
    def busy(self) -> bool:
        return self._worker is not None


def earlier_exports(run: Path) -> str:
    """The exports the run's log records (made in earlier sessions, or by the command line) as HTML: what each
    is, when it was made, where it went and how it was checked; said where it is no longer there."""
    from adapter_studio.engine.events import Export, iter_events

    try:
        parts = [_export_line(e) for e in iter_events(run / "events.jsonl", only="export") if isinstance(e, Export)]
    except OSError:
        return ""
    return "<p style='color:gray'>Exported before:</p>" + "".join(parts) if parts else ""


def _export_line(event: Any) -> str:
    when = time.strftime("%d %b %Y %H:%M", time.localtime(event.time))
    path = Path(event.path)
    where = QUrl.fromLocalFile(str(path if path.is_dir() else path.parent)).toString()
    there = f"<a href='{where}'>open the folder</a>" if path.exists() else "<i>no longer there</i>"
    check = (f", verified (max logit difference {event.verified_max_diff:.2e})"
             if event.verified_max_diff is not None else "")  # fmt: skip
    return f"<p><b>{esc(event.kind)}</b> ({when}): {esc(path)} — {human_bytes(event.bytes)}{check} · {there}</p>"


def esc(value: object) -> str:
    """Plain text for a rich-text label or the results box (a path or message may hold `<` or `&`)."""
    return html.escape(str(value), quote=False)


def table_html(rows: list[list[str]]) -> str:
    """A header row and body rows as an HTML table, cells escaped."""
    if not rows:
        return ""
    head = "".join(f"<th align='left'>{esc(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table border='1' cellspacing='0' cellpadding='4'><tr>{head}</tr>{body}</table>"


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `name-2`, `name-3`… where an export is there already: the window names the export's
    folder itself, and a second export of a run was refused with the command line's "--out: … already exists —
    pick a new folder name" (exports never overwrite)."""
    target, n = folder / name, 1
    while target.exists():
        n += 1
        target = folder / f"{name}-{n}"
    return target
