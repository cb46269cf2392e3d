"""Run folders and history: naming, the liveness lock, and the status of every run."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from adapter_studio.engine.errors import UserError
from adapter_studio.engine.events import Eval, Export, Finished, Log, Metrics, Started, iter_events
from adapter_studio.engine.file_memo import DiskLayer, FileMemo

try:
    import fcntl
except ImportError:  # Windows: a run lock is its pid alone
    fcntl = None  # type: ignore[assignment]

LOCK = "run.lock"


NOT_ONE_FOLDER = "a run folder's name, not a path (no /, \\ or :, not . or ..); output_dir says where"


RESUMABLE = ("cancelled", "failed", "interrupted")  # the statuses `train --resume` goes on from
COMBINED = "combined ("  # how the log line of a run made by `combine` begins

def is_one_folder_name(name: str) -> bool:
    """Whether `name` names one folder inside output_dir: "../x" or "/tmp/x" wrote the run elsewhere."""
    return name.strip() not in (".", "..") and not any(c in name for c in "/\\:")  # "D:x" is a drive on Windows


RUN_FOLDER_FIX = "give a run folder (`adapter-studio runs` lists them)"


def is_run_folder(folder: str | Path) -> bool:
    """Whether `folder` is a run's (it has the spec.yaml every run writes first): not deleted or moved since."""
    return (Path(folder) / "spec.yaml").is_file()


def require_run_folder(folder: Path, where: str, fix: str = RUN_FOLDER_FIX) -> None:
    """A UserError saying why `folder` is not a run folder: not there, a file, or a folder without a spec.yaml."""
    if is_run_folder(folder):
        return
    why = "does not exist" if not folder.exists() else "is a file" if not folder.is_dir() else "has no spec.yaml"
    raise UserError(f"{folder} is not a run folder: it {why}", where=where, fix=fix)


def new_run_dir(output_dir: str, name: str | None, method: str) -> Path:
    if name and not is_one_folder_name(name):  # also for names not read through a spec (combine --name)
        raise UserError(NOT_ONE_FOLDER, where="name", fix="give a plain name such as my-run")
    root = Path(output_dir).expanduser()
    base = name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = root / base, 2
    try:
        root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                path.mkdir()  # claims the name: two runs started in the same second get two folders
                break
            except FileExistsError:
                path, n = root / f"{base}-{n}", n + 1
        (path / "checkpoints").mkdir()
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG and len(base.encode()) > 255:  # the folder may be fine: the name is not
            raise UserError(f"cannot make the run folder {path}: the name is too long for this disk", where="name",
                            fix="give a shorter name") from None  # fmt: skip
        if root.exists() and not root.is_dir():  # mkdir said "File exists"
            raise UserError(f"{root} is a file, not a folder for runs", where="output_dir",
                            fix="give output_dir a folder (it is made if need be)") from None  # fmt: skip
        raise UserError(
            f"cannot make the run folder {path}: {e.strerror or e}",
            where="output_dir",
            fix="pick a runs folder you can write to (output_dir, or --set output_dir=DIR)",
        ) from None
    return path


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock_pid(path: Path) -> int:
    """The pid in a lock file; 0 for an empty, unreadable or garbled one (treated as dead)."""
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


class RunLock:
    """`run.lock` holds the pid while a run is alive; a stale lock marks a run as interrupted.

    Where the system has `flock`, the file is also locked for as long as the run holds it, so that two
    processes resuming one run at the same moment cannot both take it (the lock ends with its process,
    even a killed one); elsewhere the pid alone decides."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if fcntl is None:
                    break
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    self._refuse(read_lock_pid(self.path))
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
                os.close(fd)  # the holder released (and removed) it meanwhile: lock the new one
            if fcntl is None:
                pid = read_lock_pid(self.path)
                if pid != os.getpid() and _pid_alive(pid):
                    os.close(fd)
                    self._refuse(pid)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as e:
            raise UserError(
                f"cannot write to the run folder {self.path.parent}: {e.strerror or e}",
                where="run folder",
                fix="make the runs folder writable again (or copy the run folder somewhere writable and resume "
                "the copy)",
            ) from None
        self._fd = fd

    def _refuse(self, pid: int) -> None:
        raise UserError(
            f"this run is still being trained by process {pid}",
            where=str(self.path.parent),
            fix="stop that process first, or wait for it to finish",
        )

    def release(self) -> None:
        with contextlib.suppress(OSError):  # a folder made read-only meanwhile: the pid is dead soon anyway
            self.path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)  # summaries are kept and handed out again (_SUMMARIES)
class RunSummary:
    path: Path
    name: str
    status: str  # completed / cancelled / failed / interrupted / running
    model: str
    method: str
    trainable_params: int | None
    steps: int
    total_steps: int | None
    final_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    duration_s: float | None
    started: float | None
    error: str | None
    total_params: int | None = None
    train_seconds: float | None = None  # the run's own training time (Finished), without loading
    peak_memory_bytes: int | None = None  # largest peak (CUDA) or process memory reported by a step
    median_tokens_per_s: float | None = None  # steps after the first two (warm-up)
    accuracy: float | None = None  # the last evaluation that reported one
    exact_match: float | None = None
    objective: str = "sft"  # objective.name of its spec: sft (classification runs too), dpo, kto, …
    combined: str | None = None  # a run made by combining others: how, and from which (its log's line)

    @property
    def method_label(self) -> str:
        """The method, and the objective where it is not supervised: "lora · DPO"."""
        from adapter_studio.engine.objectives import OBJECTIVES

        cls = OBJECTIVES.get(self.objective)
        label = self.method if self.objective == "sft" else f"{self.method} · {cls.title if cls else self.objective}"
        return f"{label} · combined" if self.combined else label  # it trained no step: "lora", steps 0, said why


def _summary_from(saved: dict[str, Any]) -> RunSummary:
    return RunSummary(**{**saved, "path": Path(saved["path"])})


# A finished run's summary holds while its log and spec do, in this process and the next (the window read every
# log as it opened); a live one's status hangs on its lock's process. Version: raise it when RunSummary's fields
# or _read_summary's reading change.
_SUMMARIES: FileMemo[RunSummary] = FileMemo(
    keep=lambda s: s.status not in ("running", "interrupted"),
    disk=DiskLayer("run-summaries", 1, lambda s: {**dataclasses.asdict(s), "path": str(s.path)}, _summary_from),
)


def summarize_run(run_dir: Path) -> RunSummary:
    """One row of the history, read from the run's events (a half-written last line is fine)."""
    run_dir = Path(run_dir)
    summary = _SUMMARIES.get(run_dir.resolve(), [run_dir / "events.jsonl", run_dir / "spec.yaml"],
                             lambda: _read_summary(run_dir))  # fmt: skip
    return summary if summary.path == run_dir else dataclasses.replace(summary, path=run_dir)  # as this caller names it


