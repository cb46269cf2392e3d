"""Light and dark themes: follow the system by default, or the person's choice (remembered)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

THEMES = ("system", "light", "dark")


def system_is_dark() -> bool:
    return QGuiApplication.styleHints().colorScheme() == Qt.ColorScheme.Dark


def dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    for role, color in (
        (QPalette.ColorRole.Window, window), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, window),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, window),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, window),
        (QPalette.ColorRole.ToolTipText, text), (QPalette.ColorRole.Highlight, QColor(53, 116, 240)),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)),
        (QPalette.ColorRole.PlaceholderText, QColor(140, 143, 150)),
    ):  # fmt: skip
        p.setColor(role, color)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(120, 120, 120))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(120, 120, 120))
    return p


def apply_theme(app: QApplication, choice: str | None = None) -> str:
    """Apply and remember a theme; returns whether it ended up light or dark."""
    settings = QSettings()
    choice = choice or str(settings.value("appearance/theme", "system"))
    settings.setValue("appearance/theme", choice)
    dark = system_is_dark() if choice == "system" else choice == "dark"
    app.setStyle("Fusion")
    app.setPalette(dark_palette() if dark else app.style().standardPalette())
    # Plots follow the theme: those made from now on, and those on show (they stayed white in a dark window).
    background, foreground = ("#1e1f22", "#dfe1e5") if dark else ("w", "k")
    pg.setConfigOption("background", background)
    pg.setConfigOption("foreground", foreground)
    pg.setConfigOption("antialias", True)
    for widget in app.allWidgets():
        if isinstance(widget, pg.PlotWidget):
            recolour(widget, background, foreground)
    return "dark" if dark else "light"


def recolour(plot: pg.PlotWidget, background: str, foreground: str) -> None:
    plot.setBackground(background)
    item = plot.getPlotItem()
    for name in ("left", "bottom", "right", "top"):
        axis = item.getAxis(name)
        axis.setPen(foreground)
        axis.setTextPen(foreground)
    if item.legend is not None:
        item.legend.setLabelTextColor(foreground)
        for _, label in item.legend.items:  # the labels already there keep the colour they were made with
            label.setText(label.text, color=foreground)
    item.titleLabel.setText(item.titleLabel.text, color=foreground)
