"""Step 1: pick the base model and see what it is and how big."""

from __future__ import annotations

from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.models.loading import (
    EMBEDDED_MINILM,
    EMBEDDED_SMOLLM2,
    quantization_problem,
    summarize_model,
)
from adapter_studio.engine.spec import ModelSpec
from adapter_studio.gui.dialogs import last_folder, remember_folder
from adapter_studio.gui.form_builder import SpecForm
from adapter_studio.gui.pages.base import Page, wrapped_label
from adapter_studio.gui.worker import run_in_background
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

QUANTIZED = ("4bit", "8bit")


def _quantization_problems() -> dict[str, UserError | None]:
    """Why each quantised base cannot load here (None: it can)."""
    return {kind: quantization_problem(kind) for kind in QUANTIZED}


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def _summary_of(source: str) -> tuple[str, Any]:
    """The model's summary with the source it is of (an error carries it as `source`)."""
    try:
        return source, summarize_model(source)
    except Exception as e:
        e.source = source  # type: ignore[attr-defined]
        raise


class ModelPage(Page):
    title = "Model"
    hint = "A Hugging Face model folder, a .gguf file, or a model id already on this machine."

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        row = QHBoxLayout()
        self.source = QLineEdit()
        self.source.setObjectName("modelSource")
        self.source.setPlaceholderText("folder, file.gguf or org/name")
        self.source.returnPressed.connect(lambda: self.choose(self.source.text()))
        row.addWidget(self.source)
        for label, slot in (("Folder…", self.browse_folder), ("GGUF file…", self.browse_gguf)):
            button = QPushButton(label)
            button.clicked.connect(slot)
            row.addWidget(button)
        self.layout_.addLayout(row)
        quick = QHBoxLayout()
        for label, source in (
            ("Embedded SmolLM2-135M-Instruct", EMBEDDED_SMOLLM2),
            ("Embedded MiniLM (classifier)", EMBEDDED_MINILM),
        ):
            button = QPushButton(label)
            button.clicked.connect(lambda _=False, s=source: self.choose(s))
            quick.addWidget(button)
        quick.addStretch()
        self.layout_.addLayout(quick)
        form = QFormLayout()
        self.fields = {key: QLabel("—") for key in ("name", "architecture", "parameters", "layers", "size on disk")}
        for key, label in self.fields.items():
            label.setObjectName(f"model_{key.replace(' ', '_')}")
            form.addRow(key.capitalize(), label)
        self.layout_.addLayout(form)
        self.status = wrapped_label("modelStatus")  # a long message wraps rather than widening the window
        self.layout_.addWidget(self.status)
        loading = QGroupBox("How to load it: device, precision, quantization")  # "Loading" read as a status
        box = QVBoxLayout(loading)
        self.loading_form = SpecForm(ModelSpec, ModelSpec(source="-"), exclude=("source",))
        self.loading_form.setObjectName("modelLoadingForm")
        self.loading_form.changed.connect(self._loading_edited)
        box.addWidget(self.loading_form)
        self.quantization_note = wrapped_label("quantizationNote")
        box.addWidget(self.quantization_note)
        self.layout_.addWidget(loading)
        self.quantization_problems: dict[str, UserError | None] | None = None  # None: not checked yet
        self._offer_quantization()
        self.layout_.addStretch()
        state.model_changed.connect(self.refresh)
        self._worker = None

    def browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", last_folder("model"))
        if folder:
            remember_folder("model", folder)
            self.choose(folder)

    def browse_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "GGUF model", last_folder("model"), "GGUF models (*.gguf)")
        if path:
            remember_folder("model", path)
            self.choose(path)

    def choose(self, source: str) -> None:
        source = source.strip()
        if source:
            self.state.set_model(source)

    def _offer_quantization(self) -> None:
        """Check off the main thread (it imports torch) whether 4-bit/8-bit bases can load here."""
        self._quant_worker = run_in_background(
            _quantization_problems, on_result=self._quantization_checked, on_error=self._quantization_check_failed
        )
        self._show_quantization_note()

    def _quantization_check_failed(self, error: BaseException) -> None:
        problem = UserError(f"the check failed ({type(error).__name__}: {error})", fix="choose none")
        self._quantization_checked(dict.fromkeys(QUANTIZED, problem))

    def _quantization_checked(self, problems: dict[str, UserError | None]) -> None:
        self.quantization_problems = problems
        widget = self.loading_form.widgets["quantization"]
        unavailable = problems["4bit"] or problems["8bit"]
        description = ModelSpec.model_fields["quantization"].description or ""
        widget.setToolTip(description + (f" Not on this machine: {unavailable.what}." if unavailable else ""))
        self._show_quantization_note()

    def _show_quantization_note(self) -> None:
        """Say something only when a quantised base is chosen: a note under "none" read as if the setting
        were wrong (issue 26). The choice stays open on any machine, so a spec asking for 4-bit can be set
        back to none here."""
        chosen = self.loading_form.values()["quantization"]
        self.quantization_note.setVisible(chosen in QUANTIZED)
        if chosen not in QUANTIZED:
            self.quantization_note.clear()
        elif self.quantization_problems is None:
            self.quantization_note.setText(f"Checking whether this machine can load a {chosen} base…")
        elif (problem := self.quantization_problems[chosen]) is not None:
            self.quantization_note.setText(
                f"<span style='color:#c00'>Not on this machine: {problem.what}.</span> "
                "A run would stop at the start: choose none to train here."
            )
        else:
            shrink = "4×" if chosen == "4bit" else "2×"
            self.quantization_note.setText(
                f"A {chosen} base (QLoRA) takes about {shrink} less memory for the base's weights; the adapter "
                "trains in float32."
            )

    def _loading_edited(self, values: dict) -> None:  # type: ignore[type-arg]
        self._show_quantization_note()
        if self.state.model is None:
            self.status.setText("Pick a model first; these settings apply to it.")
            return
        self.state.model = self.state.model.model_copy(update=values)
        self.state.spec_edited.emit()

    def refresh(self) -> None:
        if self.state.model is None:
            return
        source = self.state.model.source
        self.source.setText(source)
        self.loading_form.set_values(self.state.model)
        self._show_quantization_note()  # set_values is silent
        self.status.setText("Reading the model's configuration…")
        for label in self.fields.values():
            label.setText("…")
        self._worker = run_in_background(_summary_of, source, on_result=self._show, on_error=self._failed)

    def _current(self, source: str | None) -> bool:
        """Whether an answer is about the model chosen now: a slow reading of an earlier choice came back after
        a quick one of the next, and its error dialog (or its summary) took the new model's place."""
        return self.state.model is not None and self.state.model.source == source

    def _show(self, answer: tuple[str, Any]) -> None:
        source, summary = answer
        if not self._current(source):
            return
        self.state.set_model_summary(summary)
        self.fields["name"].setText(summary.name)
        self.fields["architecture"].setText(f"{summary.architecture} ({summary.model_type})")
        self.fields["parameters"].setText(f"{human_count(summary.params)} ({summary.params:,})")
        self.fields["layers"].setText(f"{summary.num_layers} blocks × {summary.hidden_size} wide")
        self.fields["size on disk"].setText(human_bytes(summary.file_bytes) if summary.file_bytes else "—")
        if summary.kind == "config":  # an architecture without weights: costs, not training
            ready = "Its costs are on the Compare page; to train, pick a model with weights."
            note = summary.note or "An architecture without weights"
        else:
            ready, note = "Ready. The weights load when training starts.", summary.note
        self.status.setText(f"{note}. {ready}" if note else ready)

    def _failed(self, error: BaseException) -> None:
        if hasattr(error, "source") and not self._current(error.source):  # untagged (it failed before reading
            return  # the model, e.g. its imports): the current choice's, said
        self.status.setText(f"Cannot use this model: {getattr(error, 'message', error)}")
        for label in self.fields.values():
            label.setText("—")
        self.error(error)
