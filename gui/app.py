"""Application entry: create the window, open the demo, and the `--self-test` first-paint check."""

from __future__ import annotations

import sys
import time

from adapter_studio.engine.imports import wait_briefly_then_sleep
from adapter_studio.resources import FOLDER as RESOURCES
from PySide6.QtCore import QEvent, QObject, QThreadPool, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication


class FirstPaint(QObject):
    """Prints the seconds from process start to the window's first paint, then quits."""

    def __init__(self) -> None:
        super().__init__()
        self.done = False

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint and not self.done:
            self.done = True
            seconds = seconds_since_process_start()
            QTimer.singleShot(0, lambda: (print(f"{seconds:.2f}", flush=True), QApplication.quit()))
        return False


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux: from /proc, to the clock tick)."""
    import os

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


def create_app() -> QApplication:
    wait_briefly_then_sleep()  # OpenMP's idle threads spin 0.3 ms, then sleep (engine.imports says why)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("AdapterStudio")
    app.setApplicationName("Adapter Studio")
    app.setDesktopFileName("adapter-studio")
    icon = RESOURCES / "icons" / "adapter-studio.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    # Workers wait on disk and the GIL more than on cores; with the default (one per core) a
    # training run and a model load would leave no thread for a data preview.
    QThreadPool.globalInstance().setMaxThreadCount(16)
    # Each thread that runs torch keeps its own OpenMP threads until it exits, and while the process has
    # more of them than cores libgomp cuts every spin short: one idle pool thread that had loaded a model
    # left training 40 % slower (162 tokens/s against 267). Workers exit as soon as they have no work.
    QThreadPool.globalInstance().setExpiryTimeout(0)
    from adapter_studio.gui.theme import apply_theme

    apply_theme(app)  # type: ignore[arg-type]
    return app  # type: ignore[return-value]


def main(self_test: bool = False, demo: bool = True, restore: bool = False) -> int:
    """`restore`: open the set-up the window was last closed with, else the demo (`demo`)."""
    from adapter_studio.gui.display import display_problem

    if problem := display_problem():  # before Qt, which would abort the process
        print(f"error: {problem}", file=sys.stderr)
        return 2
    app = create_app()
    from adapter_studio.gui.dialogs import install_excepthook
    from adapter_studio.gui.main_window import MainWindow

    window = MainWindow()
    install_excepthook(lambda: window)
    if self_test:
        probe = FirstPaint()
        window.installEventFilter(probe)
        window.show()
        return _exec(app)
    window.show()
    if restore:
        QTimer.singleShot(0, lambda: window.restore_session() or (demo and window.load_demo()))
    elif demo:
        QTimer.singleShot(0, window.load_demo)
    QTimer.singleShot(300, window.welcome_if_first_run)
    return _exec(app)


def _exec(app: QApplication) -> int:
    code = app.exec()
    # Background work still running (a model summary, a capability check) finishes before the window's
    # objects go away; otherwise its result signal fires into a deleted object and Qt prints an error.
    QThreadPool.globalInstance().waitForDone(10_000)
    return code