def _read_summary(run_dir: Path) -> RunSummary:
    started: Started | None = None
    finished: Finished | None = None
    last_metrics: Metrics | None = None
    evals: list[Eval] = []
    peak, speeds = 0, []
    first_time = last_time = span = None
    seconds = 0.0  # the sessions' own times: a run resumed a day later did not take a day
    combined = None
    for event in iter_events(run_dir / "events.jsonl"):
        first_time = first_time or event.time
        if isinstance(event, Started) and span is not None and last_time is not None:
            seconds, span = seconds + last_time - span, None  # a session that crashed (no finish): to its last event
        if not isinstance(event, Export):  # exports are appended later, maybe days later: not the run's time
            last_time = event.time
            span = span if span is not None else event.time
        if isinstance(event, Finished) and span is not None:
            seconds, span = seconds + event.time - span, None
        if isinstance(event, Started):
            started, finished = event, None
        elif isinstance(event, Metrics):
            last_metrics = event
            peak = max(peak, event.memory_peak_bytes or event.memory_bytes)
            speeds.append(event.tokens_per_s)
        elif isinstance(event, Eval) and event.step > 0:  # step 0 (eval_on_start): before training, not the run's
            evals.append(event)
        elif isinstance(event, Finished):
            finished = event
        elif isinstance(event, Log) and event.message.startswith(COMBINED):
            combined = event.message
    lock = run_dir / LOCK
    if finished is not None:
        status = finished.status
    elif lock.exists() and _pid_alive(read_lock_pid(lock)):
        status = "running"
    else:
        status = "interrupted"
    saved = _saved_spec(run_dir)
    method = started.method if started else _value(saved, "method", "name")
    return RunSummary(
        path=run_dir,
        name=run_dir.name,
        status=status,
        model=started.model if started else str(_value(saved, "model", "source") or ""),
        method=str(method or ""),
        trainable_params=started.trainable_params if started else None,
        steps=finished.step if finished else (last_metrics.step if last_metrics else 0),
        total_steps=started.total_steps if started else None,
        final_loss=last_metrics.loss if last_metrics else None,
        final_eval_loss=evals[-1].eval_loss if evals else None,
        best_eval_loss=min(e.eval_loss for e in evals) if evals else None,
        duration_s=seconds + (last_time - span if span is not None and last_time else 0.0) if first_time else None,
        started=first_time,
        error=finished.error if finished else None,
        total_params=started.total_params if started else None,
        train_seconds=finished.train_seconds if finished else None,
        peak_memory_bytes=peak or None,
        median_tokens_per_s=statistics.median(speeds[2:] or speeds) if speeds else None,
        accuracy=next((e.accuracy for e in reversed(evals) if e.accuracy is not None), None),
        exact_match=next((e.exact_match for e in reversed(evals) if e.exact_match is not None), None),
        objective=str(_value(saved, "objective", "name") or "sft"),
        combined=combined,
    )


def _saved_spec(run_dir: Path) -> object:
    """The run's spec.yaml as YAML data, once per summary; None where it cannot be read."""
    try:  # libyaml's loader where there is one: the history reads every run's spec
        text = (run_dir / "spec.yaml").read_text(encoding="utf-8")  # as durable.write_text writes it, on Windows too
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return None


def trains_a_classifier(run_dir: str | Path) -> bool:
    """Whether the run's saved spec trained a classifier (its model task, or its data's format)."""
    saved = _saved_spec(Path(run_dir))
    return _value(saved, "model", "task") == "classification" or _value(saved, "data", "format") == "classification"


def _value(saved: object, section: str, key: str) -> object:
    """`section.key` of a saved spec; None where the spec or the field is missing or not a mapping."""
    part = saved.get(section) if isinstance(saved, dict) else None
    return part.get(key) if isinstance(part, dict) else None


def list_runs(output_dir: str | Path) -> list[RunSummary]:
    root = Path(output_dir).expanduser()
    if not root.exists():
        return []
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder of runs", where="--dir",
                        fix="give the folder that holds the run folders (output_dir of the spec)")  # fmt: skip
    runs = [summarize_run(p) for p in root.iterdir() if (p / "spec.yaml").exists() or (p / "events.jsonl").exists()]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


def why_no_runs(output_dir: str | Path) -> str:
    """What to add to "no runs in X": X is a run folder itself, or no such folder exists yet."""
    folder = Path(output_dir).expanduser()
    if (folder / "spec.yaml").exists():
        return f": it is a run folder itself — list its runs folder with --dir {folder.resolve().parent}"
    return " (no such folder yet)" if not folder.exists() else ""
