"""Runs the engine off the main thread and hands its events to the window through a queue.

The engine calls `emit` from the training thread; the window drains the queue on a 10 Hz timer,
so a burst of events never floods the event loop and no torch call happens on the main thread.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QTimer, Signal
from superqt.utils import create_worker

DRAIN_INTERVAL_MS = 100
_ALIVE: set[Any] = set()


class EventPump(QObject):
    """A thread-safe queue of engine events, drained on the main thread in batches."""

    events = Signal(list)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.queue: queue.Queue[Any] = queue.Queue()
        self.timer = QTimer(self)
        self.timer.setInterval(DRAIN_INTERVAL_MS)
        self.timer.timeout.connect(self.drain)

    def put(self, event: Any) -> None:
        self.queue.put(event)

    def drain(self) -> None:
        batch = []
        while True:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        if batch:
            self.events.emit(batch)


class TrainingController(QObject):
    """Start, stop and resume runs; `events` carries engine events, `done` the RunResult or error."""

    events = Signal(list)
    done = Signal(object)  # RunResult
    failed = Signal(object)  # exception raised before the run could start

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.pump = EventPump(self)
        self.pump.events.connect(self.events)
        self.stop_event = threading.Event()
        self.worker: Any = None
        self.process: Any = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, spec: Any = None, resume_dir: Path | None = None) -> None:
        from adapter_studio.engine.training.run import run  # deferred: torch loads when the first run starts

        if spec is not None and (spec.training.devices > 1 or spec.training.machines.count > 1) and resume_dir is None:
            self._start_processes(spec)
            return
        self.stop_event = threading.Event()
        self.pump.timer.start()
        # Handlers go in through _connect: superqt re-raises errors of workers that have none.
        self.worker = create_worker(
            _with_imports(run),
            spec,
            self.pump.put,
            self.stop_event,
            resume_dir=resume_dir,
            _connect={"returned": self._returned, "errored": self._errored},
        )

    def start_job(self, job: Callable[[Any, threading.Event], Any]) -> None:
        """Run another engine job that reports run events as a run does (the automatic search, whose
        trials are runs): `job(emit, stop_event)`. Its result comes through `done` like a RunResult."""
        self.stop_event = threading.Event()
        self.pump.timer.start()
        self.worker = create_worker(
            _with_imports(job),
            self.pump.put,
            self.stop_event,
            _connect={"returned": self._returned, "errored": self._errored},
        )

    def stop(self) -> None:
        self.stop_event.set()
        if self.process is not None:
            from adapter_studio.engine.training.launch import stop_multi

            stop_multi(self.process)

    # --- several devices: an `accelerate launch` job followed through its events.jsonl ----------
    def _start_processes(self, spec: Any) -> None:
        from adapter_studio.engine.events import EventFollower
        from adapter_studio.engine.training.launch import start_multi

        self.process, run_dir = start_multi(spec, spec.training.devices, to_log=True)
        self.machine = spec.training.machines  # a machine other than 0 joins machine 0's run, logs nothing
        self.follower = EventFollower(run_dir / "events.jsonl")
        self.worker = self.process  # `running` while the job lives
        self.poll_timer = QTimer(self)
        self.poll_timer.setInterval(DRAIN_INTERVAL_MS)
        self.poll_timer.timeout.connect(self._poll_processes)
        self.poll_timer.start()

    def _poll_processes(self) -> None:
        from adapter_studio.engine.events import Finished
        from adapter_studio.engine.training.launch import LAUNCHER_LOG
        from adapter_studio.engine.training.run import RunResult

        events = self.follower.poll()
        if events:
            self.events.emit(events)
        if self.process is None or self.process.poll() is None:
            return
        events = self.follower.poll()
        if events:
            self.events.emit(events)
        finished = [e for e in self.follower.seen if isinstance(e, Finished)]
        last = finished[-1] if finished else None
        output = _tail(self.follower.path.parent / LAUNCHER_LOG)
        code = self.process.returncode
        self.poll_timer.stop()
        self.process = None
        self.worker = None
        status = last.status if last else "failed"
        error = last.error if last else f"the training processes ended without finishing: {output[-2000:]}"
        if self.machine.rank > 0:
            status = "completed" if code == 0 else "failed"
            error = None if code == 0 else (
                f"machine {self.machine.rank}'s processes ended early (exit code {code}); machine 0 "
                f"({self.machine.main_address}) has the run folder. Their output: {output[-1500:]}"
            )
        self.done.emit(RunResult(status, self.follower.path.parent, last.step if last else 0, error))

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block until the worker thread ends (used at exit: no thread outlives the window)."""
        if self.worker is not None:
            self.worker.quit()
            self.worker.await_workers(timeout_ms) if hasattr(self.worker, "await_workers") else None

    def _finish(self) -> None:
        self.pump.drain()
        self.pump.timer.stop()
        self.worker = None

    def _returned(self, result: Any) -> None:
        self._finish()
        self.done.emit(result)

    def _errored(self, error: BaseException) -> None:
        self._finish()
        self.failed.emit(error)


def _tail(path: Path, size: int = 4000) -> str:
    """The end of the launcher's output (its processes' errors are the last thing they print)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _with_imports(func: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(func):  # stays a generator, so superqt can deliver what it yields

        def generate(*args: Any, **kwargs: Any) -> Any:
            from adapter_studio.engine.imports import ensure_heavy_imports

            ensure_heavy_imports()
            return (yield from func(*args, **kwargs))

        return generate

    def call(*args: Any, **kwargs: Any) -> Any:
        from adapter_studio.engine.imports import ensure_heavy_imports

        ensure_heavy_imports()
        return func(*args, **kwargs)

    return call


class ProgressRelay(QObject):
    """`report(part, fraction)`, called on a worker thread, reaches `said` on the relay's (the GUI) thread."""

    said = Signal(str, float)

    def report(self, part: str, fraction: float) -> None:
        if shiboken6.isValid(self):  # the page was closed while its work ran
            self.said.emit(part, fraction)


def _while_alive(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """Drop a result whose receiving widget was closed while the work ran."""
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, QObject):
        return handler

    def call(value: Any) -> None:
        if shiboken6.isValid(owner):
            handler(value)

    return call


def run_in_background(
    func: Callable[..., Any],
    *args: Any,
    on_result: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_yield: Callable[[Any], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Run a slow call (model summary, export, tokenising) on a worker thread. A generator function
    reports each value it yields to `on_yield`; `worker.quit()` stops it at its next yield."""
    connect = {"returned": _while_alive(on_result), "errored": _while_alive(on_error)}
    if on_yield is not None:
        connect["yielded"] = _while_alive(on_yield)
    worker = create_worker(
        _with_imports(func),
        *args,
        _connect=connect,
        _start_thread=False,
        **kwargs,
    )
    # Keep every worker alive until it has finished: one collected early cannot deliver its result
    # ("Signal source has been deleted"), and callers replace their references freely.
    _ALIVE.add(worker)
    worker.finished.connect(lambda: _ALIVE.discard(worker))
    worker.start()
    return worker
