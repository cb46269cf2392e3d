"""What an automatic search records: a trial's settings and outcome, the search's result, its log lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter_studio.engine.events import Log
from adapter_studio.engine.search.space import Settings

# The held-out metric of every task (engine.search.auto says why): lower is better.
METRIC = "eval_loss"
MARKER = "auto_trial.json"  # in each trial's run folder: which search, which trial, how it ended


@dataclass(frozen=True)
class SearchLog(Log):
    """A line of the search's own progress; its `type` stays "log", so the window shows it as any log line."""


@dataclass
class TrialRecord:
    number: int
    settings: Settings
    run_dir: str | None = None
    status: str = "running"  # completed / pruned / stopped / failed
    metric: float | None = None  # the best held-out eval_loss it reached
    accuracy: float | None = None  # at its last evaluation (classification)
    examples: int = 0  # training examples it had seen at its last evaluation
    error: str | None = None
    score: float | None = None  # by the search's `rank_by` metric, when it ranks by one and the trial finished

    def to_json(self, info: Any = None) -> dict[str, Any]:
        return {"number": self.number, "settings": self.settings.to_json(info), "metric": self.metric,
                "status": self.status, "accuracy": self.accuracy, "examples": self.examples,
                "run_dir": self.run_dir, "error": self.error, "score": self.score}  # fmt: skip


@dataclass
class SearchResult:
    """How the search ended; `status`, `run_dir` and `error` read like a RunResult's (the window shows both)."""

    status: str  # completed / cancelled / failed
    run_dir: Path | None  # the best run: the winner trained fully, or its trial when there was no time for that
    error: str | None
    folder: Path  # the sweep folder with sweep.json and sweep.csv
    trials: list[TrialRecord] = field(default_factory=list)
    best_trial: int | None = None
    best_metrics: dict[str, float | None] = field(default_factory=dict)  # the best run's best evaluation
    seconds: float = 0.0
    info: Any = None  # the model's ModelInfo (target layer names for the JSON)
    rank_by: str | None = None  # the metric the winner was chosen by, when not METRIC
    baselines: list[dict[str, Any]] = field(default_factory=list)  # the no-training rows, when evaluated

    def to_json(self) -> dict[str, Any]:
        return {"trials": [t.to_json(self.info) for t in self.trials],
                "best_run_dir": str(self.run_dir) if self.run_dir else None, "best_trial": self.best_trial,
                "metric_name": METRIC, "rank_by": self.rank_by or METRIC, "best_metrics": self.best_metrics,
                "status": self.status, "error": self.error, "sweep_dir": str(self.folder),
                "seconds": round(self.seconds, 1), "baselines": self.baselines}  # fmt: skip
