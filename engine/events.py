"""Events a run reports, and the `events.jsonl` log that stores them (CONTRACT.md, "Events").

Events are frozen and JSON-serialisable, so the same objects feed the window's queue, the CLI's
progress lines and the run folder's log; an old or subprocess run is read back by `read_events`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

PREFERENCE_FIELDS = ("rewards_chosen", "rewards_rejected", "reward_margin", "preference_accuracy")


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    # Fields written only when set: an event of a run that has none reads as it did before they existed.
    optional: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"type": self.type, **{k: v for k, v in data.items() if v is not None or k not in self.optional}}


@dataclass(frozen=True)
class Started(Event):
    type: ClassVar[str] = "started"
    run_dir: str
    model: str
    method: str
    trainable_params: int
    total_params: int
    total_steps: int
    device: str
    precision: str = "float32"
    resumed_from_step: int = 0


@dataclass(frozen=True)
class Stage(Event):
    """What the run is doing now (loading model, tokenising, training, evaluating, saving, ...)."""

    type: ClassVar[str] = "stage"
    stage: str
    detail: str = ""
    progress: float | None = None


@dataclass(frozen=True)
class Metrics(Event):
    type: ClassVar[str] = "metrics"
    step: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens_seen: int
    memory_bytes: int
    memory_reserved_bytes: int | None = None
    memory_peak_bytes: int | None = None
    elapsed_s: float = 0.0
    # Preference objectives (dpo, ipo, simpo, orpo): batch means of the pairs' rewards, the margin
    # (chosen − rejected) and the share of pairs whose chosen reward is the higher.
    rewards_chosen: float | None = None
    rewards_rejected: float | None = None
    reward_margin: float | None = None
    preference_accuracy: float | None = None
    optional: ClassVar[tuple[str, ...]] = PREFERENCE_FIELDS


@dataclass(frozen=True)
class Eval(Event):
    type: ClassVar[str] = "eval"
    step: int
    eval_loss: float
    accuracy: float | None = None
    exact_match: float | None = None
    rewards_chosen: float | None = None  # preference objectives: the same as Metrics', on held-out pairs
    rewards_rejected: float | None = None
    reward_margin: float | None = None
    preference_accuracy: float | None = None
    optional: ClassVar[tuple[str, ...]] = PREFERENCE_FIELDS


@dataclass(frozen=True)
class Log(Event):
    type: ClassVar[str] = "log"
    level: str
    message: str


@dataclass(frozen=True)
class LrFinder(Event):
    """The learning-rate finder's range test (training.learning_rate: auto): the loss at each rate it
    tried, smoothed (`losses`) and as measured (`raw_losses`), the rate it picked and why."""

    type: ClassVar[str] = "lr_finder"
    rates: list[float]
    losses: list[float]
    chosen: float
    reason: str
    raw_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Checkpoint(Event):
    type: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True)
class Export(Event):
    type: ClassVar[str] = "export"
    kind: str
    path: str
    bytes: int
    verified_max_diff: float | None


@dataclass(frozen=True)
class Finished(Event):
    type: ClassVar[str] = "finished"
    status: str
    step: int
    error: str | None
    train_seconds: float
    tokens_trained: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Started, Stage, Metrics, Eval, Log, LrFinder, Checkpoint, Export, Finished)
}

Emit = Callable[[Event], None]


# Each type's field names, read once: dataclasses.fields() on every line was a third of reading a long log.
_FIELD_NAMES = {name: frozenset(f.name for f in fields(cls)) for name, cls in EVENT_TYPES.items()}


def event_from_dict(data: dict[str, Any]) -> Event | None:
    """Rebuild an event; unknown types and extra keys (from newer versions) are tolerated."""
    kind = data.get("type", "")
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None
    names = _FIELD_NAMES[kind]
    given = {k: v for k, v in data.items() if k in names}
    try:
        return cls(**given)
    except TypeError:
        return None


class EventLog:
    """Appends events to `events.jsonl`, one flat JSON object per line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        if _ends_mid_line(path):  # a line cut short by a crash: the next event starts a line of its own
            self._file.write("\n")

    def write(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def iter_events(path: Path, only: str | None = None) -> Iterator[Event]:
    """Events of a log; a half-written last line (a killed process) is skipped, not an error. `only`: events of
    that type alone, the other lines not parsed (a run's exports among its thousands of steps)."""
    if not path.exists():
        return
    wanted = f'"type": "{only}"' if only else ""  # as EventLog writes it
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or wanted not in line:
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = event_from_dict(data)
            if event is not None:
                yield event


def read_events(path: Path) -> list[Event]:
    return list(iter_events(path))


def log_export(run_dir: Path, event: Export, emit: Emit | None) -> None:
    """The `export` event, in the run's events.jsonl and to `emit`. A run folder that cannot be written (read-only,
    a full disk) does not undo the export, written and checked by then: it was reported a failure, and left."""
    try:
        log = EventLog(run_dir / "events.jsonl")
        log.write(event)
        log.close()
    except OSError as e:
        if emit:
            emit(Log(level="warning", message=f"the export is written and checked, but {run_dir / 'events.jsonl'} "
                     f"could not note it ({e.strerror or e}): the run's history will not list it"))  # fmt: skip
    if emit:
        emit(event)


class EventFollower:
    """Reads the events appended to a log since the last call (for runs in another process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.seen: list[Event] = []

    def poll(self) -> list[Event]:
        if not self.path.exists():
            return []
        out: list[Event] = []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        # Only whole lines: a line being written now is read on the next poll.
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            try:
                event = event_from_dict(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if event is not None:
                out.append(event)
        self.seen += out
        return out


def stage_progress(emit: Emit, stage: str, every_s: float = 5.0) -> Callable[[str, float], None]:
    """A `progress(part, fraction)` callback (prepare_data's) that reports `stage` with its fraction, at most
    every `every_s` seconds: tokenising 300,000 rows said nothing for four minutes."""
    last = -every_s

    def progress(part: str, fraction: float) -> None:
        nonlocal last
        if time.monotonic() - last >= every_s or fraction >= 1.0:  # the last said, not left at 9x %
            last = time.monotonic()
            emit(Stage(stage=stage, detail=f"{part} {fraction:.0%}", progress=round(fraction, 3)))

    return progress
