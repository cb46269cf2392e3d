"""`run(spec, emit, stop_event)`: one training run from its spec to its `finished` event.

Makes (or reopens) the run folder, holds its lock, writes its event log (and TensorBoard's, when asked),
and hands the training itself to a TrainingSession.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from adapter_studio.engine.errors import ResumeRefused, UserError
from adapter_studio.engine.events import Emit, Event, EventLog, Log
from adapter_studio.engine.runs import RunLock, new_run_dir, require_run_folder, summarize_run
from adapter_studio.engine.spec import RunSpec, load_spec_file
from adapter_studio.engine.training.devices import process_rank
from adapter_studio.engine.training.preflight import check_inputs
from adapter_studio.engine.training.resume_rules import check_kept
from adapter_studio.engine.training.session import TrainingSession
from adapter_studio.engine.training.speed import SpeedOptions


@dataclass
class RunResult:
    status: str
    run_dir: Path
    step: int
    error: str | None
    by_person: bool = False  # the failure is one a person can fix (a bad file, a setting): the CLI exits 2


def run(
    spec: RunSpec | None,
    emit: Emit | None = None,
    stop_event: threading.Event | None = None,
    *,
    resume_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    speed: SpeedOptions | None = None,
) -> RunResult:
    """Train as the spec says; report through `emit` and the run folder's `events.jsonl`.

    With `resume_dir`, continue that run from its last checkpoint (same folder, same log), with its
    saved spec or, when given, `spec` (for example with more steps). `run_dir` names a folder made
    beforehand (by the multi-device launcher, so every process writes to the same run).
    Under several processes only rank 0 reports, saves and holds the lock. `speed` changes how fast it
    runs, not what it learns (SpeedOptions; benchmarks and tests pass their own).
    """
    stop_event = stop_event or threading.Event()
    checked = None
    if resume_dir is not None:
        folder = Path(resume_dir)
        require_run_folder(folder, "--resume")
        # A spec given with a resume (e.g. a longer max_steps) replaces the saved one.
        saved = load_spec_file(folder / "spec.yaml")
        spec = spec or saved
        same_length = (spec.training.max_steps, spec.training.epochs) == (saved.training.max_steps,
                                                                           saved.training.epochs)
        summary = summarize_run(folder) if same_length else None  # its events are read only where it matters
        if summary is not None and summary.status == "completed":
            # Nothing to do, said, and nothing written: a script that resumes until done (after a crash that
            # came after the end) goes on; it reloaded the model and logged another start and finish.
            if emit is not None:
                emit(Log(level="info", message=f"{folder.name} already completed its {summary.steps} steps: nothing "
                         "to resume (to train it longer, give it more: --set training.max_steps=N)"))  # fmt: skip
            return RunResult("completed", folder, summary.steps, None)
        check_kept(spec, saved)  # before anything is written: the run stays as it was
    elif spec is None:
        raise UserError("nothing to run: give a spec or a run folder to resume")
    elif run_dir is not None:
        folder = Path(run_dir)
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    else:  # a new run: its inputs said before its folder is made, and read once (the session takes the format)
        checked = check_inputs(spec)
        folder = new_run_dir(spec.output_dir, spec.name, spec.method.name)
    main_process = process_rank() == 0
    lock = RunLock(folder)
    log = None
    if main_process:
        lock.acquire()  # before anything is written: a run another process trains is left as it is
        try:
            log = EventLog(folder / "events.jsonl")
            if not (folder / "spec.yaml").exists():  # as given until the session saves it resolved, so that
                spec.save(folder / "spec.yaml", as_given=True)  # a run killed while its model loads can resume
        except OSError as e:
            if log is not None:
                log.close()
            lock.release()
            raise UserError(f"cannot write to the run folder {folder}: {e.strerror or e}", where="output_dir",
                            fix="pick a runs folder you can write to, or free space on its disk") from None

    board = None
    if main_process and spec.training.tensorboard:
        from adapter_studio.engine.training.tensorboard_log import TensorBoardLog

        board = TensorBoardLog(folder)

    def report(event: Event) -> None:
        if log is not None:
            log.write(event)
            if board is not None:
                board.write(event)
            if emit is not None:
                emit(event)

    session = TrainingSession(spec, folder, report, stop_event, resume_dir is not None, speed or SpeedOptions(),
                              checked)  # fmt: skip
    logged = log.path.stat().st_size if log is not None else 0
    refused = False
    try:
        status, error = session.execute()
        return RunResult(status, folder, session.step, error, session.failed_by_person)
    except ResumeRefused:
        refused = True
        raise
    finally:
        if board is not None:
            board.close()
        if log is not None:
            log.close()
            try:
                if refused:  # the run as it was: this session's lines taken back
                    os.truncate(log.path, logged)
            finally:
                lock.release()
