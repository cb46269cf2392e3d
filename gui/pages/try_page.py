"""Step 7: try the trained run — the base and the tuned model answer the same prompt side by side."""

from __future__ import annotations

import html
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.training.checkpoints import checkpoint_label
from adapter_studio.gui.pages.base import Page, number_cell, wrapped_label
from adapter_studio.gui.spin_boxes import DoubleSpinBox, SpinBox
from adapter_studio.gui.worker import run_in_background
from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import create_worker

HELD_OUT_SHOWN = 50


def _examples_shown(shown: int, held: int) -> str:
    """How many held-out rows the list offers, of how many the run held out (the Data page's count)."""
    return f"{shown} held-out examples." if shown >= held else f"{shown} of the {held:,} held-out examples listed."
LABEL_CHARS = 90  # of a held-out row in the list; the whole message is its tooltip
SHARED_OPENING_CHARS = 12  # a common opening at least this long is left out of single-paragraph rows
PANES = ("base", "tuned")
RANDOM_HEAD_NOTE = (
    "The base model's classifier head is untrained (randomly initialised), so its probabilities are "
    "chance: they are shown only for reference."
)


def example_labels(messages: list[str], width: int = LABEL_CHARS) -> list[str]:
    """One line per held-out message that starts with what tells it from the others.

    Cut to its first characters, every demo row read "Convert the date to ISO 8601 (YYYY-MM…": the input,
    the part that differs, was cut off (issue 26). So a row's paragraphs are reordered: those no other row
    has first (later ones before earlier ones: an alpaca input follows its instruction), those it shares
    after. A row of one paragraph loses the opening every row shares ("…" marks it)."""
    rows = [[" ".join(p.split()) for p in re.split(r"\n+", m) if p.strip()] for m in messages]
    counts = Counter(p for paragraphs in rows for p in set(paragraphs))
    opening = _shared_opening([" ".join(m.split()) for m in messages])
    labels = []
    for message, paragraphs in zip(messages, rows, strict=True):
        if len(paragraphs) > 1:
            order = sorted(range(len(paragraphs)), key=lambda i: (counts[paragraphs[i]] > 1, -i))
            text = " — ".join(paragraphs[i] for i in order)
        else:
            flat = " ".join(message.split())
            text = "…" + flat[len(opening) :] if opening and len(flat) > len(opening) else flat
        labels.append(text if len(text) <= width else text[: width - 1].rstrip() + "…")
    return labels


def _shared_opening(texts: list[str]) -> str:
    """The words every text starts with (through the last space they share), if long enough to matter."""
    if len(texts) < 2:
        return ""
    common = texts[0]
    for text in texts[1:]:
        while not text.startswith(common):
            common = common[:-1]
    common = common[: common.rfind(" ") + 1]
    return common if len(common) >= SHARED_OPENING_CHARS else ""


