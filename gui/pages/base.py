"""What every page shares: the studio state, a title, and a way to report errors."""

from __future__ import annotations

from adapter_studio.gui.dialogs import show_error
from adapter_studio.gui.state import StudioState
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget


class Page(QWidget):
    title = ""
    hint = ""

    def __init__(self, state: StudioState) -> None:
        super().__init__()
        self.state = state
        self.layout_ = QVBoxLayout(self)
        heading = QLabel(f"<h2>{self.title}</h2>" + (f"<p style='color:gray'>{self.hint}</p>" if self.hint else ""))
        heading.setWordWrap(True)
        self.layout_.addWidget(heading)

    def on_shown(self) -> None:
        """Called each time the page becomes visible."""

    def error(self, error: BaseException | str) -> None:
        show_error(self, error)


def wrapped_label(name: str, text: str = "") -> QLabel:
    """A label that wraps its lines (statuses, notes, messages), named for tests and style sheets."""
    label = QLabel(text)
    label.setObjectName(name)
    label.setWordWrap(True)
    return label


def number_cell(table: QTableWidget, row: int, column: int, text: str) -> QTableWidgetItem:
    """A number put right-aligned in a table cell (scores, shares, counts)."""
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    table.setItem(row, column, item)
    return item
