"""The main window: the steps a person follows on the left, one page each on the right."""

from __future__ import annotations

import shlex
from importlib import metadata
from pathlib import Path
from typing import Any

from adapter_studio.engine.errors import UserError
from adapter_studio.engine.methods import METHODS
from adapter_studio.engine.spec import load_spec_file
from adapter_studio.gui.dialogs import remembered_runs_dir, show_error, unwritable_note
from adapter_studio.gui.garbage_collection import collect_garbage_on_gui_thread
from adapter_studio.gui.last_session import last_place, last_session, save_session
from adapter_studio.gui.pages.base import Page
from adapter_studio.gui.pages.compare_page import ComparePage
from adapter_studio.gui.pages.data_page import DataPage
from adapter_studio.gui.pages.evaluate_page import EvaluatePage
from adapter_studio.gui.pages.export_page import ExportPage
from adapter_studio.gui.pages.method_page import MethodPage
from adapter_studio.gui.pages.model_page import ModelPage
from adapter_studio.gui.pages.runs_page import RunsPage
from adapter_studio.gui.pages.train_page import TrainPage
from adapter_studio.gui.pages.try_page import TryPage
from adapter_studio.gui.state import StudioState
from adapter_studio.gui.theme import THEMES
from adapter_studio.resources import FOLDER
from PySide6.QtCore import QByteArray, QEventLoop, QSettings
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QWidget,
)

RESOURCES = FOLDER
DEMO_SPEC = RESOURCES / "demo" / "demo.yaml"


def library_versions() -> str:
    parts = []
    for name in ("torch", "transformers", "peft"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} missing")
    return " · ".join(parts)