class TryPage(Page):
    title = "Try"
    hint = (
        "Ask the base and the tuned model the same thing. Pick a held-out example (rows the run did not "
        "train on) to compare with the expected answer. Temperature 0 means greedy, repeatable answers."
    )

    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        self.playground: Any = None  # adapter_studio.engine.inference.playground.Playground once loaded
        self.held_out: list[Any] = []  # its HeldOutExamples, in list order
        self._picked: Any = None  # the HeldOutExample last put in the prompt box
        self._picked_pair = ""  # the second text it brought (classifiers of text pairs)
        self._run_line = ""  # which run and checkpoint answer, said again after each answer
        self._cut_note = ""  # where the answers were cut at the model's positions
        self._loaded_run: Path | None = None
        self._loading_run: Path | None = None
        self._loader: Any = None
        self._streams: dict[str, Any] = {}
        self._classifier: Any = None
        self._stop = threading.Event()

        self.status = wrapped_label("tryStatus", NO_RUN)
        self.layout_.addWidget(self.status)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._held_out_panel())
        split.addWidget(self._prompt_panel())
        split.setStretchFactor(1, 3)
        split.setSizes([380, 1000])  # room for a held-out row's input and the start of its instruction
        self.layout_.addWidget(split, 1)

        state.run_changed.connect(self._run_changed)
        self._set_mode("generation")
        self._update_buttons()

    # --- building ---------------------------------------------------------------------------------

    def _held_out_panel(self) -> QWidget:
        box = QGroupBox("Held-out examples")
        layout = QVBoxLayout(box)
        self.examples = QListWidget()
        self.examples.setObjectName("heldOutList")
        self.examples.currentRowChanged.connect(self.pick_example)
        layout.addWidget(self.examples, 2)
        layout.addWidget(QLabel("Expected answer"))
        self.expected = QPlainTextEdit()
        self.expected.setObjectName("expectedAnswer")
        self.expected.setReadOnly(True)
        layout.addWidget(self.expected, 1)
        return box

    def _prompt_panel(self) -> QWidget:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        self.prompt = PromptBox()
        self.prompt.submitted.connect(self.generate)
        self.prompt.setObjectName("promptBox")
        self.prompt.setPlaceholderText("Your message to the model…")
        self.prompt.setMaximumHeight(120)
        self.prompt.textChanged.connect(self._prompt_edited)
        layout.addWidget(self.prompt)
        self.text_pair = QLineEdit()
        self.text_pair.setObjectName("textPair")
        self.text_pair.setPlaceholderText("Second text (for sentence-pair classifiers; optional)")
        layout.addWidget(self.text_pair)

        controls = QHBoxLayout()
        # A run that routes by task (Poly) answers as one of its tasks: which one, the person picks.
        self.task_label = QLabel("Task")
        self.task_choice = QComboBox()
        self.task_choice.setObjectName("taskChoice")
        self.task_choice.setToolTip("The task the tuned model answers as: the run learnt a mixture of skills per task.")
        controls.addWidget(self.task_label)
        controls.addWidget(self.task_choice)
        self.task_label.setVisible(False)
        self.task_choice.setVisible(False)
        self.temperature = self._spin(DoubleSpinBox(), "temperature", 0.0, 2.0, 0.0, step=0.1)
        self.temperature.setToolTip("0: greedy (always the most likely token); higher: more varied answers.")
        self.top_p = self._spin(DoubleSpinBox(), "topP", 0.05, 1.0, 0.95, step=0.05)
        self.top_p.setToolTip("Sample only from the most likely tokens that together have this probability.")
        self.max_new_tokens = self._spin(SpinBox(), "maxNewTokens", 1, 4096, 128)
        self.max_new_tokens.setToolTip("The longest answer, in tokens.")
        self.sampling_labels = []
        for text, widget in (("Temperature", self.temperature), ("Top-p", self.top_p),
                             ("Max new tokens", self.max_new_tokens)):  # fmt: skip
            label = QLabel(text)
            self.sampling_labels.append(label)
            controls.addWidget(label)
            controls.addWidget(widget)
        controls.addStretch()
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generateButton")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.generate)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stopGenerationButton")
        self.stop_button.clicked.connect(self.stop)
        escape = QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        escape.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.stop_button.setToolTip("Stop both answers (Esc)")
        self.generate_button.setToolTip("Ctrl+Return in the message box")
        controls.addWidget(self.generate_button)
        controls.addWidget(self.stop_button)
        layout.addLayout(controls)

        self.answers = QWidget()
        panes = QGridLayout(self.answers)
        panes.setContentsMargins(0, 0, 0, 0)
        self.panes: dict[str, QPlainTextEdit] = {}
        for column, (which, heading) in enumerate((("base", "Base model"), ("tuned", "Tuned model"))):
            panes.addWidget(QLabel(f"<b>{heading}</b>"), 0, column)
            pane = QPlainTextEdit()
            pane.setObjectName(f"{which}Answer")
            pane.setReadOnly(True)
            panes.addWidget(pane, 1, column)
            self.panes[which] = pane
        layout.addWidget(self.answers, 1)

        self.classification = QWidget()
        table_layout = QVBoxLayout(self.classification)
        table_layout.setContentsMargins(0, 0, 0, 0)
        self.probabilities = QTableWidget(0, 3)
        self.probabilities.setObjectName("probabilityTable")
        self.probabilities.setHorizontalHeaderLabels(["Label", "Base model", "Tuned model"])
        self.probabilities.horizontalHeader().setStretchLastSection(True)
        self.probabilities.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        table_layout.addWidget(self.probabilities, 1)
        note = wrapped_label("randomHeadNote", RANDOM_HEAD_NOTE)
        note.setStyleSheet("color: gray")
        table_layout.addWidget(note)
        layout.addWidget(self.classification, 1)
        return panel

    def _spin(self, spin: Any, name: str, low: float, high: float, value: float, step: float = 1) -> Any:
        spin.setObjectName(name)
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setValue(value)
        return spin

    def _set_mode(self, mode: str) -> None:
        classify = mode == "classification"
        self.answers.setVisible(not classify)
        self.classification.setVisible(classify)
        self.text_pair.setVisible(classify)
        for widget in (self.temperature, self.top_p, self.max_new_tokens, *self.sampling_labels):
            widget.setVisible(not classify)
        self.generate_button.setText("Classify" if classify else "Generate")
        self.prompt.setPlaceholderText("A text to classify…" if classify else "Your message to the model…")

    # --- loading the run --------------------------------------------------------------------------

    def on_shown(self) -> None:
        if self.playground is not None and not self.busy and self._newer_checkpoint():
            self._loaded_run = None  # trained on since (resumed): its newest checkpoint answers, not the one loaded
        self.load_current_run()

    def _newer_checkpoint(self) -> bool:
        from adapter_studio.engine.training.checkpoints import latest_checkpoint

        latest = latest_checkpoint(Path(self._loaded_run) / "checkpoints") if self._loaded_run else None
        return latest is not None and latest != self.playground.tuned.checkpoint  # type: ignore[union-attr]

    def _run_changed(self) -> None:
        if self.state.current_run != self._loaded_run:
            self.stop()
            self.playground = None
            self._loaded_run = None
            self.held_out = []
            self._picked = None
            self.examples.clear()
            self._update_buttons()
            if self.state.current_run is None:  # it said "Done — run …" of a run no longer chosen (or deleted)
                self.status.setText(NO_RUN)
        if self.isVisible():
            self.load_current_run()

    def load_current_run(self) -> None:
        """Load the current run's models in the background, unless they are loaded or loading."""
        from adapter_studio.engine.inference.playground import Playground

        run = self.state.current_run
        if run is None or run == self._loaded_run or self._loader is not None:
            return
        self._loading_run = run
        self.status.setText(f"Loading <b>{run.name}</b>: the tuned model and its base…")
        self._loader = run_in_background(Playground.open, run, on_result=self._loaded, on_error=self._load_failed)
        self._update_buttons()

    def _loaded(self, playground: Any) -> None:
        self._loader = None
        if self._loading_run != self.state.current_run:  # the run changed while this one loaded
            self.load_current_run()
            return
        self.playground = playground
        self._loaded_run = self._loading_run
        classify = playground.task == "classification"
        self._set_mode("classification" if classify else "generation")
        self.examples.clear()
        self.expected.clear()
        self.held_out = playground.held_out_examples(HELD_OUT_SHOWN)
        for label, e in zip(example_labels([e.message for e in self.held_out]), self.held_out, strict=True):
            self.examples.addItem(label)
            self.examples.item(self.examples.count() - 1).setToolTip(f"{e.message}\n\nExpected: {e.expected}")
        self.task_choice.clear()
        self.task_choice.addItems(playground.tasks)
        self.task_label.setVisible(bool(playground.tasks))
        self.task_choice.setVisible(bool(playground.tasks))
        method = playground.spec.method
        source = ("the same weights with the adapter switched off" if playground.shares_weights
                  else "a second, untouched copy of the base model")  # fmt: skip
        checkpoint = checkpoint_label(playground.tuned.checkpoint)
        self._run_line = f"run <b>{self._loaded_run.name}</b>, {method.title}, checkpoint {checkpoint}"
        self.status.setText(
            f"Run <b>{self._loaded_run.name}</b> — {method.title}, checkpoint {checkpoint}. "
            f"Base answers come from {source}. {_examples_shown(self.examples.count(), playground.held_out_count)}"
        )
        self._update_buttons()

    def _load_failed(self, error: BaseException) -> None:
        self._loader = None
        self.status.setText(f"<b style='color:#c00'>Cannot load this run</b>: {getattr(error, 'message', error)}")
        self._update_buttons()
        self.error(error)

    # --- held-out examples ------------------------------------------------------------------------

    def _prompt_edited(self) -> None:
        """A message of one's own in place of the picked example: its expected answer, and a classifier's second
        text the example brought, no longer belong to it (a typed text was classified with the old pair)."""
        picked = self._picked
        if picked is None or self.prompt.toPlainText().strip() == picked.message.strip():
            return
        self._picked = None
        self.expected.clear()
        self.examples.clearSelection()  # the list no longer shows what is asked
        if self.text_pair.text() == self._picked_pair:
            self.text_pair.clear()

    def pick_example(self, row: int) -> None:
        """Fill the prompt with held-out example `row` and show its expected answer."""
        if self.playground is None or not 0 <= row < len(self.held_out):
            return
        example = self.held_out[row]
        self.prompt.setPlainText(example.message)
        self.expected.setPlainText(example.expected)
        self._picked = example
        if example.earlier:
            self.status.setText(f"This example ends a conversation: its {example.earlier} earlier turns go "
                                "before the message while you leave it as it is.")  # fmt: skip
        if example.task is not None:
            self.task_choice.setCurrentText(example.task)
        if self.playground.task == "classification":
            self._picked_pair = self.playground.held_out_pair(row) or ""
            self.text_pair.setText(self._picked_pair)

    # --- generating -------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self._streams) or self._classifier is not None or self._loader is not None

    def _update_buttons(self) -> None:
        ready = self.playground is not None
        self.generate_button.setEnabled(ready and not self.busy)
        self.stop_button.setEnabled(bool(self._streams))

    def generate(self) -> None:
        """Stream the base and tuned answers into their panes (or classify, for a classifier run)."""
        if self.playground is None or self.busy:
            return
        text = self.prompt.toPlainText().strip()
        if not text:
            self.status.setText("Type a message first, or pick a held-out example.")
            return
        if self.playground.task == "classification":
            self._classify(text)
            return
        picked = self._picked
        rendered = picked.prompt if picked is not None and text == picked.message.strip() else None  # as held out
        wanted = self.max_new_tokens.value()
        try:  # said once here, not by each answer's thread
            room = self.playground.room_for_answer(self.playground.prompt_tokens(text, rendered), wanted)
        except UserError as e:
            self.status.setText(html.escape(f"{e.what} — {e.fix}"))
            return
        # Answers cut at the model's positions ended "Done" with a dozen characters, unexplained.
        self._cut_note = (f" (answers end at the model's {self.playground.context_limit:,} positions: {room:,} "
                          "tokens after this message)") if room < wanted else ""  # fmt: skip
        self._stop = threading.Event()
        for which in PANES:
            self.panes[which].clear()
            worker = create_worker(
                self.playground.stream, which, text,
                temperature=self.temperature.value(), top_p=self.top_p.value(),
                max_new_tokens=self.max_new_tokens.value(), stop_event=self._stop, task=self._task(),
                rendered=rendered, _start_thread=False,
            )  # fmt: skip
            worker.yielded.connect(lambda chunk, w=which: self._append(w, chunk))
            worker.errored.connect(lambda error, w=which: self._stream_failed(w, error))
            worker.finished.connect(lambda w=which: self._stream_finished(w))
            self._streams[which] = worker
        self.status.setText("Generating…")
        self._update_buttons()
        for worker in self._streams.values():
            worker.start()

    def _task(self) -> str | None:
        """The task the tuned model answers as (a run that routes by task), else None."""
        routes = self.playground is not None and self.playground.tasks
        return (self.task_choice.currentText() or None) if routes else None

    def stop(self) -> None:
        """End both answers after their current token."""
        if self._streams:
            self._stop.set()
            self.status.setText("Stopping…")

    def _append(self, which: str, chunk: str) -> None:
        pane = self.panes[which]
        pane.moveCursor(QTextCursor.MoveOperation.End)
        pane.insertPlainText(chunk)

    def _stream_failed(self, which: str, error: BaseException) -> None:
        self.panes[which].appendPlainText(f"\n[generation failed: {getattr(error, 'message', error)}]")
        self.error(error)

    def _stream_finished(self, which: str) -> None:
        self._streams.pop(which, None)
        if not self._streams:
            self.status.setText(("Stopped" if self._stop.is_set() else "Done") + f" — {self._run_line}{self._cut_note}")
        self._update_buttons()

    # --- classifying ------------------------------------------------------------------------------

    def _classify(self, text: str) -> None:
        pair = self.text_pair.text().strip() or None
        self.status.setText("Classifying…")
        self._classifier = run_in_background(
            self.playground.classify, text, pair, self._task(), on_result=self._classified,
            on_error=self._classify_failed,
        )
        self._update_buttons()

    def _classified(self, probabilities: dict[str, dict[str, float]]) -> None:
        self._classifier = None
        base, tuned = probabilities["base"], probabilities["tuned"]
        labels = sorted(tuned, key=tuned.__getitem__, reverse=True)
        self.probabilities.setRowCount(len(labels))
        for row, label in enumerate(labels):
            self.probabilities.setItem(row, 0, QTableWidgetItem(label))
            for column, value in enumerate((f"{base[label]:.1%}", f"{tuned[label]:.1%}"), start=1):
                number_cell(self.probabilities, row, column, value)
        self.status.setText(f"Tuned model: <b>{labels[0]}</b> ({tuned[labels[0]]:.1%}).")
        self._update_buttons()

    def _classify_failed(self, error: BaseException) -> None:
        self._classifier = None
        self.status.setText(f"<b style='color:#c00'>Classification failed</b>: {getattr(error, 'message', error)}")
        self._update_buttons()
        self.error(error)


NO_RUN = "No run yet: train one on the Train page, or pick one on the Runs page."


class PromptBox(QPlainTextEdit):
    """The message box: Ctrl+Return generates here (the window's own Ctrl+Return, Start training, started a run
    unseen from this page and swapped the run being tried for it), and Tab moves on (it typed tabs, and
    Generate could not be reached by keyboard)."""

    submitted = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setTabChangesFocus(True)

    @staticmethod
    def _is_submit(event: QKeyEvent) -> bool:
        """Ctrl+Return alone (Ctrl+Shift+Return stays the window's Resume)."""
        modifiers = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier  # Enter on the number pad
        return event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and modifiers == Qt.KeyboardModifier.ControlModifier

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ShortcutOverride and self._is_submit(event):  # type: ignore[arg-type]
            event.accept()  # the key comes here, not to the window's shortcut
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self._is_submit(event):
            self.submitted.emit()
            return
        super().keyPressEvent(event)
