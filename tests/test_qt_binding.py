"""The Qt binding itself: a window that runs for hours must not corrupt Python's reference counts.

PySide6 6.12.0 dropped a reference to True on every signal `emit()` and to None on every
`processEvents()`; after a few thousand (minutes of a training run's 10 Hz updates) Python died in
bool_dealloc. pyproject.toml keeps that version out; this test catches a binding that does it again."""

from __future__ import annotations

import sys

from PySide6.QtCore import QCoreApplication, QObject, Signal


class Emitter(QObject):
    plain = Signal()
    value = Signal(object)


def test_emit_and_process_events_keep_reference_counts(qapp):  # type: ignore[no-untyped-def]
    emitter = Emitter()
    emitter.plain.connect(lambda: None)
    emitter.value.connect(lambda _v: None)
    before = [sys.getrefcount(x) for x in (True, False, None)]
    for _ in range(2000):
        emitter.plain.emit()
        emitter.value.emit(None)
        QCoreApplication.processEvents()
    after = [sys.getrefcount(x) for x in (True, False, None)]
    drift = [b - a for a, b in zip(before, after, strict=True)]
    assert all(abs(d) < 100 for d in drift), f"reference counts of True, False, None drifted by {drift}"
