"""Telling the person about errors: a dialog with what, where and what to do — never a traceback."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from types import TracebackType

from adapter_studio.engine.errors import UserError
from PySide6.QtWidgets import QMessageBox, QWidget


def show_error(parent: QWidget | None, error: BaseException | str, title: str = "Something needs fixing") -> None:
    if isinstance(error, UserError):
        text = error.message
    elif isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}"
    else:
        text = error
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("errorDialog")
    if isinstance(error, BaseException) and not isinstance(error, UserError):
        box.setDetailedText("".join(traceback.format_exception(error)))
    box.open()  # non-blocking: tests and the event loop keep running


def install_excepthook(parent_getter: object) -> None:
    """An unexpected error in a slot becomes a dialog instead of killing the window."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        traceback.print_exception(kind, value, tb, file=sys.stderr)
        parent = parent_getter() if callable(parent_getter) else None
        show_error(parent, value, "Unexpected error")

    sys.excepthook = hook


def last_folder(key: str) -> str:
    """The folder a file dialog of this kind opened last (QSettings), or the home folder."""
    from PySide6.QtCore import QSettings

    return str(QSettings().value(f"paths/last_{key}", str(Path.home())))


def remember_folder(key: str, chosen: str) -> None:
    from PySide6.QtCore import QSettings

    path = Path(chosen)
    QSettings().setValue(f"paths/last_{key}", str(path if path.is_dir() else path.parent))


RUNS_DIR_KEY = "paths/runs_dir"


def remembered_runs_dir() -> str:
    """The runs folder chosen last (Settings › Runs folder…, the Runs page), else `runs` in the folder the app
    was started from where that can be written, else ~/AdapterStudio/runs. Absolute: started from / (a desktop
    launcher) the runs went to /runs and failed, and a later change of folder moved them."""
    from PySide6.QtCore import QSettings

    saved = QSettings().value(RUNS_DIR_KEY)
    if isinstance(saved, str) and saved.strip():
        return saved
    here = Path.cwd() / "runs"
    if os.access(here if here.exists() else here.parent, os.W_OK):
        return str(here)
    return str(Path.home() / "AdapterStudio" / "runs")


def remember_runs_dir(folder: str) -> None:
    from PySide6.QtCore import QSettings

    QSettings().setValue(RUNS_DIR_KEY, folder)


def unwritable_note(folder: Path) -> str:
    """What to add where a runs folder is shown or chosen and new runs could not be written there (one chosen was
    taken, and kept for later starts, until Start failed): the folder, or the one it would be made in."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or (existing.is_dir() and os.access(existing, os.W_OK)):
        return ""
    return f" — new runs cannot be written here ({existing} is read-only): pick another folder to train"