class MainWindow(QMainWindow):
    def __init__(self, state: StudioState | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Adapter Studio")
        collect_garbage_on_gui_thread()
        self.state = state or StudioState(runs_dir=remembered_runs_dir())
        self.steps = QListWidget()
        self.steps.setObjectName("steps")
        self.steps.setFixedWidth(170)
        self.stack = QStackedWidget()
        self.pages: dict[str, Page] = {}
        for number, (key, page) in enumerate(self._make_pages(), start=1):
            self.pages[key] = page
            self.steps.addItem(f"{number} · {page.title}")
            self.stack.addWidget(page)
        self.steps.currentRowChanged.connect(self._show_page)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.steps)
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self._menus()
        self.device_label = QLabel(f"device: detected when training starts · {library_versions()}")
        self.device_label.setObjectName("statusDevice")
        self.statusBar().addPermanentWidget(self.device_label)
        self.train_page.controller.events.connect(self._show_device)
        sweep = self.runs_page.sweep
        self.train_page.controller.done.connect(sweep.run_finished)
        self.train_page.controller.failed.connect(sweep.run_failed_to_start)
        sweep.start_job = self.train_page.run_job  # the automatic search runs its trials through the Train page
        self.train_page.controller.events.connect(sweep.job_events)
        self.steps.setCurrentRow(0)
        settings = QSettings()
        geometry = settings.value("window/geometry")
        # A settings file edited by hand (geometry=hello) read back as text: the window would not open.
        if not (isinstance(geometry, QByteArray) and self.restoreGeometry(geometry)):
            self.resize(1280, 820)

    def _make_pages(self) -> list[tuple[str, Page]]:
        return [
            ("model", ModelPage(self.state)),
            ("data", DataPage(self.state)),
            ("method", MethodPage(self.state)),
            ("compare", ComparePage(self.state)),
            ("train", TrainPage(self.state)),
            ("runs", RunsPage(self.state, on_resume=self._resume_run, start_run=self._start_sweep_run)),
            ("try", TryPage(self.state)),
            ("evaluate", EvaluatePage(self.state)),
            ("export", ExportPage(self.state)),
        ]

    @property
    def train_page(self) -> TrainPage:
        return self.pages["train"]  # type: ignore[return-value]

    @property
    def runs_page(self) -> RunsPage:
        return self.pages["runs"]  # type: ignore[return-value]

    def _start_sweep_run(self, spec: Any) -> None:
        self.train_page.run_spec(spec)

    def _show_page(self, row: int) -> None:
        if gone := self.state.forget_gone_run():
            self.statusBar().showMessage(gone, 30_000)
        self.stack.setCurrentIndex(row)
        page = self.stack.currentWidget()
        if isinstance(page, Page):
            page.on_shown()

    def _resume_run(self, run_dir: Path) -> None:
        if self.train_page.controller.running:  # the button did nothing, silently, on the Train page
            self.train_page.error(f"A run is training: stop it (Train page) before resuming {run_dir.name}.")
            return
        self.go_to("train")
        self.train_page.resume(run_dir)

    def _resume_from_menu(self) -> None:
        """The Train page's stopped run, else the one stopped run picked on the Runs page (it did nothing there,
        silently), else said."""
        from adapter_studio.engine.runs import RESUMABLE

        train = self.train_page
        picked = [r.path for r in self.runs_page.selected_runs() if r.status in RESUMABLE]
        if train.controller.running or (train.run_dir is not None and train.last_status in RESUMABLE):
            self._on_train_page(train.resume)
        elif len(picked) == 1:
            self._resume_run(picked[0])
        else:
            self.statusBar().showMessage("Nothing to resume: stop a run on the Train page, or pick one stopped, "
                                         "failed or interrupted run on the Runs page", 15_000)  # fmt: skip

    def _on_train_page(self, act: Any) -> None:
        self.go_to("train")
        act()

    def go_to(self, key: str) -> None:
        self.steps.setCurrentRow(list(self.pages).index(key))

    def _menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        for text, shortcut, slot in (
            ("Open spec…", QKeySequence.StandardKey.Open, self.open_spec),
            ("Save spec…", QKeySequence.StandardKey.Save, self.save_spec),
            ("Copy as command line", "Ctrl+Shift+C", self.copy_command),
            ("Load the demo", "Ctrl+D", self.load_demo),
            ("Quit", "Ctrl+Q", self.close),  # StandardKey.Quit is no key at all on Windows and some Linux desktops
        ):
            action = QAction(text, self)
            action.setShortcut(shortcut)
            action.triggered.connect(slot)
            file_menu.addAction(action)
        settings_menu = self.menuBar().addMenu("&Settings")
        theme_menu = settings_menu.addMenu("Theme")
        group = QActionGroup(self)
        current = str(QSettings().value("appearance/theme", "system"))
        for choice in THEMES:
            action = QAction(choice.capitalize(), self, checkable=True)
            action.setChecked(choice == current)
            action.triggered.connect(lambda _=False, c=choice: self.set_theme(c))
            group.addAction(action)
            theme_menu.addAction(action)
        runs_action = QAction("Runs folder…", self)
        runs_action.triggered.connect(self.choose_runs_dir)
        settings_menu.addAction(runs_action)
        run_menu = self.menuBar().addMenu("&Run")
        # Start and Resume show the Train page (a run started from another page trained unseen); the slots are
        # called without the action's `checked` (Resume read False as its run folder: "Unexpected error").
        for text, shortcut, slot in (
            ("Start training", "Ctrl+Return", lambda: self._on_train_page(self.train_page.start)),
            ("Stop", "Ctrl+.", lambda: self.train_page.stop()),
            ("Resume", "Ctrl+Shift+Return", self._resume_from_menu),
        ):
            action = QAction(text, self)
            action.setShortcut(shortcut)
            action.triggered.connect(slot)
            run_menu.addAction(action)
        help_menu = self.menuBar().addMenu("&Help")
        for text, slot in (("Getting started", self.show_welcome), ("Keyboard shortcuts", self.show_shortcuts)):
            action = QAction(text, self)
            action.triggered.connect(slot)
            help_menu.addAction(action)
        for i in range(len(self.pages)):
            action = QAction(self)
            action.setShortcut(f"Ctrl+{i + 1}")
            action.triggered.connect(lambda _=False, row=i: self.steps.setCurrentRow(row))
            self.addAction(action)

    # --- everyday comfort ---------------------------------------------------------------------------
    def _show_device(self, events: list[object]) -> None:
        from adapter_studio.engine.events import Started

        for event in events:
            if isinstance(event, Started):
                self.device_label.setText(f"device: {event.device}, {event.precision} · {library_versions()}")

    def set_theme(self, choice: str) -> None:
        from adapter_studio.gui.theme import apply_theme

        apply_theme(QApplication.instance(), choice)  # type: ignore[arg-type]

    def choose_runs_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Runs folder", self.state.runs_dir)
        if folder:
            self.state.set_runs_dir(folder)
            self.state.run_changed.emit()
            # Said here too: the Runs page, which says it beside the folder, may not be open.
            note = unwritable_note(Path(folder))
            self.statusBar().showMessage(f"Runs folder: {folder}{note}", 30_000 if note else 8000)

    def welcome_if_first_run(self) -> None:
        settings = QSettings()
        if not settings.value("welcome/shown", False, type=bool):
            settings.setValue("welcome/shown", True)
            self.show_welcome()

    def show_welcome(self) -> None:
        box = QMessageBox(self)
        box.setObjectName("welcome")
        box.setWindowTitle("Welcome to Adapter Studio")
        box.setText(
            "<h3>Fine-tune a language model</h3><p>The pages on the left, in order; the main ones:</p>"
            "<ol><li><b>Model</b>: a folder, a .gguf file or a hub id.</li>"
            "<li><b>Data</b>: your JSON, JSONL, CSV, Parquet or text file.</li>"
            f"<li><b>Method</b>: LoRA or any of {len(METHODS) - 1} others; see the costs on the way.</li>"
            "<li><b>Train</b>: watch loss and memory live; stop and resume at will.</li>"
            "<li><b>Export</b>: an adapter for peft, a merged model, or a checked GGUF file.</li></ol>"
            "<p>Between them, <b>Compare</b> sets the methods' costs side by side, <b>Runs</b> keeps every run, "
            "and <b>Try</b> and <b>Evaluate</b> put the tuned model beside the base.</p>"
            "<p>The demo is ready: SmolLM2-135M-Instruct learns to write dates in ISO form (150 steps: about "
            "three minutes on a 2-core CPU with nothing else running, less on a GPU). Open your own data on the "
            "Data page and the app's defaults are used for it.</p>"
        )
        demo = box.addButton("Train the demo", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Look around first", QMessageBox.ButtonRole.RejectRole)
        demo.clicked.connect(self.start_demo)
        box.open()

    def start_demo(self) -> None:
        self.load_demo()
        self.go_to("train")
        self.train_page.start()

    def show_shortcuts(self) -> None:
        QMessageBox.information(
            self,
            "Keyboard shortcuts",
            "Ctrl+1 … Ctrl+9: go to a step\nCtrl+Return: start training (on the Try page's message box: "
            "generate)\nCtrl+.: stop training\nEsc: stop the answers (Try page)\n"
            "Ctrl+Shift+Return: resume\nCtrl+O / Ctrl+S: open / save a spec\nCtrl+Shift+C: copy as command line\n"
            "Ctrl+D: load the demo\nCtrl+Q: quit",
        )

    # --- specs ------------------------------------------------------------------------------------
    def apply_spec_file(self, path: str | Path, overrides: list[str] | None = None, demo: bool = False) -> None:
        spec = load_spec_file(path, overrides)
        self.state.load_spec(spec, demo=demo)
        # A spec opened that names its runs folder trains there (this session); the demo's `runs`, and a run's
        # own saved spec (Clone on the Runs page), leave the folder the person chose.
        if not demo and "output_dir" in spec.model_fields_set:
            self.state.runs_dir = str(Path(spec.output_dir).expanduser().resolve())

    def load_demo(self) -> None:
        try:
            self.apply_spec_file(DEMO_SPEC, demo=True)
        except UserError as e:
            show_error(self, e)

    def restore_session(self) -> bool:
        """Open the set-up the window was last closed with; False (then the demo opens) where none was kept, or
        its model or data is gone (said in the status bar)."""
        try:
            spec = last_session()
        except UserError as e:
            self.statusBar().showMessage(f"The last session could not be opened ({e.message}): the demo instead",
                                         20_000)  # fmt: skip
            return False
        if spec is None:
            return False
        self.state.load_spec(spec)
        page, run = last_place()
        if run is not None:
            self.state.set_current_run(run)
        if page in self.pages:
            self.go_to(page)
        self.statusBar().showMessage("Opened as you left it (File › Load the demo opens the demo)", 20_000)
        return True

    def open_spec(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open spec", filter="Spec files (*.yaml *.yml)")
        if path:
            try:
                self.apply_spec_file(path)
            except UserError as e:
                show_error(self, e)

    def save_spec(self) -> None:
        try:
            spec = self.state.build_spec()
        except UserError as e:
            show_error(self, e)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save spec", "spec.yaml", filter="Spec files (*.yaml)")
        if path:
            spec.save(Path(path))

    def copy_command(self) -> None:
        try:
            spec = self.state.build_spec()
        except UserError as e:
            show_error(self, e)
            return
        path = Path(self.state.runs_dir).expanduser() / "last-spec.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        spec.save(path)
        text = f"adapter-studio train {shlex.quote(str(path.resolve()))}"
        QApplication.clipboard().setText(text)
        self.statusBar().showMessage(f"Copied: {text}", 8000)

    # --- closing ----------------------------------------------------------------------------------
    def _yes(self, title: str, question: str) -> bool:
        buttons = QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No
        return QMessageBox.question(self, title, question, buttons) == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:
        controller = self.train_page.controller
        if controller.running:
            if not self._yes("Training is running",
                             "Stop the run and quit? A checkpoint is saved, and the run can be resumed later."):
                event.ignore()
                return
            controller.stop()
            while controller.running:  # wait for the checkpoint; no thread outlives the window
                QApplication.processEvents()
        export = self.pages["export"]
        if export.busy:  # type: ignore[attr-defined]  # it closed at once, the export cut short or lost unsaid
            if not self._yes("An export is being written", "Quit as soon as it has been written? (No: keep "
                             "working. It cannot be cut short without losing it.)"):  # fmt: skip
                event.ignore()
                return
            self.statusBar().showMessage("Quitting when the export has been written…")
            while export.busy:  # type: ignore[attr-defined]
                QApplication.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 100)
        for key in ("try", "evaluate"):
            page = self.pages[key]
            if page.busy:  # type: ignore[attr-defined]
                page.stop()  # type: ignore[attr-defined]
        QSettings().setValue("window/geometry", self.saveGeometry())
        page = list(self.pages)[self.steps.currentRow()]
        save_session(self.state, self.pages["data"].format_chosen, page)  # opened again at the next plain start
        event.accept()
