"""Render resources/icons/adapter-studio.svg to the PNG (256×256) and the Windows/macOS icon files.

Run after editing the SVG:  QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_icons.py
Writes adapter-studio.png (freedesktop, window icon), .ico (Windows) and .icns (macOS) beside the SVG.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SVG = ICONS / "adapter-studio.svg"


def render(size: int) -> QImage:
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"error: {SVG} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    image = render(256)
    for suffix, fmt in ((".png", "PNG"), (".ico", "ICO"), (".icns", "ICNS")):
        out = ICONS / f"adapter-studio{suffix}"
        if not image.save(str(out), fmt):
            raise SystemExit(f"error: could not write {out} (Qt image format plugin {fmt} missing?)")
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
