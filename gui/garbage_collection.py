"""Python's cycle collector run only on the GUI thread while a window exists (FACTS: a collection in a
training thread that frees a Qt object there deadlocks against the GUI thread)."""

from __future__ import annotations

_COLLECTOR = None


def collect_garbage_on_gui_thread() -> None:
    """Run Python's cycle collector only on the GUI thread, on a timer (pyqtgraph's GarbageCollector).

    Left automatic, a collection can start in whichever thread allocates — a training or loading thread —
    and free a Qt widget there; Qt then locks against the GUI thread, which waits for the interpreter lock:
    a deadlock seen with the window's sweep (worker in gc → ~QObject, main thread in ~QWidget)."""
    import gc

    global _COLLECTOR
    if _COLLECTOR is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _COLLECTOR = GarbageCollector(interval=0.5)
    gc.disable()
    _COLLECTOR.timer.start()


def restore_automatic_garbage_collection() -> None:
    """Back to Python's own collector (tests that go on without a window)."""
    import gc

    if _COLLECTOR is not None:
        _COLLECTOR.timer.stop()
    gc.collect()
    gc.enable()
